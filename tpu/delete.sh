#!/usr/bin/env bash
# Deletes the TPU VM (with --queued: the queued resource and its VM). Safe to re-run: does nothing
# when it is already gone. The workdir on GCS (checkpoints, metrics) is kept.
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: tpu/delete.sh [--dry-run] [--queued]
Delete the TPU VM (gcloud compute tpus tpu-vm delete --quiet) or, with --queued, the queued resource
and its VM (gcloud compute tpus queued-resources delete --force --quiet).
USAGE
  usage_common
}
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#EXTRA_ARGS[@]} == 0)) || die "unknown argument: ${EXTRA_ARGS[0]} (see --help)"

if [[ "$QUEUED" == 1 ]]; then
  qr_state EXISTS
  [[ "$STATE" != UNKNOWN ]] || die "could not check queued resource $QR_NAME (see the warning above)"
  if [[ "$STATE" == NOT_FOUND ]]; then log "queued resource $QR_NAME not found; nothing to delete"; exit 0; fi
  qr run delete --force --quiet
else
  vm_state EXISTS
  [[ "$STATE" != UNKNOWN ]] || die "could not check VM $TPU_NAME (see the warning above)"
  if [[ "$STATE" == NOT_FOUND ]]; then log "VM $TPU_NAME not found; nothing to delete"; exit 0; fi
  vm run delete --quiet
fi
