#!/usr/bin/env bash
# Keeps a run going through preemptions until it finishes, in at most MAX_ATTEMPTS rounds of:
#   create.sh (re-creates a preempted VM) -> setup.sh -> launch.sh -> poll `worker.sh status` every POLL_S
# and then, from what the workers report (the first that applies):
#   a worker was stopped by tpu/stop.sh         -> exit 0: a deliberate stop sticks
#   a worker exited 42 (preempted, checkpoint written), lost its trainer (VM rebooted), or the VM is
#   gone/PREEMPTED                              -> stop what is left, next round; the trainer resumes
#                                                  from WORKDIR (the other hosts of a slice then die
#                                                  with 134 or 1: that is not a crash of their own)
#   a worker exited with any other code         -> stop the others, exit with that code (a crash is
#                                                  not retried: it would most likely crash again)
#   every worker exited 0                       -> done, exit 0
# Each round is safe to repeat, so killing and re-running supervise.sh is fine too: setup.sh leaves a
# worker whose trainer is still running alone, and launch.sh does not start a second trainer.
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: tpu/supervise.sh [--dry-run] [--spot] [--max-attempts 10] [--config.a.b=v ...] [--openai_job=FILE]
Create/setup/launch, then relaunch (and re-create the VM) after each preemption until the run ends.
tpu/stop.sh ends the run for good: supervise sees the trainers stopped and exits 0.
  MAX_ATTEMPTS / --max-attempts   rounds at most (default 10)
  POLL_S                          seconds between status checks (default 60)
  RETRY_WAIT_S                    wait after a round that could not bring the VM up (default 300)
USAGE
  usage_common
}
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
MAX_ATTEMPTS="${MAX_ATTEMPTS:-10}"
POLL_S="${POLL_S:-60}"
RETRY_WAIT_S="${RETRY_WAIT_S:-300}"
set -- "${EXTRA_ARGS[@]}"
while (($#)); do
  case "$1" in
    --max-attempts=*) MAX_ATTEMPTS="${1#*=}" ;;
    --max-attempts) (($# >= 2)) || die "--max-attempts needs a value"; MAX_ATTEMPTS="$2"; shift ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
[[ "$MAX_ATTEMPTS" =~ ^[1-9][0-9]*$ ]] || die "--max-attempts must be a positive number, got '$MAX_ATTEMPTS'"
require_set WORKDIR REPO_URL
# Once here: the children get COMMIT from the environment, so setup.sh cannot tell that it came from HEAD.
warn_local_changes

# The child scripts read the same (now resolved) settings from the environment.
export PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION SPOT PREEMPTIBLE QUEUED QR_NAME SERVICE_ACCOUNT \
  REPO_URL COMMIT CONFIG BUCKET WORKDIR DRY_RUN REPO_DIR VENV LOG_DIR JAX_CACHE_DIR PYTHON_VERSION JAX_SPEC \
  MODEL_URI MODELS_DIR
# The status check: one `rftjax-status HOST WHAT [CODE]` line per worker.
on_workers argv "" status
STATUS_CMD=("${CMD[@]}")

# Reads the workers' status lines on stdin; prints stopped | relaunch | fail CODE | done | wait.
# A lost or preempted host wins over the others' crash codes: when one host of a slice goes, the rest
# die too (134: JAX's distributed service saw the peer die; or 1), and a relaunch resumes them all.
verdict() {
  awk '$1 == "rftjax-status" {
         n++
         if ($3 == "running") running++
         else if ($3 == "stopped") stopped++            # tpu/stop.sh
         else if ($3 == "exited" && $4 == "0") ok++
         else if ($3 == "exited" && $4 == "42") again++
         else if ($3 == "exited") { if (fail == "") fail = $4 }
         else again++                                   # lost / none: the trainer is not there
       }
       END {
         if (stopped) print "stopped"
         else if (again) print "relaunch"
         else if (fail != "") print "fail", fail
         else if (n && ok == n) print "done"
         else print "wait"
       }'
}

# Polls until the round ends; prints the verdict (stopped | relaunch | fail CODE | done).
watch_round() {
  local out ssh_failures=0
  while :; do
    sleep "$POLL_S"
    if out="$("${STATUS_CMD[@]}" 2>&1)"; then
      ssh_failures=0
      local v
      v="$(verdict <<<"$out")"
      [[ "$v" == wait ]] || { echo "$v"; return 0; }
      continue
    fi
    # ssh failed: the VM may be gone (preempted), or the network hiccupped.
    vm_state READY
    case "$STATE" in
      READY|UNKNOWN) ;;
      *) echo relaunch; return 0 ;;
    esac
    ssh_failures=$((ssh_failures + 1))
    if ((ssh_failures >= 5)); then echo relaunch; return 0; fi
    echo "# status check failed ($ssh_failures/5), VM state $STATE: $out" >&2
  done
}

for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
  log "round $attempt/$MAX_ATTEMPTS ($(date -u +%FT%TZ))"
  if ! { "$TPU_DIR/create.sh" && "$TPU_DIR/setup.sh" && "$TPU_DIR/launch.sh" "${TRAIN_ARGS[@]}"; }; then
    # No capacity for a Spot VM, a flaky ssh, ...: wait and try again in the next round.
    log "round $attempt: bringing the VM up failed; retrying in ${RETRY_WAIT_S}s" >&2
    [[ "$DRY_RUN" == 1 ]] || sleep "$RETRY_WAIT_S"
    continue
  fi
  if [[ "$DRY_RUN" == 1 ]]; then
    log "then every ${POLL_S}s, until every worker exits 0 (or 42 / preemption: next round):"
    print_cmd "${STATUS_CMD[@]}"
    log "dry run: stopping after one round"
    exit 0
  fi
  result="$(watch_round)"
  log "round $attempt: $result"
  case "$result" in
    done) log "run finished"; exit 0 ;;
    stopped)
      log "the run was stopped by tpu/stop.sh; not relaunching (tpu/launch.sh or tpu/supervise.sh resumes it)"
      exit 0 ;;
    fail*)
      "$TPU_DIR/stop.sh" || true
      exit "${result#fail }" ;;
    relaunch)
      # Stop stragglers (they may hang in a collective with a dead peer); a gone VM just fails here.
      "$TPU_DIR/stop.sh" || true ;;
  esac
done
echo "error: the run did not finish in $MAX_ATTEMPTS rounds (MAX_ATTEMPTS); see tpu/logs.sh" >&2
exit 1
