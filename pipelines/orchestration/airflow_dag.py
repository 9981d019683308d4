"""Airflow DAG: score the run's date with the champion model, monitor drift, then maintain the Delta tables
(compaction, vacuum), through spark-submit.sh.

Install: copy (or symlink) this file into Airflow's dags folder and set the Airflow Variables
`spark_ml_pipeline_dir` (the checkout on the Airflow workers, default /opt/spark-ml-pipeline),
`spark_ml_pipeline_env` (local, standalone or yarn, default yarn) and, optionally, `spark_ml_pipeline_args`
(extra arguments for every job, e.g. `--set monitor.psi_threshold=0.3`; default none). The workspace is the
environment's (conf/<env>/storage.yaml), or PIPELINE_HOME in the workers' environment, or
`--set storage.workspace=...` in `spark_ml_pipeline_args`. Only Airflow and the standard library are imported
here, so the scheduler parses it without the project's stack. conf/schedule/setup-airflow.sh installs a pinned
Airflow into .venv-airflow; tests/test_schedule.py runs this DAG there with `airflow dags test` (SQLite metadata
database, no webserver, Variables as AIRFLOW_VAR_<NAME> environment variables).

Exit codes of the jobs (spark-submit.sh <job> --help): 0 ok, 1 failed, 2 bad input, 3 missing model, 4 drift
alert. Any non-zero code fails the task (the log names the cause); a drift alert fails the monitor task after its
results are written, and Airflow's task alerting fires. monitor is not retried: an alert is the data's verdict, a
retry would only repeat it ten minutes later. maintain runs once monitor is done, alert or not (trigger rule
all_done): after the day's writers, never beside them. As maintain is then the last task and succeeds, a final
task fails the DAG run whenever a task failed (Airflow takes a run's state from its last tasks), so the run shows
red too. Re-running a date is safe: score replaces exactly that date's partition of gold predictions, monitor that
window's drift rows, and maintenance does not change what readers of the latest versions see.
"""

from __future__ import annotations

from datetime import datetime, timedelta

DIR = "{{ var.value.get('spark_ml_pipeline_dir', '/opt/spark-ml-pipeline') }}"
ENV = "{{ var.value.get('spark_ml_pipeline_env', 'yarn') }}"
ARGS = "{{ var.value.get('spark_ml_pipeline_args', '') }}"


def command(job: str, dated: bool = True) -> str:
    """The bash command of one task, for the run's logical date ({{ ds }}) when the job takes one."""
    return f"cd {DIR} && ./spark-submit.sh {job} --env {ENV}" + (" --date {{ ds }}" if dated else "") + f" {ARGS}"


TASKS = {"score": command("score"), "monitor": command("monitor"), "maintain": command("maintain", dated=False)}
UPSTREAM = {"monitor": "score", "maintain": "monitor"}  # task -> the task it runs after
TRIGGER_RULES = {"maintain": "all_done"}  # maintenance runs after a drift alert too
RETRIES = {"monitor": 0}  # a drift alert is deterministic: retrying it only delays the alert
# Airflow sets a DAG run's state from its last tasks: maintain (all_done) succeeds after a drift alert, so this
# task, run only when a task above failed (one_failed), fails too and the run shows failed; skipped otherwise.
VERDICT = "fail_run_if_a_task_failed"

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
        start_date=datetime(2013, 1, 1),  # past dates can be run on demand; catchup is off
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
        tags=["spark", "mlflow"],
    ) as dag:
        ops = {name: BashOperator(task_id=name, bash_command=cmd, trigger_rule=TRIGGER_RULES.get(name, "all_success"),
                                  retries=RETRIES.get(name, 1))
               for name, cmd in TASKS.items()}
        for task, upstream in UPSTREAM.items():
            ops[upstream] >> ops[task]
        list(ops.values()) >> BashOperator(task_id=VERDICT, trigger_rule="one_failed", retries=0,
                                           bash_command="echo 'a task of this run failed: see its log' >&2; exit 1")
