"""The job stages: features, train (pipelines.training.trainer), score, stream, monitor. Each takes a Flow and
does the I/O (catalog tables, Delta versions) and the tracking around the flow's pure steps."""
