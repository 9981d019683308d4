"""What a job is handed privately: its Spark settings in a properties file (spark-submit --properties-file), its
--set overrides and, for a driver in a YARN container, the environment it needs in a job file (PIPELINE_JOB_FILE).

Both files are readable by the user only (0600, in a 0700 temporary folder removed after the run). Nothing of them is
an argument: `ps` shows every process's command line to every user of the host, and spark-submit's launcher, the
driver's JVM and the job's Python would each repeat it. Nor is any of it an environment variable of a YARN
container: YARN writes a container's environment into its launch script and copies that into the container's logs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

JOB_FILE_ENV = "PIPELINE_JOB_FILE"
PROPERTIES = "spark.properties"
JOB_FILE = "job.json"
JOB_FILE_ALIAS = "pipeline-job.json"  # its name in a YARN container's working folder (--files <path>#<alias>)


@contextmanager
def private_dir() -> Iterator[Path]:
    """A fresh 0700 folder in the temporary directory, removed with everything in it afterwards."""
    path = Path(tempfile.mkdtemp(prefix="pipeline-submit-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}


def _escape(text: str, key: bool) -> str:
    """java.util.Properties syntax: backslash and control characters escaped; in a key also its separators and
    comment marks; in a value a leading space (UTF-8 otherwise: Spark and its launcher read the file as UTF-8)."""
    out = "".join(_ESCAPES.get(c, f"\\{c}" if key and c in " =:#!" else c) for c in text)
    return out if key or not out.startswith(" ") else "\\" + out


def write_properties(path: Path, conf: Mapping[str, str]) -> Path:
    """`conf` as a 0600 properties file at `path` (a new file)."""
    return _write_private(path, "".join(f"{_escape(k, True)}={_escape(v, False)}\n" for k, v in conf.items()))


def write_job_file(path: Path, overrides: list[str], env: Mapping[str, str]) -> Path:
    """The job's --set overrides and the environment its driver needs, as a 0600 JSON file at `path`."""
    return _write_private(path, json.dumps({"overrides": list(overrides), "env": dict(env)}))


def read_job_file(environ: Mapping[str, str] = os.environ) -> tuple[list[str], dict[str, str]]:
    """The overrides and environment of the job file PIPELINE_JOB_FILE names; nothing when it is not set."""
    path = environ.get(JOB_FILE_ENV)
    if not path:
        return [], {}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [str(o) for o in data.get("overrides", [])], {str(k): str(v) for k, v in data.get("env", {}).items()}
