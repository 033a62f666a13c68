# shellcheck shell=bash
# shellcheck disable=SC2034  # settings set here are read by the scripts that source this file
# Shared by every tpu/*.sh script: settings, flag parsing and the `run` wrapper. Source it; don't run it.
#
# Every setting has a default, can be set from the environment, and is overridden by a flag:
#
#   env var            flag                 default
#   PROJECT            --project            (empty: gcloud's configured project)
#   ZONE               --zone               us-west4-a
#   TPU_NAME           --name               rftjax
#   ACCELERATOR_TYPE   --type               v5litepod-8
#   RUNTIME_VERSION    --version            picked from ACCELERATOR_TYPE (v5litepod -> v2-alpha-tpuv5-lite, ...)
#   SPOT=1             --spot               0   (Spot VM: cheap, can be preempted at any time)
#   PREEMPTIBLE=1      --preemptible        0   (legacy preemptible TPU; not with --queued)
#   QUEUED=1           --queued             0   (create through a queued resource)
#   QR_NAME            --qr-name            $TPU_NAME-qr
#   SERVICE_ACCOUNT    --service-account    (empty: the Compute Engine default service account)
#   REPO_URL           --repo               this checkout's `origin` remote
#   COMMIT             --commit             this checkout's HEAD (every worker runs exactly this commit)
#   CONFIG             --config             configs/gemma3_270m.py:tpu (none with --openai_job: its model names it)
#   BUCKET             --bucket             (none; a real launch needs BUCKET or WORKDIR; a gs:// prefix is dropped)
#   WORKDIR            --workdir            gs://$BUCKET/rftjax/$TPU_NAME
#   DRY_RUN=1          --dry-run            0   (print the gcloud commands, change nothing)
#
# Paths on the workers are relative to the worker's home directory unless absolute:
#   REPO_DIR=rftjax  VENV=rftjax-venv  LOG_DIR=rftjax-logs  JAX_CACHE_DIR=.cache/rftjax-jax
#   PYTHON_VERSION=3.12 (a uv-managed Python; the TPU images ship 3.10, too old for current JAX)
#   JAX_SPEC="jax[tpu]" (installed together with the repo's requirements.txt)
#   MODEL_URI (empty)  a gs:// folder that setup.sh copies to MODELS_DIR/<its last part> on every worker
#   MODELS_DIR=/mnt/disks/models
#
# The trainer's own flags pass through to `python -m rftjax.train`, as --flag=value or --flag value:
# --config.a.b (a boolean field also alone), --noconfig.a.b, --openai_job, --verbosity, --distributed.

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(dirname "$TPU_DIR")"

# Placeholders keep --dry-run working with no settings; a real run refuses them (see require_set).
PLACEHOLDER_BUCKET="YOUR_BUCKET"
PLACEHOLDER_REPO="https://github.com/YOUR_ORG/rftjax.git"

PROJECT="${PROJECT:-}"
ZONE="${ZONE:-us-west4-a}"
TPU_NAME="${TPU_NAME:-rftjax}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
QUEUED="${QUEUED:-0}"
QR_NAME="${QR_NAME:-}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-}"
REPO_URL="${REPO_URL:-}"
COMMIT="${COMMIT:-}"
CONFIG="${CONFIG:-}"   # resolve_defaults sets DEFAULT_CONFIG unless --openai_job names the config
DEFAULT_CONFIG="configs/gemma3_270m.py:tpu"
BUCKET="${BUCKET:-}"
WORKDIR="${WORKDIR:-}"
DRY_RUN="${DRY_RUN:-0}"
REPO_DIR="${REPO_DIR:-rftjax}"
VENV="${VENV:-rftjax-venv}"
LOG_DIR="${LOG_DIR:-rftjax-logs}"
JAX_CACHE_DIR="${JAX_CACHE_DIR:-.cache/rftjax-jax}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
JAX_SPEC="${JAX_SPEC:-jax[tpu]}"
MODEL_URI="${MODEL_URI:-}"
MODELS_DIR="${MODELS_DIR:-/mnt/disks/models}"
COMMIT_FROM_HEAD=0
TRAIN_ARGS=()   # the trainer's own flags (--config.x=y, --openai_job=F, ...), each one --flag[=value] word
EXTRA_ARGS=()   # script-specific flags, for the script to parse after parse_flags

