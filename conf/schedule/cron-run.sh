#!/usr/bin/env bash
# The crontab's runner: cron-run.sh NAME "JOB ARGS..." ["JOB ARGS..." ...]
# Runs ./spark-submit.sh JOB ARGS for each step in order, stopping at the first that fails, and exits with that
# step's code (0 ok, 1 failed, 2 bad input, 3 missing model, 4 drift alert; see spark-submit.sh JOB --help).
# Log: every line of output, timestamped (UTC, milliseconds) and tagged NAME[pid], plus a start, an exit-code and
# an end line, is appended to <workspace>/logs/NAME.log; <workspace> is PIPELINE_HOME, or ./workspace in the
# checkout (a URI workspace, e.g. hdfs://, keeps its logs in ./workspace). SCHEDULE_LOG_DIR overrides the folder.
# Lock: one lock per workspace (<log folder>/../locks/schedule.lock, flock(2), the same lock as
# pipelines/core/locks.py) for every scheduled run, so two runs never overlap: a run that starts while another
# holds it waits (score and monitor replace exactly their date's rows, so a late run is still right, and the
# weekly maintain must run after the day's writers, not beside them, nor be skipped), up to
# SCHEDULE_LOCK_WAIT_S seconds (default 21600, 6 h); then it gives up with exit 75 and a message naming the
# holder, so runs cannot pile up behind a hung one. Only failures print to stdout/stderr, so cron mails those.
set -uo pipefail
usage="usage: cron-run.sh NAME \"JOB ARGS...\" [\"JOB ARGS...\" ...]   e.g. cron-run.sh daily \"score --env yarn --date 2013-12-03\""
if [[ $# -lt 2 || "$1" == -* ]]; then echo "$usage" >&2; exit 2; fi
name=$1; shift
[[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "cron-run.sh: NAME must be letters, digits, - or _ (got '$name')" >&2; exit 2; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ws=${PIPELINE_HOME:-$repo/workspace}
[[ "$ws" == *://* ]] && ws=$repo/workspace
log_dir=${SCHEDULE_LOG_DIR:-$ws/logs}
lock=$(dirname "$log_dir")/locks/schedule.lock
mkdir -p "$log_dir" "$(dirname "$lock")" || { echo "cron-run.sh: cannot create $log_dir" >&2; exit 1; }
log=$log_dir/$name.log
wait_s=${SCHEDULE_LOCK_WAIT_S:-21600}
tag="$name[$$]"

stamp() {  # each line of stdin, prefixed with the UTC time (ms) and the run's tag, appended to the log
  local line now
  while IFS= read -r line || [[ -n "$line" ]]; do
    now=$EPOCHREALTIME
    printf '%(%Y-%m-%dT%H:%M:%S)T.%sZ %s %s\n' "${now%.*}" "${now#*.}" "$tag" "$line" >> "$log"
  done
}
say() { printf '%s\n' "$*" | TZ=UTC stamp; }
holder() { local who; who=$(cat "$lock" 2>/dev/null); echo "${who:-a process that recorded nothing}"; }

exec 9>>"$lock"
if ! flock -n 9; then
  say "waiting for the lock $lock, held by: $(holder)"
  if ! flock -w "$wait_s" 9; then
    msg="cron-run.sh: $name: gave up after ${wait_s}s waiting for $lock, held by: $(holder)"
    say "$msg"; echo "$msg" >&2; exit 75
  fi
fi
printf '%s pid %s since %s\n' "$name" "$$" "$(date -u +%FT%TZ)" > "$lock"
say "start: lock acquired; steps: $(printf '[%s] ' "$@")"
start=$SECONDS
rc=0
for step in "$@"; do
  read -r -a argv <<< "$step"
  say "step: ./spark-submit.sh ${argv[*]}"
  (cd "$repo" && ./spark-submit.sh "${argv[@]}") 2>&1 </dev/null | TZ=UTC stamp
  rc=${PIPESTATUS[0]}
  say "exit $rc: ./spark-submit.sh ${argv[*]}"
  if (( rc != 0 )); then
    echo "cron-run.sh: $name: ./spark-submit.sh ${argv[*]} exited $rc; log: $log" >&2
    break
  fi
done
say "end: exit $rc after $(( SECONDS - start ))s"
exit "$rc"
