#!/usr/bin/env bash
# Create .venv-airflow: a real Apache Airflow, pinned, in its own virtual environment (as operators run it),
# apart from the project's .venv. The DAG imports only Airflow and the standard library; its tasks call
# spark-submit.sh, which uses .venv. Only PyPI is reachable (no constraint files), so the few dependencies
# that break Airflow 2.10 when left unpinned are pinned here.
# Idempotent: a second run with this script unchanged only checks a stamp (milliseconds).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3.11}
VENV=${AIRFLOW_VENV:-.venv-airflow}
AIRFLOW_VERSION=2.10.5
stamp="$VENV/.setup-stamp"
want=$(sha256sum conf/schedule/setup-airflow.sh | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "pip==24.3.1"
"${pip[@]}" install -q "apache-airflow==$AIRFLOW_VERSION"
"$VENV/bin/airflow" version >/dev/null
echo "$want" > "$stamp"
echo "setup-airflow: Airflow $AIRFLOW_VERSION ready in $VENV in $(( $(date +%s) - start ))s" >&2
