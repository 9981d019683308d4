"""Sentinel secrets, and searching a run for them: every process's command line while it runs, every byte of the
files it leaves, and a job group that is killed whole on timeout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psutil

from pipelines.core.config import REPO_ROOT

# Each sentinel is made of distinctive fragments (8+ characters, no chance match in a binary file), so a value that
# is masked only in part is still found. The password holds '@' and '=' (percent-encoded in a URI where needed), the
# keys look like base64 with its '/', '+' and '=' padding.
URI_PASSWORD = "Pw7Kq2Fxa@Zr9LxMb4T=Vb4WsQe8N"
S3A_SECRET = "S3k9Qm8Jd/Tn3WpRc5+Ye6UaLh2=="
AZURE_KEY = "Az4Rd7HsX+Hs2JvGw9/Nc5XoPt3=="
AZURE_ACCOUNT = "pipelinesentinel"
SENTINELS = (URI_PASSWORD, S3A_SECRET, AZURE_KEY)
NEEDLES = [part for s in SENTINELS for part in re.split(r"[^A-Za-z0-9]+", s) if len(part) >= 8]
# The job's settings read the keys from the environment (SECRETS_ENV), so no command line, the test's included,
# carries them; the tracking URI's password is in MLFLOW_TRACKING_URI.
SECRET_SETTINGS = ["spark.conf.spark.hadoop.fs.s3a.secret.key=${oc.env:SENTINEL_S3A_SECRET}",
                   f"spark.conf.spark.hadoop.fs.azure.account.key.{AZURE_ACCOUNT}.dfs.core.windows.net="
                   "${oc.env:SENTINEL_AZURE_KEY}"]
SECRETS_ENV = {"SENTINEL_S3A_SECRET": S3A_SECRET, "SENTINEL_AZURE_KEY": AZURE_KEY}


def with_password(uri: str, user: str = "pipeline") -> str:
    """`uri` (scheme://host...) with user:URI_PASSWORD, the password percent-encoded as a URI needs ('@' -> %40)."""
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{user}:{quote(URI_PASSWORD, safe='=')}@{rest}"


def leaks_in(name: str, text: str) -> list[str]:
    return [f"{name}: {n}" for n in NEEDLES if n in text]


def run_group(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in its own process group; on timeout the whole group (the JVM and its Python workers) is killed."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def files_with(root: Path, needles: list[str] = NEEDLES, skip: tuple[str, ...] = ()) -> list[str]:
    """Files under `root` (but not under the folders named in `skip`) holding any needle: 'path: needle'."""
    hits = []
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink() and not any(s in f.relative_to(root).parts for s in skip):
            try:
                data = f.read_bytes()
            except OSError:  # removed while walking (a server's temporary file)
                continue
            hits += [f"{f}: {n}" for n in needles if n.encode() in data]
    return hits


@dataclass
class CommandLines:
    """Samples the command line of every process on the machine every `interval` seconds in a thread, and keeps
    those that hold a needle ('pid: command line'); `exclude`: pids whose command line the user typed."""

    interval: float = 0.2
    exclude: set[int] = field(default_factory=set)
    hits: dict[int, str] = field(default_factory=dict)
    samples: int = 0
    processes: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> CommandLines:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for p in psutil.process_iter(["cmdline"]):
                line = " ".join(p.info["cmdline"] or [])
                self.processes.add(p.pid)
                if p.pid not in self.exclude and any(n in line for n in NEEDLES):
                    self.hits[p.pid] = line[:400]
            self.samples += 1
            self._stop.wait(self.interval)

    def leaks(self) -> list[str]:
        return [f"command line of pid {pid}: {line}" for pid, line in sorted(self.hits.items())]
