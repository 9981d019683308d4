"""The chain's wall time on a real standalone cluster against local[2], same sample, same settings.

Each variant runs `./spark-submit.sh run-all` in a fresh workspace with the overrides of tests/test_standalone.py
(1% of the flights, two short epochs, statistics off), through the harness (warm-up, then interleaved runs):
  local       --env local: local[2] driver, MLflow on sqlite in the workspace;
  local+http  --env local, MLflow on a real `mlflow server` (isolates the tracking server's share);
  standalone  --env standalone: master + two one-core workers on 127.0.0.1, the same tracking server kind.
Run: .venv/bin/python -m tests.benchmarks.bench_chain [--runs 3]
     .venv/bin/python -m tests.benchmarks.bench_chain --full   (the README's run-all on the full data, stage times)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.core.config import REPO_ROOT
from tests.benchmarks.harness import RESULTS, Report, measure
from tests.chain import FAST_TRAINING
from tests.support.servers import mlflow_server, standalone_cluster

STAGE = re.compile(r"stage=(\S+) .*?duration=([0-9.]+)s")


SAMPLE = ["demo.fraction=0.01", *FAST_TRAINING]


def run_chain(env_name: str, ws: Path, extra_env: dict[str, str], overrides: list[str]
              ) -> tuple[float, dict[str, float]]:
    """Wall seconds of one run-all, and the seconds of its top-level stages from the job log."""
    sets = [f"--set={s}" for s in overrides]
    env = {**os.environ, "PIPELINE_HOME": str(ws), **extra_env}
    start = time.monotonic()
    res = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "run-all", "--env", env_name, *sets], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - start
    if res.returncode != 0:
        raise RuntimeError(f"{env_name} run-all failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")
    return wall, stage_table(res.stdout + res.stderr)


def stage_table(log: str) -> dict[str, float]:
    """Seconds per top-level stage (ingest.flights, features.fit, ...) summed over a run-all's job log."""
    stages: dict[str, float] = {}
    for name, secs in STAGE.findall(log):
        if name.count(".") == 1:
            stages[name] = stages.get(name, 0.0) + float(secs)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant after one warm-up")
    parser.add_argument("--full", action="store_true",
                        help="instead: the README's run-all on the full data, env local, once; stage times")
    parser.add_argument("--workspace", default=None, help="--full: run in (and keep) this new workspace")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        root = Path(tmp)
        if args.full:
            wall, stages = run_chain("local", Path(args.workspace) if args.workspace else root / "full", {}, [])
            lines = [f"run-all on the full data (env local, local[2]): {wall:.0f} s wall, load 1-min "
                     f"{os.getloadavg()[0]:.1f} after", *[f"  {k:<28} {v:7.1f}" for k, v in stages.items()]]
            Path(RESULTS / "run_all_full.txt").write_text("\n".join(lines) + "\n")
            print("\n".join(lines))
            return
        stage_log: dict[str, list[dict[str, float]]] = {}
        count = iter(range(10**6))

        def side(name: str, env_name: str, extra: Any) -> Any:
            def run() -> dict[str, float]:
                with extra(root / f"servers-{next(count)}") as env:
                    _, stages = run_chain(env_name, root / f"ws-{next(count)}", env, SAMPLE)
                stage_log.setdefault(name, []).append(stages)
                return {}
            return run

        runs = measure({"local": side("local", "local", _nothing), "local+http": side("local+http", "local", _tracking),
                        "standalone": side("standalone", "standalone", _cluster)}, runs=args.runs)
    notes = ["run-all, 1% of flights, FAST_TRAINING overrides; top stages, median seconds over all runs:"]
    for name, all_stages in stage_log.items():
        keys = sorted({k for s in all_stages for k in s}, key=lambda k: -statistics.median(
            [s.get(k, 0.0) for s in all_stages]))[:6]
        notes.append(f"  {name:<11} " + ", ".join(
            f"{k}={statistics.median([s.get(k, 0.0) for s in all_stages]):.0f}" for k in keys))
    print(Report("chain", runs, notes).write(
        [("local+http", "local", None), ("standalone", "local", None)]).read_text())


@contextmanager
def _nothing(_: Path) -> Iterator[dict[str, str]]:
    yield {}


@contextmanager
def _tracking(workdir: Path) -> Iterator[dict[str, str]]:
    workdir.mkdir(parents=True)
    with mlflow_server(workdir) as uri:
        yield {"MLFLOW_TRACKING_URI": uri}


@contextmanager
def _cluster(workdir: Path) -> Iterator[dict[str, str]]:
    workdir.mkdir(parents=True)
    with standalone_cluster(workdir / "cluster") as url, mlflow_server(workdir) as uri:
        yield {"SPARK_MASTER_URL": url, "MLFLOW_TRACKING_URI": uri}


if __name__ == "__main__":
    main()
