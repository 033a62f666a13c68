#!/usr/bin/env bash
# Starts `python -m rftjax.train` on every worker with the same command, in the background under nohup
# (logs in LOG_DIR/train.log on each worker), so it survives the ssh session. Safe to re-run: a worker
# whose trainer is still running is left alone. The trainer resumes from WORKDIR by itself.
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: tpu/launch.sh [--dry-run] [--config configs/X.py:arg] [--workdir gs://B/rftjax/NAME] [--config.a.b=v ...]
                     [--openai_job=FILE] [--verbosity=N]
Run python -m rftjax.train --config=CONFIG --workdir=WORKDIR [trainer flags] on all workers (tpu/worker.sh start).
The trainer runs in the workers' checkout of COMMIT: a relative --openai_job path (and the job's relative
training_file / validation_file) is read there, so commit and push it, or give a gs:// path.
JAX_COMPILATION_CACHE_DIR is set to JAX_CACHE_DIR (default ~/.cache/rftjax-jax on each worker).
USAGE
  usage_common
}
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#EXTRA_ARGS[@]} == 0)) || die "unknown argument: ${EXTRA_ARGS[0]} (see --help)"
require_set WORKDIR

if [[ "$WORKDIR" != gs://* && ("$SPOT" == 1 || "$PREEMPTIBLE" == 1 || "$QUEUED" == 1) ]]; then
  echo "warning: WORKDIR $WORKDIR is on the VM's disk, which a preemption deletes: use gs:// to resume" >&2
fi
# The workers read a relative job path in their checkout of COMMIT, not here.
job="$(openai_job)"
if [[ -n "$job" && "$job" != gs://* && "$job" != /* ]] \
  && ! git -C "$ROOT_DIR" cat-file -e "$COMMIT:${job#./}" 2>/dev/null; then
  echo "warning: --openai_job=$job is not in commit $COMMIT; the workers read it from their checkout of that commit" \
    "(relative to the repo root): commit and push it, or give a gs:// path" >&2
fi
# EXPECT_COMMIT makes a worker refuse to start on a checkout other than COMMIT (when COMMIT is a SHA).
on_workers run "$(assign EXPECT_COMMIT "$COMMIT")" start \
  ${CONFIG:+"--config=$CONFIG"} "--workdir=$WORKDIR" "${TRAIN_ARGS[@]}"
