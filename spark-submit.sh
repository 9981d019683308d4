#!/usr/bin/env bash
# Front door: ./spark-submit.sh <job> [--env local|standalone|yarn] [--set key=value ...] [--dry-run] [--help]
# Sets up the pinned environment on first use (bootstrap.sh, a no-op afterwards), then builds the
# spark-submit command for the environment from conf/ and runs it (or prints it with --dry-run).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/bootstrap.sh"
cd "$here"
exec "$here/.venv/bin/python" -m pipelines.submit "$@"
