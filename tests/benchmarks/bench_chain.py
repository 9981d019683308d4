"""The chain's wall time on a real standalone cluster against local[2], same sample, same settings.

Each variant runs `./spark-submit.sh run-all` in a fresh workspace with the overrides of tests/test_standalone.py
(1% of the flights, two short epochs, statistics off):
  local       --env local: local[2] driver, MLflow on sqlite in the workspace;
  local+http  --env local, MLflow on a real `mlflow server` (isolates the tracking server's share);
  standalone  --env standalone: master + two one-core workers on 127.0.0.1, the same tracking server kind.
Run: .venv/bin/python -m tests.benchmarks.bench_chain [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from pipelines.core.config import REPO_ROOT
from tests.chain import FAST_TRAINING
from tests.support.servers import mlflow_server, standalone_cluster

STAGE = re.compile(r"stage=(\S+) .*?duration=([0-9.]+)s")


def run_chain(env_name: str, ws: Path, extra_env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Wall seconds of one run-all, and the seconds of its top-level stages from the job log."""
    sets = [f"--set={s}" for s in ["demo.fraction=0.01", *FAST_TRAINING]]
    env = {**os.environ, "PIPELINE_HOME": str(ws), **extra_env}
    start = time.monotonic()
    res = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "run-all", "--env", env_name, *sets], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - start
    if res.returncode != 0:
        raise RuntimeError(f"{env_name} run-all failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")
    stages: dict[str, float] = {}
    for name, secs in STAGE.findall(res.stdout + res.stderr):
        if name.count(".") == 1 and name.split(".")[0] in ("ingest", "features", "train", "score", "monitor"):
            stages[name] = stages.get(name, 0.0) + float(secs)
    return wall, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results: dict[str, tuple[float, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        root = Path(tmp)
        results["local"] = run_chain("local", root / "local", {})
        with mlflow_server(root / "local-http") as uri:
            results["local+http"] = run_chain("local", root / "local-http", {"MLFLOW_TRACKING_URI": uri})
        with standalone_cluster(root / "cluster") as url, mlflow_server(root / "standalone") as uri:
            results["standalone"] = run_chain("standalone", root / "standalone",
                                              {"SPARK_MASTER_URL": url, "MLFLOW_TRACKING_URI": uri})
    base = results["local"][0]
    lines = [f"run-all, 1% of flights, FAST_TRAINING overrides; load average at start {load:.1f} "
             f"on {os.cpu_count()} cores", f"{'variant':<12} {'wall s':>8} {'x local':>8}  stages (s)"]
    for name, (wall, stages) in results.items():
        top = ", ".join(f"{k}={v:.0f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])[:6])
        lines.append(f"{name:<12} {wall:>8.0f} {wall / base:>8.2f}  {top}")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
