"""Tests for rftjax.checkpoint: keep policy, round trips, resharding restore, crash leftovers, resume."""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rftjax import checkpoint

METRICS = [0.1, 0.5, 0.3, 0.9, 0.2, 0.7, 0.4, 0.05]


def _step_dirs(directory) -> list[int]:
  """Committed step directories actually on disk (not Orbax's cached view)."""
  return sorted(int(p.name) for p in pathlib.Path(directory).iterdir() if p.name.isdigit())


def _tiny_state(i):
  return {'w': jnp.full((4,), float(i)), 'step': jnp.asarray(i, jnp.int32)}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _assert_same(a, b):
  """Same tree structure, dtypes and values (typed PRNG keys compared through their key data)."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_keeps_best_n_and_latest(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, keep_best=3)
  for step, reward in enumerate(METRICS):
    ckpt.save(step, _tiny_state(step), extra={'pos': step}, metrics={'valid_reward_mean': reward, 'other': 1.0})
  ckpt.wait_until_finished()
  # The 3 best (3: 0.9, 5: 0.7, 1: 0.5) plus the latest (7: 0.05, the worst of all).
  assert _step_dirs(tmp_path) == [1, 3, 5, 7]
  assert ckpt.all_steps() == [1, 3, 5, 7]
  assert ckpt.best_step() == 3 and ckpt.latest_step() == 7
  assert ckpt.metrics(3) == {'valid_reward_mean': 0.9, 'other': 1.0}

  # A final save without metrics: kept as latest, never best; 7 (worst, no longer latest) goes.
  assert ckpt.save(8, _tiny_state(8), extra={'pos': 8})
  ckpt.wait_until_finished()
  assert _step_dirs(tmp_path) == [1, 3, 5, 8]
  assert ckpt.best_step() == 3 and ckpt.latest_step() == 8 and ckpt.metrics(8) is None
  assert ckpt.resolve_step('best') == 3 and ckpt.resolve_step('latest') == 8 and ckpt.resolve_step('5') == 5

  # Another un-evaluated one (e.g. a SIGTERM save between evals): the previous un-evaluated one goes.
  ckpt.save(9, _tiny_state(9), extra={'pos': 9}, metrics=None)
  # Saving an existing step again is a no-op; going back in time needs force=True.
  assert not ckpt.save(9, _tiny_state(99), extra={'pos': 99})
  with pytest.raises(ValueError, match='older than the latest'):
    ckpt.save(4, _tiny_state(4), extra={})
  # A new best pushes out the weakest of the best three.
  ckpt.save(10, _tiny_state(10), extra={'pos': 10}, metrics={'valid_reward_mean': jnp.float32(0.95)})
  ckpt.wait_until_finished()
  assert _step_dirs(tmp_path) == [3, 5, 10]
  assert ckpt.best_step() == 10
  state, extra = ckpt.restore(None, _abstract(_tiny_state(0)))
  assert extra == {'pos': 10} and int(state['step']) == 10

  with pytest.raises(ValueError, match="no 'valid_reward_mean'"):
    ckpt.save(11, _tiny_state(11), extra={}, metrics={'valid/reward_mean': 1.0})
  with pytest.raises(TypeError, match='JSON keys must be str'):
    ckpt.save(11, _tiny_state(11), extra={'rng': {0: 1}})
  ckpt.close()


def test_an_unevaluated_checkpoint_replaced_by_the_last_save_goes_at_close(tmp_path):
  """A SIGTERM's step, then a resume's final evaluated save: Orbax's policy runs before that save commits and
  would keep the unranked step for good (for a 27B run, a whole extra checkpoint in the bucket)."""
  with checkpoint.Checkpointer(tmp_path, keep_best=3) as ckpt:
    ckpt.save(0, _tiny_state(0), extra={}, metrics={'valid_reward_mean': 0.1})
    ckpt.save(1, _tiny_state(1), extra={})  # SIGTERM
  with checkpoint.Checkpointer(tmp_path, keep_best=3) as ckpt:  # the resume
    ckpt.save(4, _tiny_state(4), extra={}, metrics={'valid_reward_mean': 0.05})
    ckpt.wait_until_finished()
    assert _step_dirs(tmp_path) == [0, 1, 4]  # Orbax's view before close
  assert _step_dirs(tmp_path) == [0, 4]
  with checkpoint.Checkpointer(tmp_path, keep_best=3) as ckpt:  # the latest stays, ranked or not
    ckpt.save(5, _tiny_state(5), extra={})
  assert _step_dirs(tmp_path) == [0, 4, 5]


def test_a_step_ranked_after_its_save_is_kept_as_best_and_read_back(tmp_path):
  """A step saved without metrics (its validation cut short) and ranked once the resume has validated it: Orbax's
  keep policy, another process and `extra` see it as if it was saved with them."""
  with checkpoint.Checkpointer(tmp_path, keep_best=1) as ckpt:
    ckpt.save(1, _tiny_state(1), extra={}, metrics={'valid_reward_mean': 0.5})
    ckpt.save(2, _tiny_state(2), extra={'validation_due': True})  # the SIGTERM's save
  with checkpoint.Checkpointer(tmp_path, keep_best=1) as ckpt:  # the resume
    assert ckpt.validation_due(2) and not ckpt.validation_due(1) and ckpt.best_step() == 1
    ckpt.rank(2, {'valid_reward_mean': np.float32(0.75)})
    assert ckpt.metrics(2) == {'valid_reward_mean': 0.75} and ckpt.best_step() == 2
    with pytest.raises(ValueError, match='rank\\(step=2\\): the step has metrics already'):
      ckpt.rank(2, {'valid_reward_mean': 0.8})
    ckpt.save(3, _tiny_state(3), extra={}, metrics={'valid_reward_mean': 0.25})
    ckpt.save(4, _tiny_state(4), extra={}, metrics={'valid_reward_mean': 0.25})
  assert _step_dirs(tmp_path) == [2, 4]  # 1 went when 2 outranked it (unranked, 2 would have gone instead)
  with checkpoint.Checkpointer(tmp_path, read_only=True) as ckpt:
    assert ckpt.metrics(2) == {'valid_reward_mean': 0.75} and ckpt.best_step() == 2
  assert not [p.name for p in (tmp_path / '2' / 'metrics').iterdir() if p.name != 'metrics']  # no temp file left
  shutil.rmtree(tmp_path / '4' / 'metrics')
  shutil.rmtree(tmp_path / '4' / 'extra')  # a partial copy: the question is not this one's to answer
  with checkpoint.Checkpointer(tmp_path, read_only=True) as ckpt:
    assert ckpt.metrics(4) is None and not ckpt.validation_due(4)


def test_on_commit_is_called_once_the_step_is_on_disk_and_never_for_a_failed_save(tmp_path):
  """The trainer's 'Checkpoint created' event was written when the asynchronous save began: a script that acted on it
  found only N.orbax-checkpoint-tmp, and a save that failed next had been said to be created."""
  ckpt = checkpoint.Checkpointer(tmp_path)
  release, seen = threading.Event(), []
  finalize = ckpt._manager._finalize_checkpoint  # the commit, in Orbax's save thread: held here until released

  def held(step):
    assert release.wait(30)
    if step == 2:
      raise OSError(28, 'No space left on device')
    finalize(step)

  ckpt._manager._finalize_checkpoint = held
  on_disk = lambda step: lambda: seen.append((step, _step_dirs(tmp_path)))  # noqa: E731
  ckpt.save(0, _tiny_state(0), extra={}, metrics={'valid_reward_mean': 0.5}, on_commit=on_disk(0))
  ckpt.settle()  # in flight: nothing to say yet
  assert seen == []
  release.set()
  ckpt.save(1, _tiny_state(1), extra={}, on_commit=on_disk(1))  # waits for step 0 first, then says it
  assert seen == [(0, [0])]
  while ckpt._manager.is_saving_in_progress():
    time.sleep(0.01)
  ckpt.settle()  # committed meanwhile: said without a wait
  assert seen == [(0, [0]), (1, [0, 1])]
  ckpt.save(2, _tiny_state(2), extra={}, on_commit=on_disk(2))
  for _ in range(2):  # Orbax raises a failure once; every wait after raises it too
    with pytest.raises(OSError, match='No space left'):
      ckpt.wait_until_finished()
  with pytest.raises(OSError, match='No space left'):
    ckpt.close()
  assert seen == [(0, [0]), (1, [0, 1])]  # step 2 never said


def test_unevaluated_checkpoint_is_never_best(tmp_path, caplog):
  with checkpoint.Checkpointer(tmp_path, keep_best=2) as ckpt, caplog.at_level('WARNING'):
    ckpt.save(0, _tiny_state(0), extra={})  # on purpose, so without Orbax's warning about it
    assert not [r for r in caplog.records if 'metrics' in r.getMessage()], caplog.messages
    assert ckpt.best_step() is None and ckpt.latest_step() == 0
    with pytest.raises(FileNotFoundError, match='no checkpoint has metric'):
      ckpt.resolve_step('best')
    ckpt.save(1, _tiny_state(1), extra={}, metrics={'valid_reward_mean': -3.0})
    ckpt.save(2, _tiny_state(2), extra={}, metrics={'valid_reward_mean': float('nan')})
    ckpt.wait_until_finished()
    assert ckpt.best_step() == 1  # a negative reward beats no evaluation and NaN.


def test_a_checkpoint_of_other_shapes_is_refused_before_any_read(tmp_path):
  params = {'params': {'lora': {'a': jnp.ones((3, 16)), 'b': jnp.ones((16, 2))}}, 'step': jnp.asarray(1)}
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, params, extra={})
  other = {'params': {'lora': {'a': jnp.ones((3, 8)), 'b': jnp.ones((8, 2))}}, 'step': jnp.asarray(1)}
  with checkpoint.Checkpointer(tmp_path, read_only=True) as reader:
    with pytest.raises(ValueError, match=r'/1 into abstract_state failed: params.lora.a: the checkpoint holds shape '
                       r'\(3, 16\), this config expects \(3, 8\)$'):  # fmt: skip
      reader.restore(1, _abstract(other))
    with pytest.raises(ValueError, match=r'/1/state: cannot restore the params .*: params.lora.a: the checkpoint holds '
                       r'shape \(3, 16\), this config expects \(3, 8\)$'):  # fmt: skip
      reader.restore_params(1, _abstract(other['params']))
    with pytest.raises(ValueError, match=r'params.lora.c is not in the checkpoint$'):
      reader.restore_params(1, _abstract({'lora': {**params['params']['lora'], 'c': jnp.ones(2)}}))
    assert reader.restore_params(1, _abstract(params['params']))['lora']['a'][0, :2].tolist() == [1.0, 1.0]


def test_a_checkpoint_copied_in_part_is_damaged_not_another_model(tmp_path):
  """A copy of a run folder cut short lost a step's state metadata: the restore said 'another model or LoRA
  setting', and export 'does the model preset match the run?'."""
  params = {'params': {'lora': {'a': jnp.ones((3, 16))}}, 'step': jnp.asarray(1)}
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, params, extra={})
  (tmp_path / '1' / 'state' / '_METADATA').unlink()
  said = (
    f'{tmp_path}/1: checkpoint 1 is incomplete or damaged (its state metadata cannot be read: a copy cut short?); '
    'copy it again, or delete that folder to use the steps before it'
  )
  with checkpoint.Checkpointer(tmp_path, read_only=True) as reader:
    with pytest.raises(checkpoint.Damaged) as e:
      reader.restore(1, _abstract(params))
    assert str(e.value) == said and not isinstance(e.value, checkpoint.StateMismatch)
    with pytest.raises(checkpoint.Damaged) as e:
      reader.restore_params(1, _abstract(params['params']))
    assert str(e.value) == said


