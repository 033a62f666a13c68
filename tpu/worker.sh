#!/usr/bin/env bash
# Runs ON each TPU worker, from the repo checkout that tpu/setup.sh made there; launch.sh, stop.sh and
# supervise.sh call it over `gcloud ... ssh --worker=all`, so every worker runs the same command.
#
#   bash rftjax/tpu/worker.sh start [trainer flags]  start `python -m rftjax.train` in the background
#                                                   (own session, nohup: survives the ssh session);
#                                                   does nothing if it is already running
#   bash rftjax/tpu/worker.sh status                 print one line:
#       rftjax-status HOST running PID | exited CODE | lost (started, died without a code) | none
#                          | stopped [CODE] (ended after `stop`: tpu/stop.sh; supervise.sh does not relaunch)
#   bash rftjax/tpu/worker.sh stop                   SIGTERM the trainer (it checkpoints and exits 42),
#                                                   SIGKILL after STOP_TIMEOUT_S (default 300)
#
# Settings (env; relative paths are under $HOME): VENV, LOG_DIR, JAX_CACHE_DIR, EXPECT_COMMIT.
# Logs append to $LOG_DIR/train.log; the exit code goes to $LOG_DIR/train.exit, and `stop` leaves
# $LOG_DIR/train.stopped (removed by the next `start`).
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO_DIR="$(dirname "$(dirname "$SELF")")"
cd "$HOME"
under_home() { case "$1" in /*|*://*) echo "$1" ;; *) echo "$HOME/$1" ;; esac; }
VENV="$(under_home "${VENV:-rftjax-venv}")"
LOG_DIR="$(under_home "${LOG_DIR:-rftjax-logs}")"
JAX_CACHE_DIR="$(under_home "${JAX_CACHE_DIR:-.cache/rftjax-jax}")"
PID_FILE="$LOG_DIR/train.pid"
EXIT_FILE="$LOG_DIR/train.exit"
LOG_FILE="$LOG_DIR/train.log"
STOP_FILE="$LOG_DIR/train.stopped"

# True when the recorded process is alive and is ours (pids are reused after a reboot).
running() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid cmdline
  pid="$(cat "$PID_FILE")"
  kill -0 "$pid" 2>/dev/null || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"worker.sh _run"* ]]
}

status() {
  local host
  host="$(hostname)"
  if running; then
    echo "rftjax-status $host running $(cat "$PID_FILE")"
  elif [[ -f "$STOP_FILE" ]]; then
    local code=""
    if [[ -f "$EXIT_FILE" ]]; then code=" $(cat "$EXIT_FILE")"; fi
    echo "rftjax-status $host stopped$code"
  elif [[ -f "$EXIT_FILE" ]]; then
    echo "rftjax-status $host exited $(cat "$EXIT_FILE")"
  elif [[ -f "$PID_FILE" ]]; then
    echo "rftjax-status $host lost"
  else
    echo "rftjax-status $host none"
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  start)
    if running; then
      echo "already running; not starting a second trainer"
      status
      exit 0
    fi
    head="$(git -C "$REPO_DIR" rev-parse HEAD)"
    if [[ "${EXPECT_COMMIT:-}" =~ ^[0-9a-f]{40}$ && "$EXPECT_COMMIT" != "$head" ]]; then
      echo "error: $(hostname) has $REPO_DIR at $head, expected $EXPECT_COMMIT; run tpu/setup.sh" >&2
      exit 3
    fi
    [[ -x "$VENV/bin/python" ]] || { echo "error: no virtualenv at $VENV; run tpu/setup.sh" >&2; exit 3; }
    mkdir -p "$LOG_DIR"
    rm -f "$EXIT_FILE" "$STOP_FILE"
    echo "=== $(date -u +%FT%TZ) start commit $head: python -m rftjax.train $*" >>"$LOG_FILE"
    # setsid: own session and process group, so `stop` can signal the whole group and a closing ssh
    # session sends it nothing. All three streams are redirected so ssh does not wait on them.
    setsid nohup bash "$SELF" _run "$@" >>"$LOG_FILE" 2>&1 </dev/null &
    echo "$!" >"$PID_FILE"
    sleep 1
    status
    ;;
  _run)
    # A trapped (not ignored) TERM is reset in the child, so python still gets it; bash runs the trap
    # only after python exits, and then records python's exit code (42 = preempted, checkpointed).
    trap ':' TERM INT HUP
    export JAX_COMPILATION_CACHE_DIR="$JAX_CACHE_DIR"
    cd "$REPO_DIR"
    code=0
    "$VENV/bin/python" -m rftjax.train "$@" || code=$?
    echo "$code" >"$EXIT_FILE"
    echo "=== $(date -u +%FT%TZ) exit $code"
    exit "$code"
    ;;
  status)
    status
    ;;
  stop)
    if ! running; then
      echo "not running"
      status
      exit 0
    fi
    pid="$(cat "$PID_FILE")"
    date -u +%FT%TZ >"$STOP_FILE"   # a deliberate stop: status says `stopped`, and supervise.sh ends the run
    kill -TERM -- "-$pid"
    for ((i = 0; i < ${STOP_TIMEOUT_S:-300}; i++)); do
      running || break
      sleep 1
    done
    if running; then
      echo "still running after ${STOP_TIMEOUT_S:-300}s; killing"
      kill -KILL -- "-$pid"
    fi
    status
    ;;
  *)
    sed -n '2,16p' "$SELF"
    [[ "$cmd" == -h || "$cmd" == --help ]] || exit 2
    ;;
esac
