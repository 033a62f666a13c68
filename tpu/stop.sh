#!/usr/bin/env bash
# Stops the trainer on every worker: SIGTERM, so it writes a checkpoint and exits (42), then SIGKILL
# after STOP_TIMEOUT_S. The VM keeps running (tpu/delete.sh removes it). Safe to re-run.
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: tpu/stop.sh [--dry-run]
Stop python -m rftjax.train on all workers (tpu/worker.sh stop); STOP_TIMEOUT_S (default 300).
USAGE
  usage_common
}
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#EXTRA_ARGS[@]} == 0)) || die "unknown argument: ${EXTRA_ARGS[0]} (see --help)"
STOP_TIMEOUT_S="${STOP_TIMEOUT_S:-300}"
on_workers run "$(assign STOP_TIMEOUT_S "$STOP_TIMEOUT_S")" stop
