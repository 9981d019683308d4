"""One logging setup for jobs, notebooks and tests; one line per stage with counts and duration; and the
redaction of secret-looking values wherever the project prints or records text (logs, --dry-run, MLflow).

The console keeps the stage lines, the warnings that matter and the errors. Known third-party noise (the
libraries' own FutureWarnings and DeprecationWarnings, MLflow's notices, Spark's known warnings listed in
conf/log4j2.properties) goes only to the job's debug log file (`log_to_file`: <workspace>/logs/<job>-<timestamp>.log,
DEBUG; the JVM's warnings and errors join it under spark-submit), where it can still be read; the JVM's boot notice
about its incubator module is dropped (`without_jvm_notice`, around spark-submit). TensorFlow's C++ log
is quieted by TF_CPP_MIN_LOG_LEVEL, set here, before any module imports TensorFlow (executors get it through
spark.executorEnv, see session.derived_conf).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
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
# What the project treats as secret, defined once: redact(), redact_config() and Spark's own redaction
# (spark_redaction_conf: the event log, the UI, the History Server) are all built from these two patterns, written in
# the regex syntax that Python and Java share. A key is secret when it holds one of the words (so also
# fs.azure.account.key.<account>.dfs.core.windows.net and Spark's spark.authenticate.secret); a URI's password is the
# part of scheme://user:password@ up to the authority's last '@' (a password may hold '@' itself).
SECRET_WORDS = r"secret|password|passwd|token|credential|auth|(?:access|private|api|account|session)[._-]?key"
URI_PASSWORD = r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*:[^/\s'\"?#]*@"
SECRET_KEY = re.compile(f"(?i:{SECRET_WORDS})")
_URI_PASSWORD = re.compile(URI_PASSWORD)
# key=value where the key names a secret. The value runs to its closing quote when quoted; otherwise to the quote that
# ends the shell word it is in, or to where the next `key=` or `--option` starts, or to the end of the line: so '='
# (base64 padding), commas and spaces stay inside it.
_ASSIGNED = re.compile(rf"(?P<key>[\w.-]*(?i:{SECRET_WORDS})[\w.-]*)=(?P<value>\"[^\"\n]*\"?|'[^'\n]*'?|"
                       r"[^'\"\n]*?(?=['\"]|\s+(?:-|[\w.-]+=)|\s*$))", re.M)
# 'key': 'value' and "key": "value" (dict reprs and JSON in messages) where the key names a secret.
_QUOTED = re.compile(rf"(?P<q>['\"])(?P<key>[^'\"\s]*(?i:{SECRET_WORDS})[^'\"\s]*)(?P=q)(?P<sep>\s*:\s*)"
                     r"(?P<vq>['\"])(?:\\.|(?!(?P=vq)).)*(?P=vq)")


def _mask_password(m: re.Match[str]) -> str:
    scheme, _, userinfo = m[0].partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{MASK}@"


def _mask_value(m: re.Match[str]) -> str:
    value = m["value"]
    if not value.strip():
        return m[0]
    quote = value[0] if value[0] in "'\"" else ""
    return f"{m['key']}={quote}{MASK}{quote}"


def redact(text: str) -> str:
    """Mask credentials in `text`: the password of scheme://user:password@host, and the whole value of any
    key=value (or quoted 'key': 'value') whose key names a secret (fs.s3a.secret.key=..., MLFLOW_TRACKING_TOKEN=...,
    fs.azure.account.key.<account>...=...)."""
    text = _URI_PASSWORD.sub(_mask_password, text)
    text = _QUOTED.sub(lambda m: f"{m['q']}{m['key']}{m['q']}{m['sep']}{m['vq']}{MASK}{m['vq']}", text)
    return _ASSIGNED.sub(_mask_value, text)


def redact_config(obj: Any, key: str = "") -> Any:
    """A copy of a config dump (dicts, lists, strings) with secret-named keys' values and URI passwords masked."""
    if isinstance(obj, dict):
        return {k: redact_config(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_config(v, key) for v in obj]
    if isinstance(obj, str):
        return MASK if SECRET_KEY.search(key) else redact(obj)
    return obj


def spark_redaction_conf() -> dict[str, str]:
    """Spark's own redaction, from the same definition: spark.redaction.regex masks a setting whose key or value
    matches (the Environment of the event log, UI and History Server), spark.redaction.string.regex the matching
    part of Spark's texts (SQL plans)."""
    return {"spark.redaction.regex": f"(?i:{SECRET_WORDS})|{URI_PASSWORD}",
            "spark.redaction.string.regex": rf"{URI_PASSWORD}|[\w.-]*(?i:{SECRET_WORDS})[\w.-]*=[^\s,'\"]*"}


def redacted_traceback(exc: BaseException) -> str:
    """The traceback Python would print for `exc`, masked (MLflow's errors carry the tracking URL with its password)."""
    return redact("".join(traceback.format_exception(exc)))


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(redacted_traceback(exc.with_traceback(tb)))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    sys.stderr.write(f"Exception in thread {name}:\n{redacted_traceback(args.exc_value)}")


class _Redacting(logging.Filter):
    """Masks secrets in every record the pipeline's handler writes: messages, their arguments and the traceback of
    LOG.exception (rendered into the message here, since the formatter would add it unmasked)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}\n{redacted_traceback(record.exc_info[1]).rstrip()}"
        elif record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{record.stack_info}"
        record.msg, record.args = redact(message), None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
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
    `py.warnings` logger) and the libraries' loggers at WARNING, known noise left out; tracebacks of exceptions that
    nothing caught (the main thread's and other threads') printed masked. Idempotent."""
    sys.excepthook, threading.excepthook = _excepthook, _thread_excepthook
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
    _jvm_log_to_file(path)
    return path


JVM_APPENDER = "pipeline-debug-log"


def _jvm_log_to_file(path: Path) -> None:
    """Send the JVM's log (Spark's warnings and errors, the console's known noise included: conf/log4j2.properties)
    to the job's debug log too, when this Python already has a JVM: under spark-submit, which starts the JVM before
    the job's Python, or in a process whose session is up. It never starts one. Both sides append whole lines."""
    from pyspark import SparkContext

    if SparkContext._jvm is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        return
    try:
        SparkContext._ensure_initialized()  # connects to spark-submit's gateway; creates no context
        jvm = SparkContext._jvm
        core = jvm.org.apache.logging.log4j.core
        context = jvm.org.apache.logging.log4j.LogManager.getContext(False)
        config = context.getConfiguration()
        root = config.getRootLogger()
        previous = config.getAppenders().get(JVM_APPENDER)
        if previous is not None:  # an earlier job run in this process: its file is closed
            root.removeAppender(JVM_APPENDER)
            previous.stop()
        layout = (core.layout.PatternLayout.newBuilder().withConfiguration(config)
                  .withPattern("%d{yyyy-MM-dd HH:mm:ss,SSS} %p %c: %m%n").build())
        appender = (core.appender.FileAppender.newBuilder().setName(JVM_APPENDER).withFileName(str(path))
                    .withAppend(True).setLayout(layout).setConfiguration(config).build())
        appender.start()
        config.addAppender(appender)
        root.addAppender(appender, None, None)
        context.updateLoggers()
    except Exception as e:  # the debug log is a help, never a reason for a job to fail
        LOG.debug("the JVM's log does not go to %s: %s", path, e)


# The JVM prints this on every start: Spark's launcher always adds --add-modules=jdk.incubator.vector (its vectorized
# BLAS), and no JVM option turns the notice off. Nothing to act on.
JVM_NOTICE = b"WARNING: Using incubator modules: jdk.incubator.vector"


@contextmanager
def without_jvm_notice() -> Iterator[int | None]:
    """A file descriptor for a child's stderr that passes everything on to this process's stderr but JVM_NOTICE.
    A terminal stays a terminal (a pseudo-terminal in between), so the child's progress bars and colours are as
    before. Yields None (the child inherits stderr as it is) when this process's stderr is no file."""
    try:
        out = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield None
        return
    if os.isatty(out):
        read_fd, write_fd = _pseudo_terminal(out)
    else:
        read_fd, write_fd = os.pipe()
    copier = threading.Thread(target=_copy_without_notice, args=(read_fd, out), name="stderr-filter", daemon=True)
    copier.start()
    try:
        yield write_fd
    finally:
        os.close(write_fd)
        copier.join(timeout=2)  # the rest of what the child wrote; a straggler holding its stderr is not waited for


def _pseudo_terminal(like: int) -> tuple[int, int]:
    """A pseudo-terminal (read end, write end) of the terminal `like`'s size that passes bytes as they are (the
    real terminal turns "\\n" into "\\r\\n" itself)."""
    import fcntl
    import pty
    import termios

    read_fd, write_fd = pty.openpty()
    attrs = termios.tcgetattr(write_fd)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(write_fd, termios.TCSANOW, attrs)
    with suppress(OSError):
        fcntl.ioctl(write_fd, termios.TIOCSWINSZ, fcntl.ioctl(like, termios.TIOCGWINSZ, b"\0" * 8))
    return read_fd, write_fd


def _copy_without_notice(read_fd: int, out: int) -> None:
    """Copy read_fd to out as it comes, dropping JVM_NOTICE lines; a partial line that cannot become the notice
    goes on at once (progress bars redraw a line without ending it)."""
    pending = b""
    try:
        while chunk := _read(read_fd):
            *lines, pending = (pending + chunk).split(b"\n")
            data = b"".join(line + b"\n" for line in lines if line.rstrip(b"\r") != JVM_NOTICE)
            if pending and not JVM_NOTICE.startswith(pending.rstrip(b"\r")):
                data, pending = data + pending, b""
            _write(out, data)
        _write(out, pending)
    finally:
        os.close(read_fd)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: a pseudo-terminal whose last writer closed it
        return b""


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


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
