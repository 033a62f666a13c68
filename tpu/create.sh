#!/usr/bin/env bash
# Creates the TPU VM, or a queued resource that provisions it, unless it already exists. Safe to
# re-run: an existing VM is left alone, and one that was preempted (Spot VMs cannot be restarted) is
# deleted and created again. With --queued it waits until the queued resource is ACTIVE.
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: tpu/create.sh [--dry-run] [--type v5litepod-8] [--zone us-west4-a] [--spot|--preemptible] [--queued]
Create the TPU VM (gcloud compute tpus tpu-vm create) or a queued resource for it
(gcloud compute tpus queued-resources create); skip when it already exists.
  QR_WAIT_S   how long to wait for a queued resource to become ACTIVE (default 21600)
  POLL_S      seconds between state checks (default 60)
USAGE
  usage_common
}
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#EXTRA_ARGS[@]} == 0)) || die "unknown argument: ${EXTRA_ARGS[0]} (see --help)"
QR_WAIT_S="${QR_WAIT_S:-21600}"
POLL_S="${POLL_S:-60}"
known_zones="$(zones_for "$ACCELERATOR_TYPE")"
if [[ -n "$known_zones" && " $known_zones " != *" $ZONE "* ]]; then
  echo "warning: zone $ZONE is not one known to offer ${ACCELERATOR_TYPE%%-*} ($known_zones);" \
    "choose one with --zone (tpu/README.md)" >&2
fi
CREATE_FLAGS=()
[[ "$SPOT" == 1 ]] && CREATE_FLAGS+=(--spot)
[[ "$PREEMPTIBLE" == 1 ]] && CREATE_FLAGS+=(--preemptible)
if [[ -n "$SERVICE_ACCOUNT" ]]; then
  # The VM's programs (the trainer writing to gs://) act as this account; cloud-platform scope lets IAM
  # alone decide what it may do.
  CREATE_FLAGS+=("--service-account=$SERVICE_ACCOUNT" "--scopes=https://www.googleapis.com/auth/cloud-platform")
fi

# Waits for the queued resource to be ACTIVE (its node is then READY); fails on FAILED or SUSPENDED.
wait_active() {
  if [[ "$DRY_RUN" == 1 ]]; then
    qr argv describe "--format=value(state.state)"
    log "would wait (up to ${QR_WAIT_S}s) until this prints ACTIVE: $(print_cmd "${CMD[@]}")"
    return 0
  fi
  local waited=0
  while :; do
    qr_state ACTIVE
    case "$STATE" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|NOT_FOUND|UNKNOWN) die "queued resource $QR_NAME is $STATE; re-run tpu/create.sh" ;;
    esac
    ((waited < QR_WAIT_S)) || die "queued resource $QR_NAME still $STATE after ${QR_WAIT_S}s"
    sleep "$POLL_S"
    waited=$((waited + POLL_S))
  done
}

if [[ "$QUEUED" == 1 ]]; then
  qr_state NOT_FOUND
  case "$STATE" in
    NOT_FOUND) ;;
    UNKNOWN) die "could not check queued resource $QR_NAME (see the warning above)" ;;
    SUSPENDED|FAILED)
      log "queued resource $QR_NAME is $STATE (preempted or failed): deleting it to create it again"
      qr run delete --force --quiet ;;
    *)
      log "queued resource $QR_NAME exists ($STATE); not creating it"
      wait_active
      exit 0 ;;
  esac
  qr run create "--node-id=$TPU_NAME" "--accelerator-type=$ACCELERATOR_TYPE" \
    "--runtime-version=$RUNTIME_VERSION" "${CREATE_FLAGS[@]}"
  wait_active
else
  vm_state NOT_FOUND
  case "$STATE" in
    NOT_FOUND) ;;
    UNKNOWN) die "could not check VM $TPU_NAME (see the warning above)" ;;
    PREEMPTED|TERMINATED)
      log "VM $TPU_NAME is $STATE: deleting it to create it again"
      vm run delete --quiet ;;
    STOPPED)
      vm run start
      exit 0 ;;
    *)
      log "VM $TPU_NAME exists ($STATE); not creating it"
      exit 0 ;;
  esac
  vm run create "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION" "${CREATE_FLAGS[@]}"
fi