die() { echo "error: $*" >&2; exit 2; }

# The scripts expand empty arrays under `set -u`, which bash before 4.4 (macOS's /bin/bash is 3.2) calls an unbound
# variable: say what to do instead of that error.
require_bash() {  # MAJOR MINOR: the running bash's version
  (($1 > 4 || ($1 == 4 && $2 >= 4))) && return 0
  die "tpu/*.sh need bash 4.4 or later, this is bash $1.$2; on macOS: brew install bash (it comes first on the PATH" \
    "that \`#!/usr/bin/env bash\` searches), then run the script again"
}
require_bash "${BASH_VERSINFO[0]}" "${BASH_VERSINFO[1]}"
log() { echo "# $*"; }

# Prints one shell word so that it can be pasted back into a shell: bare when safe, else single-quoted.
quote_word() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" != *\'* ]]; then
    printf "'%s'" "$1"
  elif [[ "$1" != *[\"\$\`\\!]* ]]; then
    printf '"%s"' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Quotes a word for the worker's shell inside a --command: bare, "double-quoted" when that needs no
# escapes, else bash's %q. Never single quotes, so the whole --command prints cleanly in single quotes.
rq() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" != *[\"\$\`\\!\']* ]]; then
    printf '"%s"' "$1"
  else
    printf '%q' "$1"
  fi
}

# Prints a command line that can be pasted back into a shell (--flag=value keeps the flag bare).
print_cmd() {
  local sep="" word
  for word in "$@"; do
    printf '%s' "$sep"
    if [[ "$word" =~ ^(--[a-z-]+=)(.*)$ ]]; then
      printf '%s' "${BASH_REMATCH[1]}"; quote_word "${BASH_REMATCH[2]}"
    else
      quote_word "$word"
    fi
    sep=" "
  done
  printf '\n'
}

# Joins words for the worker's shell (see rq).
remote_cmd() {
  local sep="" word
  for word in "$@"; do printf '%s' "$sep"; rq "$word"; sep=" "; done
}

# Runs a command that changes something; under --dry-run only prints it (to stdout, pasteable).
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    print_cmd "$@"
  else
    printf '+ ' >&2; print_cmd "$@" >&2
    "$@"
  fi
}

# Stores a command in CMD instead of running it (a MODE for vm/qr below).
argv() { CMD=("$@"); }

usage_common() {
  cat <<'EOF'
Common flags (each also settable by an environment variable; see tpu/common.sh and tpu/README.md):
  --dry-run                print the gcloud commands instead of running them (needs no gcloud)
  --project P              PROJECT           (default: gcloud's configured project)
  --zone Z                 ZONE              (default: us-west4-a)
  --name N                 TPU_NAME          (default: rftjax)
  --type T                 ACCELERATOR_TYPE  (default: v5litepod-8)
  --version V              RUNTIME_VERSION   (default: matches the accelerator type)
  --spot | --preemptible   SPOT=1 | PREEMPTIBLE=1
  --queued                 QUEUED=1, with --qr-name Q / QR_NAME (default: NAME-qr)
  --service-account SA     SERVICE_ACCOUNT   (default: the Compute Engine default service account)
  --repo URL --commit C    REPO_URL, COMMIT  (default: this checkout's origin and HEAD)
  --config C               CONFIG            (default: configs/gemma3_270m.py:tpu; none with --openai_job)
  --bucket B --workdir W   BUCKET, WORKDIR   (default: gs://BUCKET/rftjax/NAME)
Passed through to python -m rftjax.train (as --flag=value or --flag value):
  --config.a.b=value       a config override (a boolean field also alone: --config.a.b)
  --openai_job=FILE        an OpenAI job file, read on the workers: a path in the repo at COMMIT, or gs://
  --verbosity=N  --distributed=auto|on|off
  -h, --help
EOF
}

# Parses the flags every script shares. Unknown flags land in EXTRA_ARGS for the script to handle.
parse_flags() {
  while (($#)); do
    local flag="$1" value=""
    if [[ "$flag" == --*=* ]]; then value="${flag#*=}"; flag="${flag%%=*}"; fi
    case "$flag" in
      --project|--zone|--name|--type|--version|--qr-name|--service-account|--repo|--commit|--config|--bucket|--workdir)
        if [[ "$1" != *=* ]]; then
          (($# >= 2)) || die "$flag needs a value"
          value="$2"; shift
        fi
        case "$flag" in
          --project) PROJECT="$value" ;;
          --zone) ZONE="$value" ;;
          --name) TPU_NAME="$value" ;;
          --type) ACCELERATOR_TYPE="$value" ;;
          --version) RUNTIME_VERSION="$value" ;;
          --qr-name) QR_NAME="$value" ;;
          --service-account) SERVICE_ACCOUNT="$value" ;;
          --repo) REPO_URL="$value" ;;
          --commit) COMMIT="$value" ;;
          --config) CONFIG="$value" ;;
          --bucket) BUCKET="$value" ;;
          --workdir) WORKDIR="$value" ;;
        esac ;;
      # The trainer's own flags, kept as one --flag=value word each (what the workers' shell gets).
      --config.*)
        if [[ "$1" == *=* ]]; then
          TRAIN_ARGS+=("$1")
        elif (($# >= 2)) && [[ "$2" != --* ]]; then
          TRAIN_ARGS+=("$1=$2"); shift
        else
          TRAIN_ARGS+=("$1")   # a boolean field given alone means True
        fi ;;
      --noconfig.*) TRAIN_ARGS+=("$1") ;;
      --openai_job|--verbosity|--distributed)
        if [[ "$1" != *=* ]]; then
          (($# >= 2)) || die "$flag needs a value"
          value="$2"; shift
        fi
        TRAIN_ARGS+=("$flag=$value") ;;
      --coordinator|--num_processes|--process_id)
        die "$flag: every worker gets the same command, and the hosts of a TPU slice find each other by themselves" ;;
      --dry-run) DRY_RUN=1 ;;
      --spot) SPOT=1 ;;
      --preemptible) PREEMPTIBLE=1 ;;
      --queued) QUEUED=1 ;;
      -h|--help) usage; exit 0 ;;
      *) EXTRA_ARGS+=("$1") ;;
    esac
    shift
  done
  resolve_defaults
}

