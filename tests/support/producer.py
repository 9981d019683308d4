"""A slow producer of one landing file, run as a real process: `python -m tests.support.producer TARGET CONTENT STOP`.

It writes CONTENT's lines into TARGET one by one, each line in two writes with a pause between them (so a reader
can find a line cut in the middle: `2,2` of `2,20`), and keeps the file growing until the file STOP exists: it
holds the last line back, writing blank lines (no data rows) meanwhile. Then it writes the last line and exits, so
TARGET ends as CONTENT's lines plus blank lines. A reader that runs before STOP exists never sees it complete.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PAUSE_S = 0.05
REPO_ROOT = Path(__file__).resolve().parents[2]


def produce(target: Path, content: Path, stop: Path) -> None:
    lines = content.read_bytes().splitlines(keepends=True)
    with open(target, "wb", buffering=0) as out:
        for line in lines[:-1]:
            if stop.exists():
                out.write(line)
                continue
            cut = max(1, len(line) - 2)
            out.write(line[:cut])
            time.sleep(PAUSE_S)
            out.write(line[cut:])
            time.sleep(PAUSE_S)
        while not stop.exists():
            out.write(b"\n")
            time.sleep(PAUSE_S)
        out.write(lines[-1])


@contextmanager
def slow_producer(target: Path, content: bytes, workdir: Path) -> Iterator[Callable[[], None]]:
    """Start a producer process writing `content` into `target` slowly; yield `finish`, which lets it write the
    last line and waits for it to exit. Returns once the producer has started writing."""
    workdir.mkdir(parents=True, exist_ok=True)
    source, stop = workdir / "content", workdir / "stop"
    source.write_bytes(content)
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.producer", str(target), str(source), str(stop)],
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})

    def finish() -> None:
        stop.touch()
        assert proc.wait(timeout=120) == 0

    try:
        deadline = time.monotonic() + 60
        while not target.exists() or target.stat().st_size == 0:
            assert proc.poll() is None and time.monotonic() < deadline, "the producer did not start writing"
            time.sleep(0.05)
        yield finish
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    produce(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
