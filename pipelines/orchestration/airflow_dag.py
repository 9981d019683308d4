"""Airflow DAG: score yesterday's flights with the champion model, monitor drift, then maintain the Delta tables
(compaction, vacuum), through spark-submit.sh.

Install: copy (or symlink) this file into Airflow's dags folder and set the Airflow Variable
`spark_ml_pipeline_dir` to the checkout on the Airflow workers (default /opt/spark-ml-pipeline) and
`spark_ml_pipeline_env` to local, standalone or yarn (default yarn). Only Airflow and the standard library are
imported here, so the scheduler parses it without the project's stack.

Exit codes of the jobs (spark-submit.sh <job> --help): 0 ok, 1 failed, 2 bad input, 3 missing model, 4 drift
alert. Any non-zero code fails the task (the log names the cause); a drift alert fails the monitor task after its
results are written, so the DAG run shows red and Airflow's alerting fires. maintain runs once monitor is done,
alert or not (trigger rule all_done): after the day's writers, never beside them. Re-running a task is safe: score
replaces exactly that date's partition, and maintenance does not change what readers of the latest versions see.
"""

from __future__ import annotations

from datetime import datetime, timedelta

DIR = "{{ var.value.get('spark_ml_pipeline_dir', '/opt/spark-ml-pipeline') }}"
ENV = "{{ var.value.get('spark_ml_pipeline_env', 'yarn') }}"


def command(job: str, dated: bool = True) -> str:
    """The bash command of one task, for the run's logical date ({{ ds }}) when the job takes one."""
    return f"cd {DIR} && ./spark-submit.sh {job} --env {ENV}" + (" --date {{ ds }}" if dated else "")


TASKS = {"score": command("score"), "monitor": command("monitor"), "maintain": command("maintain", dated=False)}
UPSTREAM = {"monitor": "score", "maintain": "monitor"}  # task -> the task it runs after
TRIGGER_RULES = {"maintain": "all_done"}  # maintenance runs after a drift alert too

try:
    from airflow import DAG
    from airflow.operators.bash import BashOperator
except ImportError:  # parsed outside Airflow (tests, linters): the commands above are still importable
    DAG = None

if DAG is not None:
    with DAG(
        dag_id="spark_ml_pipeline_daily_scoring",
        description="Batch-score yesterday's flights with the champion model, then monitor drift",
        schedule="0 6 * * *",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
        tags=["spark", "mlflow"],
    ) as dag:
        ops = {name: BashOperator(task_id=name, bash_command=cmd, trigger_rule=TRIGGER_RULES.get(name, "all_success"))
               for name, cmd in TASKS.items()}
        for task, upstream in UPSTREAM.items():
            ops[upstream] >> ops[task]
