"""One logging setup for jobs, notebooks and tests; one line per stage with counts and duration; and the
redaction of secret-looking values wherever the project prints or records text (logs, --dry-run, MLflow)."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOG = logging.getLogger("pipeline")
_FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
# A key whose value is a secret: the words Spark's own spark.redaction.regex uses, and their usual neighbours.
SECRET_KEY = re.compile(r"(?i)secret|password|passwd|token|credential|access[._-]?key|private[._-]?key|"
                        r"api[._-]?key|session[._-]?key|auth")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@'\"]*):(?P<pw>[^/\s@'\"]+)@")
_ASSIGNED = re.compile(r"(?P<key>[A-Za-z0-9_.-]+)=(?P<value>[^\s'\",=]+)(?=[\s'\",]|$)")


def redact(text: str) -> str:
    """Mask credentials in `text`: the password of scheme://user:password@host, and the value of any
    key=value whose key names a secret (fs.s3a.secret.key=..., MLFLOW_TRACKING_TOKEN=...)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _ASSIGNED.sub(lambda m: f"{m['key']}={MASK}" if SECRET_KEY.search(m["key"]) else m[0], text)


def redact_config(obj: Any, key: str = "") -> Any:
    """A copy of a config dump (dicts, lists, strings) with secret-named keys' values and URI passwords masked."""
    if isinstance(obj, dict):
        return {k: redact_config(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_config(v, key) for v in obj]
    if isinstance(obj, str):
        return MASK if SECRET_KEY.search(key) else redact(obj)
    return obj


class _Redacting(logging.Filter):
    """Masks secrets in every record the pipeline's handler writes (messages and their arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def setup_logging(level: str = "INFO") -> None:
    """Configure the `pipeline` logger once; quiet the chatty libraries."""
    if not any(getattr(h, "_pipeline", False) for h in LOG.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FMT, "%H:%M:%S"))
        handler.addFilter(_Redacting())
        handler._pipeline = True  # type: ignore[attr-defined]
        LOG.addHandler(handler)
        LOG.propagate = False
    LOG.setLevel(level)
    for noisy in ("py4j", "mlflow", "alembic", "urllib3", "tensorflow", "petastorm", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Stage:
    """Collects counts for a stage; logged as one line when the stage ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: dict[str, Any] = {}
        self.seconds = 0.0

    def add(self, **counts: Any) -> None:
        self.counts.update(counts)


@contextmanager
def stage(name: str) -> Iterator[Stage]:
    """`with stage("ingest.flights") as s: s.add(rows_in=n)` -> one log line with the counts and duration."""
    s = Stage(name)
    start = time.perf_counter()
    try:
        yield s
    except BaseException:
        s.seconds = time.perf_counter() - start
        LOG.error("stage=%s failed after %.1fs %s", name, s.seconds, _fmt(s.counts))
        raise
    s.seconds = time.perf_counter() - start
    LOG.info("stage=%s %s duration=%.1fs", name, _fmt(s.counts), s.seconds)


def _fmt(counts: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items())