# The runtime image that goes with each TPU generation (cloud.google.com/tpu/docs/runtimes).
runtime_for() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

# The --openai_job=FILE among the trainer's flags (the last one), or nothing.
openai_job() {
  local arg job=""
  for arg in "${TRAIN_ARGS[@]}"; do [[ "$arg" == --openai_job=* ]] && job="${arg#*=}"; done
  printf '%s' "$job"
}

# The zones known to offer each TPU generation (cloud.google.com/tpu/docs/regions-zones, 2025; tpu/README.md);
# empty when the generation is not listed here. The list changes: it only feeds create.sh's warning.
zones_for() {
  case "$1" in
    v6e-*) echo "us-central1-b us-east1-d us-east5-a us-east5-b europe-west4-a" ;;
    v5p-*) echo "us-central1-a us-east5-a" ;;
    v5litepod-*|v5e-*) echo "us-central1-a us-south1-a us-west1-c us-west4-a europe-west4-b" ;;
    v4-*) echo "us-central2-b" ;;
  esac
}

resolve_defaults() {
  [[ -n "$RUNTIME_VERSION" ]] || RUNTIME_VERSION="$(runtime_for "$ACCELERATOR_TYPE")"
  # With --openai_job and no CONFIG the job's model names the config (docs/openai_jobs.md), so no default.
  [[ -n "$CONFIG" || -n "$(openai_job)" ]] || CONFIG="$DEFAULT_CONFIG"
  BUCKET="${BUCKET#gs://}"   # BUCKET is the bucket's name; gs://NAME is accepted too
  BUCKET="${BUCKET%/}"
  MODEL_URI="${MODEL_URI%/}"
  [[ -z "$MODEL_URI" || "$MODEL_URI" == gs://?*/?* ]] || die "MODEL_URI is '$MODEL_URI': expected gs://BUCKET/FOLDER"
  [[ -n "$QR_NAME" ]] || QR_NAME="$TPU_NAME-qr"
  if [[ -z "$REPO_URL" ]]; then
    REPO_URL="$(git -C "$ROOT_DIR" remote get-url origin 2>/dev/null || echo "$PLACEHOLDER_REPO")"
  fi
  if [[ -z "$COMMIT" ]]; then
    # A full SHA, so every worker (and every relaunch) runs the same code even if a branch moves.
    COMMIT="$(git -C "$ROOT_DIR" rev-parse --verify --quiet HEAD 2>/dev/null || echo main)"
    COMMIT_FROM_HEAD=1
  fi
  [[ -n "$WORKDIR" ]] || WORKDIR="gs://${BUCKET:-$PLACEHOLDER_BUCKET}/rftjax/$TPU_NAME"
  [[ "$SPOT" == 1 && "$PREEMPTIBLE" == 1 ]] && die "choose one of --spot and --preemptible"
  [[ "$QUEUED" == 1 && "$PREEMPTIBLE" == 1 ]] && die "queued resources take --spot, not --preemptible"
  return 0
}

# Setup and supervise run COMMIT, HEAD by default: uncommitted changes here do not reach the workers.
warn_local_changes() {
  if [[ "$COMMIT_FROM_HEAD" == 1 && -n "$(git -C "$ROOT_DIR" status --porcelain 2>/dev/null)" ]]; then
    echo "warning: local changes are not on the workers; they run commit $COMMIT (pushed to $REPO_URL)" >&2
  fi
  return 0
}

# A real (non-dry) run must not go ahead with a placeholder in a setting it needs.
require_set() {
  [[ "$DRY_RUN" == 1 ]] && return 0
  local name
  for name in "$@"; do
    case "${!name}" in
      *YOUR_BUCKET*|*YOUR_ORG*) die "$name is '${!name}': set $name (or BUCKET) in the environment or by flag; see tpu/README.md" ;;
    esac
  done
}

# `vm MODE VERB ARGS...` runs `gcloud compute tpus tpu-vm VERB TPU_NAME --zone=Z [--project=P] ARGS...`
# through MODE (run, or argv to keep it in CMD); `qr` does the same for the queued resource QR_NAME.
vm() {
  local mode="$1" verb="$2"; shift 2
  "$mode" gcloud compute tpus tpu-vm "$verb" "$TPU_NAME" "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"} "$@"
}
qr() {
  local mode="$1" verb="$2"; shift 2
  "$mode" gcloud compute tpus queued-resources "$verb" "$QR_NAME" "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"} "$@"
}

