"""The ingest stage: landing files -> bronze Delta tables, with explicit schemas, exactly-once file pick-up and
quarantine.

Every landed line is accounted for: a data line is either written to bronze or quarantined with its reason, so
rows_in == rows_ok + rows_quarantined per file. A file that cannot be read at all is quarantined as a file. Only
complete files are taken (pipelines/core/landing.py): names writers use while copying are ignored, and a file
still changing is deferred to the next run; both are counted and reported, like files that vanish before they
are read.

- parse: sniffing and line parsing/typing of CSV and JSON lines (the only module the streaming scorer imports);
- deliveries: which landing files a run takes, per-file results, the ingest log;
- sources: one source's files into bronze and quarantine;
- images: image files decoded into a bronze table of bytes;
- rollback: rows of dead, unlogged runs rolled back, their MLflow runs closed;
- run: the job (`run_ingest`) and its tracking.
"""
