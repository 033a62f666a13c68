#!/usr/bin/env bash
# Shows the trainer's log from a worker (worker 0 by default: it reports the metrics), following it
# until Ctrl-C. Read-only.
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: tpu/logs.sh [--dry-run] [--worker 0|all] [--lines 100] [--no-follow]
tail -F LOG_DIR/train.log on a worker (gcloud compute tpus tpu-vm ssh --worker=W).
Env: LOG_WORKER (default 0), LOG_LINES (default 100).
USAGE
  usage_common
}
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
WORKER="${LOG_WORKER:-0}"
LINES="${LOG_LINES:-100}"
FOLLOW=1
set -- "${EXTRA_ARGS[@]}"
while (($#)); do
  case "$1" in
    --worker=*) WORKER="${1#*=}" ;;
    --worker) (($# >= 2)) || die "--worker needs a value"; WORKER="$2"; shift ;;
    --lines=*) LINES="${1#*=}" ;;
    --lines) (($# >= 2)) || die "--lines needs a value"; LINES="$2"; shift ;;
    --no-follow) FOLLOW=0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$LINES'"

tail_args=(tail -n "$LINES")
[[ "$FOLLOW" == 1 ]] && tail_args+=(-F)
vm run ssh "--worker=$WORKER" "--command=$(remote_cmd "${tail_args[@]}" "$LOG_DIR/train.log")"
