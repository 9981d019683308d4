"""The console filter around spark-submit: the JVM's incubator notice is dropped however the bytes arrive, all else
passes on as it comes (a progress bar's unfinished line at once)."""

from __future__ import annotations

import os
import threading

import pytest

from pipelines.core.logs import JVM_NOTICE, _copy_without_notice

pytestmark = pytest.mark.fast


def filtered(*chunks: bytes) -> tuple[bytes, list[bytes]]:
    """Feed `chunks` one write at a time; return the whole output and what had come out after each write."""
    src_r, src_w = os.pipe()
    out_r, out_w = os.pipe()
    copier = threading.Thread(target=_copy_without_notice, args=(src_r, out_w))
    copier.start()
    seen: list[bytes] = []
    for chunk in chunks:
        os.write(src_w, chunk)
        got = b""
        if chunk.endswith(b"\n") or b"Stage" in chunk:
            got = os.read(out_r, 65536)
        seen.append(got)
    os.close(src_w)
    copier.join(timeout=10)
    os.close(out_w)
    rest = b""
    while data := os.read(out_r, 65536):
        rest += data
    os.close(out_r)
    return b"".join(seen) + rest, seen


def test_the_notice_is_dropped_and_everything_else_kept() -> None:
    out, _ = filtered(JVM_NOTICE[:10], JVM_NOTICE[10:] + b"\r\n12:00:01 WARN x: kept\n", b"last line, no newline")
    assert out == b"12:00:01 WARN x: kept\nlast line, no newline"
    out, _ = filtered(b"WARNING: Using incubator modules: jdk.incubator.vector, jdk.other\n")
    assert out == b"WARNING: Using incubator modules: jdk.incubator.vector, jdk.other\n"  # not the exact notice


def test_a_progress_bar_line_passes_at_once() -> None:
    out, seen = filtered(b"\r[Stage 1:>      (0 + 2) / 4]", b"\r[Stage 1:=====> (2 + 2) / 4]", b"\rdone\n")
    assert seen[:2] == [b"\r[Stage 1:>      (0 + 2) / 4]", b"\r[Stage 1:=====> (2 + 2) / 4]"]
    assert out == b"\r[Stage 1:>      (0 + 2) / 4]\r[Stage 1:=====> (2 + 2) / 4]\rdone\n"
