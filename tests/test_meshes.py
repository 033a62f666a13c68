"""The same tiny training on four meshes of the 8 fake devices, and a checkpoint carried from one mesh to another.

Sharding changes only the order of floating-point reductions, so losses agree to ~1e-6 and AdamW turns that into
small parameter differences (docs/platform.md). Tolerances below: rewards and completions exactly (same samples:
the RNG is sharding-invariant), loss/entropy/grad_norm to 1e-4 relative, params to 3e-5 absolute after 2-3 steps
at the config's learning rate (warmup: 6e-5, 1.2e-4, 1.8e-4), which move them by 1.8e-4 in 2 steps (measured: the
meshes differed by 4e-6). The config's seed is 1: with seed 0 its first three steps earned no reward, nothing
trained, and every comparison was of the initial weights.
"""

import pathlib
import shutil

import jax
import numpy as np
import pytest

from configs import tiny
from rftjax import checkpoint
from rftjax import metrics
from rftjax import model
from rftjax import presets
from rftjax import train_step
from rftjax import trainer

pytestmark = pytest.mark.slow  # 5 tiny trainings: ~90 s on 2 idle cores with a warm compilation cache

REPO = pathlib.Path(__file__).resolve().parents[1]
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]
REFERENCE = MESHES[0]
PARAM_ATOL = 3e-5
SEED = tiny.get_config('test').seed
METRIC_RTOL = 1e-4
COMPARED = ('train_reward_mean', 'loss', 'entropy', 'grad_norm', 'completion_len_mean')


def small_valid(directory: pathlib.Path, lines: int = 8) -> str:
  """A short validation file: the eval at step 0 and at the end costs little and compiles a small program."""
  path = directory / 'valid_small.jsonl'
  if not path.exists():
    path.write_text(''.join((REPO / 'data/tiny/valid.jsonl').read_text().splitlines(True)[:lines]))
  return str(path)


def make_config(mesh, steps, valid):
  c = tiny.get_config('test').copy_and_resolve_references()  # unlocked copy; test: batch 4 x 4 generations
  c.total_steps = steps
  c.eval_interval = 2
  c.data.valid = valid
  c.eval_batch_size = 8
  c.checkpoint.async_save = False
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


def train_rows(workdir):
  return [r for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'train_reward_mean' in r]


def final_params(workdir):
  """The latest checkpoint's params, restored onto one device whatever mesh wrote them."""
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  cfg = presets.tiny(vocab_size=32)  # tiny's tokenizer has 32 pieces
  tx = train_step.make_optimizer(tiny.get_config().optimizer, 1)
  state = train_step.init_state(model.init_params(cfg), tx)
  state, _ = ckpt.restore(None, train_step.abstract_state(state))
  ckpt.close()
  return ckpt.latest_step(), jax.device_get(state['params'])


def assert_same_run(a, b, steps):
  ra, rb = train_rows(a)[:steps], train_rows(b)[:steps]
  assert [r['step'] for r in ra] == [r['step'] for r in rb] == list(range(1, steps + 1))
  assert all(x['grad_norm'] > 0.1 for x in ra), [x['grad_norm'] for x in ra]  # each step trained: a real comparison
  for x, y in zip(ra, rb):
    for key in COMPARED:
      np.testing.assert_allclose(y[key], x[key], rtol=METRIC_RTOL, atol=1e-6, err_msg=f'step {x["step"]} {key}')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Reference mesh for 3 steps (a checkpoint at step 2 and 3), the other meshes for 2 steps."""
  root = tmp_path_factory.mktemp('meshes')
  mp = pytest.MonkeyPatch()
  mp.chdir(REPO)  # configs use repo-relative paths
  valid = small_valid(root)
  out = {}
  try:
    for mesh in MESHES:
      workdir = root / '_'.join(map(str, mesh))
      trainer.train(make_config(mesh, 3 if mesh == REFERENCE else 2, valid), workdir)
      out[mesh] = workdir
  finally:
    mp.undo()
  out['root'], out['valid'] = root, valid
  return out


@pytest.mark.parametrize('mesh', MESHES[1:], ids=lambda m: 'x'.join(map(str, m)))
def test_mesh_gives_the_same_training(runs, mesh):
  assert_same_run(runs[REFERENCE], runs[mesh], steps=2)
  ref_ckpt = checkpoint.Checkpointer(runs[REFERENCE] / 'checkpoints', read_only=True)
  assert 2 in ref_ckpt.all_steps()
  ref_ckpt.close()
  step, params = final_params(runs[mesh])
  assert step == 2
  # the reference's step-2 params: restore that step explicitly
  ckpt = checkpoint.Checkpointer(runs[REFERENCE] / 'checkpoints', read_only=True)
  cfg = presets.tiny(vocab_size=32)
  tx = train_step.make_optimizer(tiny.get_config().optimizer, 1)
  state, _ = ckpt.restore(2, train_step.abstract_state(train_step.init_state(model.init_params(cfg), tx)))
  ckpt.close()
  ref = jax.device_get(state['params'])
  init = jax.device_get(model.init_params(cfg, SEED))
  moved = 0.0
  for (path, a), b, a0 in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(params), jax.tree.leaves(init)):
    np.testing.assert_allclose(b, a, atol=PARAM_ATOL, err_msg=jax.tree_util.keystr(path))
    moved = max(moved, float(np.abs(a - a0).max()))
  assert moved > 5 * PARAM_ATOL  # the steps moved the weights by more than the tolerance: a mesh that dropped an
  # update (or applied it on some shards only) is caught


def test_checkpoint_from_one_mesh_resumes_on_another(runs, monkeypatch):
  """2 steps on (2, 2, 2), then the same workdir resumed to 3 steps on (1, 2, 4): equals 3 steps on (8, 1, 1)."""
  workdir = runs['root'] / 'resumed'
  shutil.copytree(runs[(2, 2, 2)], workdir)
  monkeypatch.chdir(REPO)
  trainer.train(make_config((1, 2, 4), 3, runs['valid']), workdir)
  rows = train_rows(workdir)
  assert [r['step'] for r in rows] == [1, 2, 3]
  assert_same_run(runs[REFERENCE], workdir, steps=3)
  step, params = final_params(workdir)
  ref_step, ref = final_params(runs[REFERENCE])
  assert step == ref_step == 3
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(params)):
    np.testing.assert_allclose(b, a, atol=PARAM_ATOL)