def test_a_step_deleted_while_it_is_read_is_said_to_be_gone(tmp_path):
  """A run still training deletes the steps its keep policy drops: an export or sample reading one got a TypeError."""
  import shutil

  params = {'params': {'lora': {'a': jnp.ones((3, 16))}}, 'step': jnp.asarray(1)}
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, params, extra={}, metrics={'valid_reward_mean': 0.5})
    ckpt.save(2, params, extra={}, metrics={'valid_reward_mean': 0.4})
  with checkpoint.Checkpointer(tmp_path, read_only=True) as reader:
    shutil.rmtree(tmp_path / '1' / 'state')  # between the listing and the read
    with pytest.raises(checkpoint.Gone, match=r'^checkpoint 1 is gone from .*; run the command again$'):
      reader.restore_params(1, _abstract(params['params']))
    real = checkpoint._stored_tree

    def deleted_meanwhile(path):
      shutil.rmtree(tmp_path / '2')
      return real(path)

    checkpoint._stored_tree = deleted_meanwhile
    try:
      with pytest.raises(FileNotFoundError, match=r'^checkpoint 2 is gone from '):
        reader.restore_params(2, _abstract(params['params']))
    finally:
      checkpoint._stored_tree = real
  # Orbax deletes a step's files before its folder: a read that failed midway found the folder still there and
  # said "does the model preset match the run?"
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, params, extra={}, metrics={'valid_reward_mean': 0.5})
  with checkpoint.Checkpointer(tmp_path, read_only=True) as reader:
    for f in (tmp_path / '3' / 'state').iterdir():
      shutil.rmtree(f) if f.is_dir() else f.unlink()
    threading.Timer(0.5, shutil.rmtree, (tmp_path / '3',)).start()
    with pytest.raises(checkpoint.Gone, match=r'^checkpoint 3 is gone from '):
      reader.restore_params(3, _abstract(params['params']))


