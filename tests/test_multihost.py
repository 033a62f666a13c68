"""Multi-host on one machine: 2 processes x 4 fake CPU devices (jax.distributed over 127.0.0.1, gloo collectives)
train the tiny config exactly like 1 process x 8 devices with the same mesh (data=1, fsdp=8, tensor=1).

What the trainer must do for this to hold: each process samples and grades only its own rows (its slice of the
global batch, `DataIterator(process_index=, process_count=)`), builds global arrays with
`jax.make_array_from_process_local_data`, reduces train metrics across processes before process 0 writes
metrics.jsonl, and every process takes part in checkpoint saves (Orbax coordinates the writes).
Tolerances: rewards exactly; loss/entropy/grad_norm 1e-4 relative; params 1e-4 absolute (same mesh and program:
only the collectives' transport differs).
"""
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from rftjax import checkpoint
from rftjax import metrics
from rftjax import model
from rftjax import train_step
from rftjax import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
COMPARED = ('train_reward_mean', 'train_reward_std', 'loss', 'entropy', 'grad_norm', 'completion_len_mean')
OVERRIDES = {'eval_batch_size': 8, 'checkpoint.async_save': False}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def small_valid(directory: pathlib.Path) -> str:
  path = directory / 'valid_small.jsonl'
  path.write_text(''.join((REPO / 'data/tiny/valid.jsonl').read_text().splitlines(True)[:8]))
  return str(path)


def params_of(workdir):
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  cfg = model.TransformerConfig.tiny(vocab_size=32)
  tx = train_step.make_optimizer(tiny.get_config().optimizer, 1)
  state, _ = ckpt.restore(None, train_step.abstract_state(train_step.init_state(model.init_params(cfg), tx)))
  step = ckpt.latest_step()
  ckpt.close()
  return step, jax.device_get(state['params'])


def launch(workdir, valid, process_id, port, num_processes=2):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=str(REPO / '.cache' / 'jax-multihost'), PYTHONPATH=str(REPO))
  cmd = [sys.executable, '-m', 'rftjax.train', f'--coordinator=127.0.0.1:{port}',
         f'--num_processes={num_processes}', f'--process_id={process_id}', '--config=configs/tiny.py:test',
         f'--workdir={workdir}', f'--config.data.valid={valid}']
  cmd += [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  log = open(workdir.parent / f'process{process_id}.log', 'w')
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, monkeypatch):
  valid = small_valid(tmp_path)
  port = free_port()
  multi = tmp_path / 'multi'
  multi.mkdir()
  procs = [launch(multi, valid, i, port) for i in range(2)]
  try:
    codes = [p.wait(timeout=420) for p, _ in procs]
  finally:
    for p, log in procs:
      if p.poll() is None:
        p.kill()
      log.close()
  logs = '\n'.join((tmp_path / f'process{i}.log').read_text()[-3000:] for i in range(2))
  assert codes == [0, 0], logs

  # the same config in this process, 8 devices, same mesh
  monkeypatch.chdir(REPO)
  c = tiny.get_config('test').copy_and_resolve_references()
  c.data.valid = valid
  c.eval_batch_size = 8
  c.checkpoint.async_save = False
  single = tmp_path / 'single'
  trainer.train(c, single)

  rows_m = [r for r in metrics.read_jsonl(multi / 'metrics.jsonl') if 'train_reward_mean' in r]
  rows_s = [r for r in metrics.read_jsonl(single / 'metrics.jsonl') if 'train_reward_mean' in r]
  assert [r['step'] for r in rows_m] == [r['step'] for r in rows_s] == [1, 2, 3], logs
  for a, b in zip(rows_s, rows_m):
    assert b['train/num_graded'] == a['train/num_graded'] == 16  # the global batch, not one host's half
    for key in COMPARED:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=f'step {a["step"]} {key}')
  evals_m = [r['valid_reward_mean'] for r in metrics.read_jsonl(multi / 'metrics.jsonl') if 'valid_reward_mean' in r]
  evals_s = [r['valid_reward_mean'] for r in metrics.read_jsonl(single / 'metrics.jsonl') if 'valid_reward_mean' in r]
  assert evals_m == evals_s

  step_m, params_m = params_of(multi)
  step_s, params_s = params_of(single)
  assert step_m == step_s == 3
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params_s), jax.tree.leaves(params_m)):
    np.testing.assert_allclose(b, a, atol=1e-4, err_msg=jax.tree_util.keystr(path))
