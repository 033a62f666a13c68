"""Entry point: python -m rftjax.train --config=configs/tiny.py --workdir=runs/tiny [--config.x=y ...]

Running the same command again resumes from the workdir's latest checkpoint; raising --config.total_steps
continues a finished run.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file (configs/*.py[:arg]).', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Run directory (a local path or gs://bucket/path): checkpoints, metrics.jsonl, samples.'
)
_DISTRIBUTED = flags.DEFINE_enum(
  'distributed',
  'auto',
  ['auto', 'on', 'off'],
  'jax.distributed.initialize(): auto = when running on a multi-host TPU VM or when --coordinator is given.',
)
_COORDINATOR = flags.DEFINE_string('coordinator', None, 'host:port of process 0 (multi-process without a TPU VM).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index (with --coordinator).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s', stream=sys.stderr)
  import jax
  from rftjax import data, distributed, graders, preemption, runfs, trainer

  distributed.maybe_initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  cache_dir = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if not cache_dir:  # next to the run; for a gs:// run on the VM's disk, where a cache lookup costs no round trip
    cache_dir = (
      os.path.join(os.path.expanduser('~/.cache/rftjax'), 'jax_cache')
      if runfs.is_remote(_WORKDIR.value)
      else os.path.join(_WORKDIR.value, '.jax_cache')
    )
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  try:
    trainer.train(_CONFIG.value, _WORKDIR.value)
  except preemption.Preempted as e:
    logging.warning('%s', e)
    sys.exit(preemption.EXIT_CODE)
  except (trainer.ConfigError, data.DataError, graders.GraderConfigError) as e:
    logging.error('%s', e)  # bad input: the message names the file, line, field or key; a traceback adds nothing
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