def _realistic_state():
  params = {
    'embed': jax.random.normal(jax.random.key(0), (16, 8)),
    'layers': {
      'w_dnh': jax.random.normal(jax.random.key(1), (2, 8, 8)).astype(jnp.bfloat16),
      'scale': jnp.ones((2, 8)),
    },
  }
  tx = optax.adamw(1e-2)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, opt_state = tx.update(grads, opt_state, params)  # count=1, non-zero moments.
  params = optax.apply_updates(params, updates)
  return {
    'params': params,
    'opt_state': opt_state,
    'rng': jax.random.key(42),
    'rng_data': jax.random.key_data(jax.random.key(7)),
    'step': jnp.asarray(1, jnp.int32),
  }


def test_round_trip_realistic_state(tmp_path):
  state = _realistic_state()
  expected = jax.tree.map(lambda x: x.copy(), state)
  abstract = _abstract(state)
  extra = {
    'data': {'epoch': 1, 'index': 17},
    'config': {'lr': 1e-2, 'name': 'tiny', 'mesh': [1, 2, 4]},
    'rng': [0, 7],
    'done': False,
    'note': None,
  }
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, extra=extra)
    # Async save has copied the arrays to host before returning: the caller may donate/free them right away.
    jax.tree.map(lambda x: x.delete(), state)
    restored, restored_extra = ckpt.restore(1, abstract)
  _assert_same(restored, expected)
  assert restored_extra == extra
  assert isinstance(restored['opt_state'][0], optax.ScaleByAdamState)
  assert isinstance(restored['opt_state'][0].count, jax.Array) and restored['opt_state'][0].count == 1
  np.testing.assert_array_equal(jax.random.uniform(restored['rng'], (3,)), jax.random.uniform(expected['rng'], (3,)))
  # A target that does not match what was saved fails loudly, naming the checkpoint.
  with checkpoint.Checkpointer(tmp_path, read_only=True) as reader, pytest.raises(ValueError, match='/1 into'):
    reader.restore(1, {'params': abstract['params']})


