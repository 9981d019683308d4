#!/usr/bin/env bash
# The README's test command: set up the pinned environment from nothing (a no-op when ready), lint, run the suite.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
./bootstrap.sh
conf/schedule/setup-airflow.sh  # Airflow in its own .venv-airflow, as operators install it (the DAG test)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/ruff check jobs pipelines features tests
exec .venv/bin/python -m pytest tests "$@"
