"""The stages: one home per job, named as the job a user types (`./spark-submit.sh <job>` runs jobs/<job>.py, whose
stage is pipelines/stages/<job>.py, or the package pipelines/stages/<job>/ when it has several modules). A stage
takes the config, the session, the Delta store and (where the data's shape matters) a Flow, and does the I/O
(catalog tables, Delta versions) and the tracking around the flow's pure steps.

- land_demo: the demo data sets into the landing zone;
- ingest/: landing files -> bronze (parse, deliveries, sources, images, rollback, run);
- features: bronze -> the silver feature table and its fitted preprocessing;
- train: the feature table -> a registered model (on pipelines.training);
- score/: a registered model -> gold predictions (batch, stream);
- monitor/: drift and the realized metric of a scored window (drift, run);
- maintain: compaction, vacuum, dead writers' leftovers;
- lineage/: where a row, model, table version or file came from and what used it (graph, render);
- history: Spark's History Server on the workspace's event logs;
- run_all: every stage in one driver;
- inputs: shared by the stages, a flow's bronze inputs at pinned or latest versions.
"""
