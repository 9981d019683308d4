"""One logging setup for jobs, notebooks and tests; one line per stage with counts and duration; and the
redaction of secret-looking values wherever the project prints or records text (logs, --dry-run, MLflow).

The console keeps the stage lines, the warnings that matter and the errors. Known third-party noise (the
libraries' own FutureWarnings and DeprecationWarnings, MLflow's notices) goes only to the job's debug log file
(`log_to_file`: <workspace>/logs/<job>-<timestamp>.log, DEBUG), where it can still be read. TensorFlow's C++ log
is quieted by TF_CPP_MIN_LOG_LEVEL, set here, before any module imports TensorFlow (executors get it through
spark.executorEnv, see session.derived_conf).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG = logging.getLogger("pipeline")
_FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TF_LOG_LEVEL = "2"  # TensorFlow's C++ log: errors only (no oneDNN / cpu_feature_guard / TensorRT notices)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # MLflow would replace the handlers set up here
if not sys.stderr.isatty():  # progress bars are for a terminal (Spark's follows the same rule, session.derived_conf)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Libraries whose loggers the setup takes over: their records go to the debug file, WARNING and above to the console
# unless they are known noise.
LIBRARIES = ("py4j", "mlflow", "alembic", "urllib3", "tensorflow", "petastorm", "matplotlib", "horovod", "optuna")
# Known noise: warnings raised inside these packages about their own or their dependencies' APIs, and MLflow's
# notices that do not call for any action (the env_manager notice when a model is loaded for scoring, the missing
# input example when a model is logged: the project records its signature).
_NOISE_PACKAGES = r"petastorm|pyarrow|mlflow|tensorflow|tf_keras|keras|horovod|pandas|pyspark|google|absl|optuna"
NOISE = re.compile(rf"[/\\]site-packages[/\\](?:{_NOISE_PACKAGES})[/\\].*(?:FutureWarning|DeprecationWarning)"
                   r"|env_manager|An input example was not provided")
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


class _NotNoise(logging.Filter):
    """Lets a record through to the console unless it is known third-party noise (NOISE)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(record.getMessage())


def _owned(logger: logging.Logger, kind: str) -> list[logging.Handler]:
    return [h for h in logger.handlers if getattr(h, "_pipeline", None) == kind]


def _console(level: int | str, noise_filter: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FMT, "%H:%M:%S"))
    handler.setLevel(level)
    handler.addFilter(_Redacting())
    if noise_filter:
        handler.addFilter(_NotNoise())
    handler._pipeline = "console"  # type: ignore[attr-defined]
    return handler


def setup_logging(level: str = "INFO") -> None:
    """Configure the console once: the `pipeline` logger at `level`; Python warnings (captured into the
    `py.warnings` logger) and the libraries' loggers at WARNING, known noise left out. Idempotent."""
    if not _owned(LOG, "console"):
        LOG.addHandler(_console(logging.NOTSET, noise_filter=False))
        LOG.propagate = False
    LOG.setLevel(logging.DEBUG)
    _owned(LOG, "console")[0].setLevel(level)
    logging.captureWarnings(True)
    for name in ("py.warnings", *LIBRARIES):
        logger = logging.getLogger(name)
        if not _owned(logger, "console"):
            for h in logger.handlers:  # MLflow installs its own console handler: same filters as ours
                h.addFilter(_NotNoise())
                h.addFilter(_Redacting())
                h.setLevel(max(h.level, logging.WARNING))
            logger.addHandler(_console(logging.WARNING, noise_filter=True))
            logger.propagate = False
        logger.setLevel(logging.INFO if name != "py.warnings" else logging.WARNING)


def log_to_file(directory: str | Path, job: str) -> Path:
    """Also write everything the setup handles, noise included, at DEBUG to <directory>/<job>-<UTC time>.log
    (secrets masked as on the console); returns its path. A later call (the next job run in this process) closes
    the previous file and starts its own."""
    for h in _owned(LOG, "file"):
        for name in ("pipeline", "py.warnings", *LIBRARIES):
            logging.getLogger(name).removeHandler(h)
        h.close()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FMT))
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_Redacting())
    handler._pipeline = "file"  # type: ignore[attr-defined]
    for name in ("pipeline", "py.warnings", *LIBRARIES):
        logging.getLogger(name).addHandler(handler)
    return path


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
