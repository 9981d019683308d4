"""Non-tabular flows (issue 6): the image and text paths the same jobs take when `flow` says so.

Each flow module has `run_features(spark, cfg, store)` (bronze -> silver feature table + a features MLflow run
with the tags training looks up) and `score(spark, cfg, store, alias, version)` (bronze -> gold predictions).
Training is shared: pipelines.training.trainer trains any of them with the barrier Horovod launcher.
"""
