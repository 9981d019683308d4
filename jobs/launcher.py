"""Builds and runs the spark-submit command for a job in an environment (the engine behind ./spark-submit.sh).

The command carries the master and resources from conf, the project's own code as a zip for --py-files, the
config folder, the quiet log4j settings and the Python to use on executors. --dry-run prints it instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

from pipelines.core.config import ENVS, REPO_ROOT, Config, ConfigError, load_config

JOBS = {
    "land-demo": "jobs/land_demo.py",
    "ingest": "jobs/ingest.py",
    "features": "jobs/features.py",
    "train": "jobs/train.py",
    "score": "jobs/score.py",
    "monitor": "jobs/monitor.py",
    "run-all": "jobs/run_all.py",
}
PACKAGES = ("jobs", "pipelines", "features")


def available_jobs() -> dict[str, str]:
    return {name: path for name, path in JOBS.items() if (REPO_ROOT / path).exists()}


def build_code_zip(dest: Path) -> Path:
    """Zip the project's packages for --py-files (rebuilt each submit so executors run this checkout's code)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for pkg in PACKAGES:
            for f in sorted((REPO_ROOT / pkg).rglob("*.py")):
                zf.write(f, f.relative_to(REPO_ROOT))
    os.replace(tmp, dest)
    return dest


def spark_submit_binary() -> str:
    """spark-submit of the pyspark installation in this environment."""
    candidate = Path(sys.executable).parent / "spark-submit"
    return str(candidate) if candidate.exists() else "spark-submit"


def executor_python() -> str:
    """The Python that drivers and executors run: PYSPARK_PYTHON if set, else this environment's."""
    return os.environ.get("PYSPARK_PYTHON", sys.executable)


def build_command(job: str, cfg: Config, job_args: list[str], code_zip: Path) -> list[str]:
    """The full spark-submit command line for `job` under `cfg`."""
    sc = cfg.spark
    python = executor_python()
    cmd = [spark_submit_binary(), "--master", sc.master, "--deploy-mode", sc.deploy_mode,
           "--name", f"{sc.app_name}-{job}", "--driver-memory", sc.driver_memory]
    if not sc.master.startswith("local"):
        cmd += ["--executor-memory", sc.executor_memory, "--executor-cores", str(sc.executor_cores)]
        if sc.num_executors:
            cmd += ["--num-executors", str(sc.num_executors)]
    if sc.queue:
        cmd += ["--queue", sc.queue]
    if sc.packages:
        cmd += ["--packages", ",".join(sc.packages)]
    jars = [j for j in os.environ.get("DELTA_JARS", "").split(",") if j] + sc.jars
    if jars:
        cmd += ["--jars", ",".join(jars)]
    log4j = REPO_ROOT / "conf" / "log4j2.properties"
    java_opt = f"-Dlog4j2.configurationFile=file:{log4j}"
    conf = {
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        "spark.executorEnv.PYSPARK_PYTHON": python,
        "spark.driver.extraJavaOptions": java_opt,
        "spark.executor.extraJavaOptions": java_opt,
        **sc.conf,
    }
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += ["--py-files", str(code_zip), str(REPO_ROOT / JOBS[job]), *job_args]
    return cmd


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    jobs = available_jobs()
    usage = "usage: spark-submit.sh <job> [--env local|standalone|yarn] [--set key=value ...] [--dry-run] [--help]"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage + "\n\njobs: " + ", ".join(jobs))
        return 0
    job, rest = argv[0], argv[1:]
    if job not in jobs:
        print(f"unknown job {job!r}; jobs: {', '.join(jobs)}", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:
        return subprocess.call([sys.executable, str(REPO_ROOT / jobs[job]), "--help"])
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env", default="local", choices=ENVS)
    pre.add_argument("--set", dest="overrides", action="append", default=[])
    pre.add_argument("--conf-dir", default=None)
    pre.add_argument("--dry-run", action="store_true")
    known, _ = pre.parse_known_args(rest)
    job_args = [a for a in rest if a != "--dry-run"]
    if "--env" not in job_args:
        job_args = ["--env", known.env, *job_args]
    if "--conf-dir" not in job_args:  # the job imports from the code zip, so it cannot find conf/ on its own
        job_args += ["--conf-dir", str(Path(known.conf_dir or REPO_ROOT / "conf").resolve())]
    try:
        cfg = load_config(known.env, known.overrides, known.conf_dir)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    code_zip = Path(cfg.workspace) / "dist" / "project-code.zip"
    cmd = build_command(job, cfg, job_args, code_zip)
    if known.dry_run:
        print(shlex.join(cmd))
        return 0
    build_code_zip(code_zip)
    env = {**os.environ, "PIPELINE_SUBMITTED": "1", "PYSPARK_PYTHON": executor_python()}
    if cfg.spark.master.startswith("local"):
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
