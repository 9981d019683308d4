"""Searching a run's every byte for secret values, and running a job group that is killed whole on timeout."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from pipelines.core.config import REPO_ROOT

SENTINEL_URI = "Sentinel-Pass-7f3a91"
SENTINEL_KEY = "Sentinel-Key-c44e02"


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


def files_with(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            hits += [f"{f.relative_to(root)}: {n.decode()}" for n in needles if n in data]
    return hits
