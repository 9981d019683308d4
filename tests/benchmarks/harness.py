"""One harness for every benchmark: the sides of a ratio interleaved, medians with min-max, provenance recorded.

A benchmark names its sides (callables that do the work once and may return counters such as rows), and
`measure` runs them as: one warm-up of each side (A B ...), then `runs` rounds of A B ... so a change in the
machine's load hits both sides alike. Each run records its wall seconds and the 1-minute load average before and
after it. `Report` gives per side the median, min and max (of seconds and of any per-second rate), the ratios of
medians asked for, and the provenance (commit with a dirty flag, machine, software, the command), and writes
`<name>.json` and `<name>.txt` under tests/benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[2]
_clock = time.perf_counter  # the timer (a test replaces it)
GAUGE = "max_"  # counters named max_* (peaks), *_per_s (rates the side measured itself) and *_share are values
Counters = Mapping[str, float] | None
Ratios = Sequence[tuple[str, str, str | None]]  # (a, b, counter or None for seconds)


def is_gauge(counter: str) -> bool:
    """A counter reported as its own value (median, min, max), not divided by the run's seconds."""
    return counter.startswith(GAUGE) or counter.endswith(("_per_s", "_share"))


@dataclass
class Run:
    """One timed execution of one side."""

    side: str
    round: int  # 0 is the warm-up
    seconds: float
    load_before: float
    load_after: float
    counters: dict[str, float] = field(default_factory=dict)


@dataclass
class Stats:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values))


def measure(sides: Mapping[str, Callable[[], Counters]], runs: int = 3, warmup: int = 1) -> list[Run]:
    """Warm up each side, then `runs` interleaved rounds (A B A B ...); returns every run, warm-ups included."""
    if runs < 3:
        raise ValueError("a benchmark reports medians of at least 3 runs per side")
    out: list[Run] = []
    for rnd in range(-warmup + 1, runs + 1):
        for name, fn in sides.items():
            before = os.getloadavg()[0]
            start = _clock()
            counters = fn() or {}
            seconds = _clock() - start
            out.append(Run(name, max(rnd, 0), seconds, before, os.getloadavg()[0], dict(counters)))
    return out


def provenance() -> dict[str, Any]:
    """Commit (and whether the tree differs from it), machine, software versions, command line, time."""

    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return res.stdout.strip()

    versions = {}
    for mod in ("pyspark", "tensorflow", "mlflow", "petastorm", "horovod", "deltalake", "pyarrow"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!tests/benchmarks/results")),
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(), "cores": os.cpu_count(),
        "memory_gib": round(mem, 1), "python": platform.python_version(), "versions": versions,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


@dataclass
class Report:
    """The runs of one benchmark and what it concludes."""

    name: str
    runs: list[Run]
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=provenance)

    def timed(self, side: str) -> list[Run]:
        return [r for r in self.runs if r.side == side and r.round > 0]

    def seconds(self, side: str) -> Stats:
        return Stats.of([r.seconds for r in self.timed(side)])

    def rate(self, side: str, counter: str) -> Stats:
        """`counter` per second over the timed runs of `side` (for example rows/s)."""
        return Stats.of([r.counters[counter] / r.seconds for r in self.timed(side)])

    def value(self, side: str, counter: str) -> Stats:
        """`counter` itself over the timed runs of `side` (a gauge such as a peak memory: names start with max_)."""
        return Stats.of([r.counters[counter] for r in self.timed(side)])

    def ratio(self, a: str, b: str, counter: str | None = None) -> float:
        """Median of a over median of b: a gauge's values (max_*), rates for other counters (higher is faster),
        else seconds."""
        if counter and is_gauge(counter):
            return self.value(a, counter).median / self.value(b, counter).median
        if counter:
            return self.rate(a, counter).median / self.rate(b, counter).median
        return self.seconds(a).median / self.seconds(b).median

    def text(self, ratios: Ratios = ()) -> str:
        m = self.meta
        dirty = " (dirty)" if m["dirty"] else ""
        lines = [f"{self.name}: commit {m['commit']}{dirty}, {m['when']}, {m['cores']} cores, {m['memory_gib']} GiB,"
                 f" Python {m['python']}, "
                 + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
                 f"command: {m['command']}",
                 f"{'side':<32} {'runs':>4} {'median s':>9} {'min s':>8} {'max s':>8}  load 1-min before..after"]
        for side in dict.fromkeys(r.side for r in self.runs):
            t, s = self.timed(side), self.seconds(side)
            loads = f"{min(r.load_before for r in t):.1f}..{max(r.load_after for r in t):.1f}"
            lines.append(f"{side:<32} {len(t):>4} {s.median:>9.2f} {s.min:>8.2f} {s.max:>8.2f}  {loads}")
            for counter in t[0].counters:
                if is_gauge(counter):
                    vs = self.value(side, counter)
                    lines.append(f"{'':<4}{counter} median {vs.median:,.1f} (min {vs.min:,.1f}, max {vs.max:,.1f})")
                    continue
                rs = self.rate(side, counter)
                lines.append(f"{'':<4}{counter}/s median {rs.median:,.0f} (min {rs.min:,.0f}, max {rs.max:,.0f})")
        for a, b, counter in ratios:
            unit = counter if counter and is_gauge(counter) else f"{counter}/s" if counter else "seconds"
            lines.append(f"ratio {a} / {b} ({unit}): "
                         f"{self.ratio(a, b, counter):.3f}x")
        return "\n".join([*lines, *self.notes])

    def write(self, ratios: Ratios = (), out_dir: Path = RESULTS) -> Path:
        """Write `<name>.txt` (the table) and `<name>.json` (every run) and return the text file's path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        txt = out_dir / f"{self.name}.txt"
        txt.write_text(self.text(ratios) + "\n")
        payload = {"name": self.name, "meta": self.meta, "notes": self.notes, "runs": [asdict(r) for r in self.runs],
                   "ratios": {f"{a}/{b}": self.ratio(a, b, c) for a, b, c in ratios}}
        (out_dir / f"{self.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
        return txt
