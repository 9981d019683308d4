#!/usr/bin/env bash
# The README's test command: set up the pinned environment from nothing (a no-op when ready), lint, run the suite.
# `./run-tests.sh --fast`: the fast tier only (tests marked `fast`: no JVM, cluster, training process or Horovod;
# under a minute), without Airflow's set-up. Other arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
fast=false
if [[ "${1:-}" == "--fast" ]]; then fast=true; fi
./bootstrap.sh
$fast || conf/schedule/setup-airflow.sh  # Airflow in its own .venv-airflow, as operators install it (the DAG test)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/ruff check jobs pipelines features tests
exec .venv/bin/python -m pytest tests "$@"