def test_restore_onto_another_mesh(tmp_path):
  auto = (jax.sharding.AxisType.Auto,) * 3
  mesh = jax.make_mesh((2, 2, 2), ('data', 'fsdp', 'tensor'), axis_types=auto)
  specs = {'w': P(('data', 'fsdp'), 'tensor'), 'b': P('tensor'), 'count': P()}
  values = {
    'w': np.arange(8 * 16, dtype=np.float32).reshape(8, 16),
    'b': np.arange(16, dtype=np.float32),
    'count': np.int32(5),
  }
  state = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in values.items()}
  state['rng'] = jax.device_put(jax.random.key(3), NamedSharding(mesh, P()))
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(0, state, extra={})
    ckpt.wait_until_finished()

    other = jax.make_mesh((1, 2, 4), ('data', 'fsdp', 'tensor'), axis_types=auto)
    single = jax.sharding.SingleDeviceSharding(jax.devices()[3])
    targets = {
      'other_mesh': {
        'w': NamedSharding(other, P('tensor', 'fsdp')),
        'b': NamedSharding(other, P(('fsdp', 'tensor'))),
        'count': NamedSharding(other, P()),
        'rng': NamedSharding(other, P()),
      },
      'single_device': {k: single for k in state},
    }
    for name, shardings in targets.items():
      abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in state.items()}
      restored, _ = ckpt.restore(0, abstract)
      for k, v in values.items():
        np.testing.assert_array_equal(np.asarray(restored[k]), v, err_msg=f'{name}/{k}')
      np.testing.assert_array_equal(jax.random.key_data(restored['rng']), jax.random.key_data(jax.random.key(3)))
      for k in state:
        assert restored[k].sharding == shardings[k], (name, k, restored[k].sharding)