# Sets STATE to the TPU VM's state (READY, CREATING, PREEMPTED, ...), NOT_FOUND, or UNKNOWN when the
# check itself failed (no credentials, network, ...). Read-only. Under --dry-run it prints the check it
# would make and assumes the state given as $1, so the caller goes on to print what it would do.
vm_state() {
  vm argv describe "--format=value(state)"
  _state "VM $TPU_NAME" "$1"
}
# The same for the queued resource (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED, FAILED, ...).
qr_state() {
  qr argv describe "--format=value(state.state)"
  _state "queued resource $QR_NAME" "$1"
}
_state() {
  if [[ "$DRY_RUN" == 1 ]]; then
    STATE="$2"
    log "would check: $(print_cmd "${CMD[@]}")  (dry run assumes: $STATE)"
    return 0
  fi
  local err
  err="$(mktemp)"
  if STATE="$("${CMD[@]}" 2>"$err")" && [[ -n "$STATE" ]]; then
    :
  elif grep -qiE "NOT_FOUND|not found" "$err"; then
    STATE=NOT_FOUND
  else
    # Auth, network, wrong project...: not the same as "it does not exist".
    STATE=UNKNOWN
    echo "warning: could not check $1: $(tail -n 3 "$err")" >&2
  fi
  rm -f "$err"
  log "$1: $STATE" >&2
}

# NAME=value for a command line run by the worker's shell, the value quoted as needed.
assign() { printf '%s=%s' "$1" "$(rq "$2")"; }

# The env prefix every worker.sh call gets, so launch/stop/status agree on where things live.
worker_env() {
  printf '%s %s %s' "$(assign VENV "$VENV")" "$(assign LOG_DIR "$LOG_DIR")" "$(assign JAX_CACHE_DIR "$JAX_CACHE_DIR")"
}

# `on_workers MODE ENV ARGS...`: `ENV bash REPO_DIR/tpu/worker.sh ARGS...` on every worker, through
# MODE (run or argv); ENV is extra NAME=value words (built with assign) or empty.
on_workers() {
  local mode="$1" env="$2"; shift 2
  vm "$mode" ssh --worker=all "--command=${env:+$env }$(worker_env) $(remote_cmd bash "$REPO_DIR/tpu/worker.sh" "$@")"
}
