"""Failures that jobs map to distinct exit codes (see jobs/common.py): raised by pipelines, caught at the edge."""


class BadInput(ValueError):
    """Input the job cannot use (missing table, schema mismatch, bad arguments): exit code 2."""


class MissingModel(LookupError):
    """The requested model, version or alias does not exist: exit code 3."""


class DriftAlert(RuntimeError):
    """Monitoring crossed a configured threshold: exit code 4 (the results are written first)."""