def test_stale_temporary_directory_is_ignored(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(0, _tiny_state(0), extra={'pos': 0}, metrics={'valid_reward_mean': 0.5})
    ckpt.save(1, _tiny_state(1), extra={'pos': 1})
  # What a crash mid-save leaves behind: a partial copy under Orbax's temporary name (no commit marker, half of
  # the arrays), plus an empty one in the older timestamped naming.
  tmp_dir = tmp_path / '2.orbax-checkpoint-tmp'
  shutil.copytree(tmp_path / '1', tmp_dir)
  for name in ('commit_success.txt', '_CHECKPOINT_METADATA', 'extra'):
    target = tmp_dir / name
    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
  (tmp_path / '3.orbax-checkpoint-tmp-1763900000123456').mkdir()

  # A read-only reader (e.g. export while training runs) skips them and deletes nothing.
  with checkpoint.Checkpointer(tmp_path, read_only=True) as reader:
    assert reader.all_steps() == [0, 1] and reader.latest_step() == 1 and reader.best_step() == 0
    state, extra = reader.restore(None, _abstract(_tiny_state(0)))
    assert extra == {'pos': 1} and int(state['step']) == 1
    with pytest.raises(PermissionError):
      reader.save(5, _tiny_state(5), extra={})
  assert tmp_dir.exists()

  # A writer (the resumed run) sees the same steps, and can write step 2 over the leftover.
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 1
    ckpt.save(2, _tiny_state(2), extra={'pos': 2})
    ckpt.wait_until_finished()
    state, extra = ckpt.restore(2, _abstract(_tiny_state(0)))
    assert extra == {'pos': 2} and int(state['step']) == 2
  leftovers = [p.name for p in tmp_path.iterdir() if 'tmp' in p.name]
  assert leftovers == [], leftovers


_CRASHING_RUN = textwrap.dedent("""
    import os, pathlib, sys, time
    import jax.numpy as jnp
    from rftjax import checkpoint
    ckpt = checkpoint.Checkpointer(sys.argv[1])
    ckpt.save(0, {'w': jnp.zeros((4,))}, extra={'pos': 0})
    ckpt.wait_until_finished()
    ckpt.save(1, {'w': jnp.ones((8192, 4096))}, extra={'pos': 1})  # 128 MB: still writing when we die.
    writing, t0 = pathlib.Path(sys.argv[1], '1.orbax-checkpoint-tmp'), time.monotonic()
    while not writing.exists() and time.monotonic() - t0 < 30:  # its folder is made in Orbax's thread: under load
      time.sleep(0.005)  # the exit came before it
    os._exit(3)
""")


def test_process_killed_mid_save_leaves_previous_checkpoint_usable(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(pathlib.Path(__file__).resolve().parents[1])}
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run(
    [sys.executable, '-c', _CRASHING_RUN, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert (tmp_path / '1.orbax-checkpoint-tmp').exists(), sorted(p.name for p in tmp_path.iterdir())
  with checkpoint.Checkpointer(tmp_path, read_only=True) as reader:
    assert reader.all_steps() == [0]
    state, extra = reader.restore(None, {'w': jax.ShapeDtypeStruct((4,), jnp.float32)})
  assert extra == {'pos': 0} and float(state['w'][0]) == 0.0


def test_fresh_checkpointer_resumes_existing_directory(tmp_path):
  with checkpoint.Checkpointer(tmp_path, keep_best=2) as ckpt:
    for step, reward in enumerate(METRICS[:4]):  # 0.1 0.5 0.3 0.9
      ckpt.save(step, _tiny_state(step), extra={'pos': step}, metrics={'valid_reward_mean': reward})
  assert _step_dirs(tmp_path) == [1, 3]

  ckpt = checkpoint.Checkpointer(str(tmp_path), keep_best=2)  # after a process restart
  assert ckpt.all_steps() == [1, 3] and ckpt.latest_step() == 3 and ckpt.best_step() == 3
  assert ckpt.metrics(1) == {'valid_reward_mean': 0.5}
  state, extra = ckpt.restore(None, _abstract(_tiny_state(0)))
  assert extra == {'pos': 3} and float(state['w'][0]) == 3.0
  # The keep policy still ranks the old steps: a new 0.7 evicts step 1 (0.5), not step 3 (0.9).
  ckpt.save(4, _tiny_state(4), extra={'pos': 4}, metrics={'valid_reward_mean': 0.7})
  ckpt.close()
  assert _step_dirs(tmp_path) == [3, 4]
