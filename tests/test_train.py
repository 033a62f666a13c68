"""Train step and loop: sharded == single device, resume == uninterrupted, the CLI contract of metrics.jsonl."""

import collections
import contextlib
import dataclasses
import json
import pathlib
import re
import shutil
import types

import jax
import jax.numpy as jnp
import ml_collections
import optax
import numpy as np
import pytest

from configs import tiny
from rftjax import cli
from rftjax import errors
from rftjax import graders
from rftjax import grpo
from rftjax import inference
from rftjax import lora
from rftjax import metrics
from rftjax import model
from rftjax import report
from rftjax import multihost
from rftjax import presets
from rftjax import resume
from rftjax import sampler
from rftjax import sharding
from rftjax import train_step
from rftjax import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
LORA = lora.LoRAConfig(rank=4, alpha=8.0)
CFG = presets.tiny(vocab_size=64)
OPT = ml_collections.ConfigDict(
  dict(learning_rate=1e-3, warmup_steps=0, schedule='constant', b1=0.9, b2=0.99, weight_decay=0.01, max_grad_norm=1.0)
)


def make_batch(rows=8, p=5, n=4, seed=0, group=1, lengths=None, pack=False, part=1) -> train_step.Batch:
  """`group` > 1: rows in consecutive groups of that many identical prompts, marked as such (GRPO's batches);
  `pack`: their completions packed into rows (train_step.pack_completions), those of `part` consecutive groups
  sharing rows. `lengths`: each completion's tokens (default: all n, rows 1 and 5 stopped early)."""
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(3, CFG.vocab_size, rng.integers(2, p + 1))) for _ in range(rows // group)]
  prompts = [prompt for prompt in prompts for _ in range(group)]
  tokens, mask = sampler.pad_prompts(prompts, p, 0)
  if lengths is None:
    lengths = np.full(rows, n)
    lengths[1], lengths[5] = 2, 1  # stopped early: padding must not count
  completion_mask = (np.arange(n)[None] < np.asarray(lengths)[:, None]).astype(np.float32)
  row, start, rows_needed = train_step.pack_completions(train_step.pack_lengths(completion_mask), group * part, n - 1)
  return train_step.Batch(
    prompt_tokens=tokens,
    prompt_mask=mask,
    completion_tokens=rng.integers(3, CFG.vocab_size, (rows, n)).astype(np.int32),
    completion_mask=completion_mask,
    advantages=rng.normal(size=rows).astype(np.float32),
    sampler_logp=-rng.uniform(1, 5, (rows, n)).astype(np.float32),
    pack_row=row if pack else None,
    pack_start=start if pack else None,
    group_size=group,
    pack_rows=rows_needed if pack else 0,
    pack_groups=part if pack else 1,
  )


def one_step(mesh, batch=None, cfg=CFG, microbatches=1):
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    params = model.init_params(cfg, 0, mesh)
    tx = train_step.make_optimizer(OPT, 10)
    state = train_step.init_state(params, tx)
    step_cfg = train_step.StepConfig(cfg, grpo.LossConfig.dapo(), microbatches=microbatches)
    step = train_step.make_train_step(step_cfg, tx)
    batch = make_batch() if batch is None else batch
    state, m = step(state, jax.tree.map(lambda x: multihost.to_global(mesh, x), batch))
    return state, jax.device_get(m)


@pytest.mark.parametrize('group,part', [(1, 1), (4, 1), (2, 2)])
def test_sharded_step_equals_single_device(group, part):
  """group 4: shared prompts, each group's 4 completions packed into 2 rows (data-parallel over 2 groups); group 2,
  part 2: two parts of two groups whose 4 completions share 2 rows, each row reading both groups' prompts."""
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  batch = make_batch(group=group, lengths=[4, 2, 1, 3, 4, 1, 2, 2], pack=group > 1, part=part)
  assert batch.pack_rows == (2 if group > 1 else 0)
  if part > 1:  # the first part's rows hold completions of both its groups
    assert set(np.asarray(batch.pack_row)[:2]) & set(np.asarray(batch.pack_row)[2:4])
  sharded, m8 = one_step(mesh, batch)
  single, m1 = one_step(None, batch)
  q = sharded['params']['layers']['attn']['q']
  want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, 'fsdp', 'tensor'))
  assert q.sharding.is_equivalent_to(want, q.ndim)
  # every leaf as init_state placed it (the norm scales came back sharded over fsdp: a second compile of the step)
  with jax.set_mesh(mesh):
    placed = train_step.init_state(model.init_params(CFG, 0, mesh), train_step.make_optimizer(OPT, 10))
  for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(sharded)):
    assert a.sharding == b.sharding, (a.sharding, b.sharding)
  mu = sharded['opt_state'][1][0].mu['layers']['attn']['q']  # Adam moments follow the params' sharding
  assert mu.sharding.spec == q.sharding.spec
  np.testing.assert_allclose(m8['loss'], m1['loss'], atol=1e-5)
  np.testing.assert_allclose(m8['grad_norm'], m1['grad_norm'], rtol=1e-5)
  assert abs(float(m1['loss'])) > 1e-3  # a real, non-trivial loss
  for a, b in zip(
    jax.tree.leaves(jax.device_get(sharded['params'])), jax.tree.leaves(jax.device_get(single['params']))
  ):
    # Adam's first update is about lr * sign(gradient): an element whose gradient is ~0 can move by up to lr
    # (1e-3) on float rounding alone; measured 4e-5 (rows) and 1.8e-4 (shared prompts) at most
    np.testing.assert_allclose(a, b, atol=5e-4)


def test_step_gradient_moves_logprob_of_positive_advantage_up():
  batch = make_batch()
  params = model.init_params(CFG, 0)
  tx = train_step.make_optimizer(OPT, 10)
  step = train_step.make_train_step(train_step.StepConfig(CFG, grpo.LossConfig.dapo()), tx)
  before = np.asarray(train_step.token_logprobs(params, CFG, batch, 1.0))
  state, _ = step(train_step.init_state(jax.tree.map(jnp.copy, params), tx), batch)
  after = np.asarray(train_step.token_logprobs(state['params'], CFG, batch, 1.0))
  delta = ((after - before) * batch.completion_mask).sum(1)
  adv = batch.advantages
  assert np.corrcoef(delta, adv)[0, 1] > 0.8


GEMMA_LIKE = dataclasses.replace(
  CFG, name='gemma_like', family='gemma3', sliding_window=6, global_every=2, qk_norm=True, post_norms=True,
  norm_offset=1.0, embed_scale=True, rope_base_local=10_000.0, activation='gelu_tanh',
)  # fmt: skip


@pytest.fixture
def grouped_calls(monkeypatch):
  """The number of forward passes (traces, under jit) that computed each group's prompt once."""
  calls = []
  real = model.forward_grouped
  monkeypatch.setattr(model, 'forward_grouped', lambda *a, **kw: calls.append(1) or real(*a, **kw))
  return calls


def test_pack_completions_first_fit_decreasing():
  """Each group's completions go longest first into the first row of the width with room; a completion with no
  loss tokens takes no room. The loss extent ends at the last loss token, past a masked-out tool result."""
  mask = np.zeros((8, 10), np.float32)
  for i, length in enumerate([6, 4, 3, 7, 10, 0, 1, 9]):
    mask[i, :length] = 1
  mask[2, 1] = 0  # a tool result inside the completion: still computed, not in the loss
  extents = train_step.loss_extent(mask)
  np.testing.assert_array_equal(extents, [6, 4, 3, 7, 10, 0, 1, 9])
  np.testing.assert_array_equal(train_step.pack_lengths(mask), [5, 3, 2, 6, 9, 0, 0, 8])  # the last one: no input
  row, start, rows = train_step.pack_completions(extents, 4, 10)
  # group 1 (7, 6, 4, 3): 7 -> row 0, 6 -> row 1, 4 -> row 1 at 6, 3 -> row 0 at 7
  # group 2 (10, 9, 1, 0): 10 -> row 0, 9 -> row 1, 1 -> row 1 at 9, 0 -> row 0 at 10 (nothing)
  np.testing.assert_array_equal(row, [1, 1, 0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(start, [0, 6, 7, 0, 0, 10, 9, 0])
  assert rows == 2
  assert train_step.pack_completions(extents, 4, 12)[2] == 2 and train_step.pack_completions(extents, 2, 17)[2] == 1


@pytest.mark.parametrize(
  'cfg', [CFG, GEMMA_LIKE, dataclasses.replace(CFG, lora=LORA)], ids=['tiny', 'gemma_like', 'lora']
)
def test_shared_prompts_give_the_per_row_logprobs(cfg, grouped_calls):
  """A batch whose prompts are computed once per group (model.forward_grouped), with each group's completions in
  rows of their own or packed several to a row, gives the logprobs and entropies of one forward per row: prompts
  of different lengths, a sliding window that reaches from the completion into the prompt (window 6 < prompt +
  completion) and across packed neighbours, LoRA adapters, a completion with no loss tokens."""
  params = model.init_params(cfg, 3)
  if cfg.lora:  # fresh adapters are zero in B: give them a value, so the test sees them
    params['lora'] = jax.tree.map(lambda x: x + 0.05, params['lora'])
  lengths = [9, 2, 5, 4, 0, 9, 3, 6, 1, 7, 2, 8]
  per_row = make_batch(rows=12, p=7, n=9, seed=4, group=4, lengths=lengths).replace(group_size=1)
  packed = make_batch(rows=12, p=7, n=9, seed=4, group=4, lengths=lengths, pack=True)
  assert packed.pack_rows == 2 and (np.asarray(per_row.prompt_mask).sum(1) < 7).any()  # packed; left-padded
  # the three groups as one part: rows shared across groups, each token keeping to its own prompt
  across = make_batch(rows=12, p=7, n=9, seed=4, group=4, lengths=lengths, pack=True, part=3)
  row = np.asarray(across.pack_row).reshape(3, 4)
  assert across.pack_rows == 6 and len(set(row[0]) & set(row[1])) + len(set(row[1]) & set(row[2])) > 0
  mask = per_row.completion_mask

  def stats(batch):
    return [np.asarray(x) * mask for x in train_step.completion_stats(params, cfg, batch)]

  want = stats(per_row)
  assert not grouped_calls
  for batch in (per_row.replace(group_size=4), packed, across):  # one row per completion; packed; across groups
    got = stats(batch)
    np.testing.assert_allclose(got[0], want[0], atol=2e-5)
    np.testing.assert_allclose(got[1], want[1], atol=2e-5)
  assert len(grouped_calls) == 3  # the prompts really were computed once per group
  assert np.abs(want[0]).max() > 0.1 and np.abs(want[1]).max() > 0.1


def test_one_token_completions_need_no_completion_stream(grouped_calls):
  """Completions of one token (the digit demo's answers) are all predicted from their prompt's last position: the
  packed rows are 0 tokens wide, and the logprobs are those of one forward per row."""
  params = model.init_params(CFG, 2)
  packed = make_batch(rows=8, n=1, group=4, lengths=[1, 1, 0, 1, 1, 1, 1, 1], pack=True)
  per_row = packed.replace(group_size=1)
  want = np.asarray(train_step.token_logprobs(params, CFG, per_row, 1.0))
  got = np.asarray(train_step.token_logprobs(params, CFG, packed, 1.0))
  assert len(grouped_calls) == 1 and got.shape == (8, 1)
  np.testing.assert_allclose(got[[0, 1, 3, 4, 5, 6, 7]], want[[0, 1, 3, 4, 5, 6, 7]], atol=2e-5)
  assert got[2, 0] == 0.0 and np.abs(want).max() > 0.1  # no loss token: left out


def test_shared_prompts_train_as_per_row_with_microbatches(grouped_calls):
  """The same update from a packed shared-prompt batch as from its rows one by one, whole and in two microbatches
  (each taking whole groups, or whole parts of two groups sharing rows); 2 microbatches of 3 groups of 4 rows, or
  of one part of two groups, cannot keep them whole and fall back to rows."""
  cases = [(8, 1, True, 1), (8, 2, True, 1), (12, 2, False, 1), (16, 2, True, 2), (8, 2, False, 2)]
  for rows, k, shared, part in cases:  # rows, microbatches, groups kept, groups per part
    lengths = np.random.default_rng(rows).integers(0, 5, rows)
    batch = make_batch(rows=rows, group=4, lengths=lengths, pack=True, part=part)
    assert batch.pack_rows < 4 * part
    want_state, want = one_step(None, batch.replace(group_size=1))  # the whole batch at once, row by row
    grouped_calls.clear()
    state, got = one_step(None, batch, microbatches=k)
    assert bool(grouped_calls) == shared, (rows, k)
    np.testing.assert_allclose(got['loss'], want['loss'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got['grad_norm'], want['grad_norm'], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state['params']), jax.tree.leaves(want_state['params'])):
      np.testing.assert_allclose(a, b, atol=5e-4)  # Adam: see test_sharded_step_equals_single_device


@pytest.mark.parametrize('temperature', [1.0, 0.7])
@pytest.mark.parametrize('softcap', [None, 3.0])
def test_completion_logprobs_match_the_sampler(temperature, softcap):
  """The trainer's recomputed logprobs equal the sampler's for the same tokens (same positions, masks), at the
  sampling temperature (which the trainer folds into the unembedding's input unless a softcap comes after it)."""
  cfg = dataclasses.replace(CFG, final_softcap=softcap)
  params = model.init_params(cfg, 1)
  prompts = [[5, 6, 7, 8], [9, 10]]
  tokens, mask = sampler.pad_prompts(prompts, 4, 0)
  s = sampler.Sampler(cfg, 4, 6, stop_ids=(3,), pad_id=0, params=sampler.SamplingParams(temperature=temperature))
  out = s(params, tokens, mask, jax.random.key(2))
  batch = train_step.Batch(tokens, mask, out.tokens, out.mask, jnp.zeros(2), out.logprobs)
  logp = train_step.token_logprobs(params, cfg, batch, temperature)
  np.testing.assert_allclose(np.asarray(logp) * out.mask, np.asarray(out.logprobs), atol=2e-5)
  [(hidden, targets)], _ = train_step.completion_hidden(params, cfg, batch)
  want = grpo.token_logprobs(model.unembed(params, cfg, hidden), targets, temperature)  # the division after them
  np.testing.assert_allclose(np.asarray(logp), np.asarray(want), atol=1e-5)
  if temperature != 1.0:  # the temperature really reaches the logprobs
    assert np.abs(np.asarray(logp - train_step.token_logprobs(params, cfg, batch, 1.0))).max() > 1e-3


def test_config_field_names_are_stable():
  c = tiny.get_config()
  for key in (
    'model',
    'init',
    'data.train',
    'data.valid',
    'grader',
    'total_steps',
    'batch_size',
    'num_generations',
    'sampling.temperature',
    'sampling.top_p',
    'sampling.top_k',
    'sampling.max_new_tokens',
    'grpo.beta',
    'grpo.epsilon',
    'grpo.epsilon_high',
    'grpo.num_iterations',
    'optimizer.learning_rate',
    'eval_interval',
    'checkpoint.keep_best',
    'mesh.data',
    'mesh.fsdp',
    'mesh.tensor',
    'seed',
  ):
    node = c
    for part in key.split('.'):
      node = node[part]


def run(tmp_path, name, steps, **overrides):
  c = tiny.get_config('test')
  c.total_steps = steps
  for k, v in overrides.items():
    node = c
    *path, last = k.split('.')
    for part in path:
      node = node[part]
    node[last] = v
  workdir = tmp_path / name
  trainer.train(c, workdir)
  return workdir


@pytest.fixture
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


def _full_state(folder, step):
  from rftjax import checkpoint

  tx = train_step.make_optimizer(tiny.get_config().optimizer, 1)
  abstract = train_step.abstract_state(train_step.init_state(model.init_params(presets.tiny(vocab_size=32)), tx))
  with checkpoint.Checkpointer(folder, read_only=True) as ckpt:
    return ckpt.restore(step, abstract) + (ckpt.metrics(step),)


def _stored_step_counter(folder, step) -> int:
  return int(_full_state(folder, step)[0]['step'])


def _rewrite_step_counter(folder, step, counted) -> None:
  """Checkpoint `step` as rftjax wrote it before state['step'] counted GRPO steps: `counted` updates."""
  from rftjax import checkpoint

  state, extra, saved_metrics = _full_state(folder, step)
  shutil.rmtree(folder / str(step))
  with checkpoint.Checkpointer(folder) as ckpt:
    ckpt.save(step, {**state, 'step': jnp.asarray(counted, state['step'].dtype)}, extra=extra, metrics=saved_metrics)


def restore_params(workdir):
  from rftjax import checkpoint

  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  step = ckpt.latest_step()
  shapes = model.param_shapes(presets.tiny(vocab_size=32))
  abstract = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
    shapes,
  )
  tx = train_step.make_optimizer(tiny.get_config().optimizer, 1)
  state = train_step.init_state(model.init_params(presets.tiny(vocab_size=32)), tx)
  state, extra = ckpt.restore(step, train_step.abstract_state(state))
  del abstract
  return step, jax.device_get(state['params']), extra


@pytest.mark.filterwarnings('ignore:overflow encountered in cast:RuntimeWarning')  # the rate 1e39 in float32
def test_an_update_that_is_not_finite_is_not_applied_and_stops_the_run(tmp_path, in_repo):
  """A learning rate past float32's range makes the update inf: it was applied, and every later step trained and
  saved NaN weights while the job 'succeeded'. Now the weights stay, are saved, and the run stops (exit 5)."""
  with pytest.raises(
    trainer.Diverged, match=r'step 1: the update was not finite .* checkpoint 1 holds the weights of step 0'
  ):
    run(tmp_path, 'inf', 3, **{'optimizer.learning_rate': 1e39, 'optimizer.warmup_steps': 0})
  step, params, _ = restore_params(tmp_path / 'inf')
  initial = model.init_params(presets.tiny(vocab_size=32), tiny.get_config('test').seed)
  assert step == 1 and all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(initial)))
  (record,) = [r for r in metrics.read_jsonl(tmp_path / 'inf' / 'metrics.jsonl') if 'loss' in r]
  assert record['step'] == 1 and record['nonfinite_update'] == 1.0
  events = [json.loads(line) for line in (tmp_path / 'inf' / 'events.jsonl').read_text().splitlines()]
  assert events[-1]['data'] == {'step': 1, 'status': 'failed', 'code': 'diverged'}


def test_end_to_end_resume_equals_uninterrupted(tmp_path, in_repo):
  # 3 steps end to end, with the metrics contract; two updates per batch (a resume counts GRPO steps, not updates).
  # Each step trains (the variant's seed: with seed 0 none earned a reward, and a resume that dropped the
  # checkpoint's weights for the initial ones passed)
  mu = {'grpo.num_iterations': 2}
  short = run(tmp_path, 'resumed', 3, **mu)
  rows = metrics.read_jsonl(short / 'metrics.jsonl')
  train_rows = [r for r in rows if 'train_reward_mean' in r]
  assert [r['step'] for r in train_rows] == [1, 2, 3]
  assert all(r['grad_norm'] > 0.1 for r in train_rows), [r['grad_norm'] for r in train_rows]
  for key in (
    'step',
    'train_reward_mean',
    'loss',
    'kl',
    'completion_len_mean',
    'timing/sampling_s',
    'timing/grading_s',
    'timing/training_s',
  ):
    assert all(key in r for r in train_rows), key
  evals = [r for r in rows if 'valid_reward_mean' in r]
  assert [r['step'] for r in evals] == [0, 2, 3]
  assert (short / 'samples' / 'valid_step000000.jsonl').exists()
  assert json.loads((short / 'config.json').read_text())['model'] == 'tiny'
  assert (short / 'reward_curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  # TensorBoard's own reader sees the same numbers as metrics.jsonl
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(str(short / 'tensorboard'))
  acc.Reload()
  tb = {e.step: e.value for e in acc.Scalars('train_reward_mean')}
  assert tb == pytest.approx({r['step']: r['train_reward_mean'] for r in train_rows}, abs=1e-6)
  assert sorted(e.step for e in acc.Scalars('valid_reward_mean')) == [0, 2, 3]

  # the same command again: nothing to do, nothing rewritten, nothing locked (a finished run's read-only copy)
  (short / '.train.lock').unlink()
  files = sorted(str(p.relative_to(short)) for p in short.rglob('*') if '.jax_cache' not in p.parts)
  run(tmp_path, 'resumed', 3, **mu)
  assert metrics.read_jsonl(short / 'metrics.jsonl') == rows
  assert sorted(str(p.relative_to(short)) for p in short.rglob('*') if '.jax_cache' not in p.parts) == files

  # a checkpoint an older rftjax wrote: its state['step'] counted the 6 updates of 3 GRPO steps
  older = tmp_path / 'older'
  shutil.copytree(short, older)
  _rewrite_step_counter(older / 'checkpoints', 3, 6)

  # more steps continue from step 3 and land where an uninterrupted 5-step run lands
  run(tmp_path, 'resumed', 5, **mu)
  whole = run(tmp_path, 'whole', 5, **mu)
  step_a, params_a, extra_a = restore_params(short)
  step_b, params_b, extra_b = restore_params(whole)
  assert step_a == step_b == 5 and extra_a['data'] == extra_b['data']
  # the older checkpoint resumes on the schedule of step 3, not of step 6 (a faster decay, never logged)
  run(tmp_path, 'older', 5, **mu)
  assert _stored_step_counter(older / 'checkpoints', 5) == 5
  for a, b in zip(jax.tree.leaves(restore_params(older)[1]), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(a, b)
  assert extra_a['shapes']['seen'] and extra_a['shapes']['compile_s'] > 0  # the picker's history (measured times)
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(a, b)
  resumed_rows = [r for r in metrics.read_jsonl(short / 'metrics.jsonl') if 'train_reward_mean' in r]
  whole_rows = [r for r in metrics.read_jsonl(whole / 'metrics.jsonl') if 'train_reward_mean' in r]
  assert [r['train_reward_mean'] for r in resumed_rows] == [r['train_reward_mean'] for r in whole_rows]
  assert [r['step'] for r in resumed_rows] == [1, 2, 3, 4, 5]


def test_bad_grader_fails_before_training(tmp_path, in_repo):

  bad = tmp_path / 'grader.json'
  bad.write_text(
    json.dumps(
      {'type': 'string_check', 'name': 'x', 'input': '{{sample.output_text}}', 'reference': 'a', 'operation': 'equals'}
    )
  )
  with pytest.raises(graders.GraderConfigError, match='operation'):
    run(tmp_path, 'bad', 1, grader=str(bad))
  assert not (tmp_path / 'bad').exists()  # checked before the workdir is created


def test_a_workdir_holds_one_run(tmp_path, in_repo, caplog):
  """Another grader or model is refused before anything in the workdir changes; config.json stays the run's until
  a resumed checkpoint has restored; other changed settings are listed."""
  from rftjax import errors

  workdir = run(tmp_path, 'one', 1)
  written = (workdir / 'config.json').read_text()
  grader = {'type': 'string_check', 'name': 'other', 'input': '{{sample.output_text}}', 'reference': '{{item.answer}}',
            'operation': 'like'}  # fmt: skip
  other = (
    r'holds checkpoints of another run \(config.grader.name was "exact_answer", now "other"\); resuming it needs the '
    r'same model, data and grader: choose a new --workdir'
  )
  with pytest.raises(errors.ConfigError, match=other):
    run(tmp_path, 'one', 2, grader=grader)
  with pytest.raises(errors.ConfigError, match=r'config.data.train was "data/tiny/train.jsonl", now "'):
    run(tmp_path, 'one', 2, **{'data.train': 'data/tiny/valid.jsonl'})
  run(tmp_path, 'one', 1, **{'grpo.beta': 0.5})  # nothing to do
  assert (workdir / 'config.json').read_text() == written
  # the same file under another spelling is the same run
  with caplog.at_level('WARNING', logger='rftjax'):
    run(tmp_path, 'one', 2, **{'grpo.beta': 0.5, 'data.train': './data/../data/tiny/train.jsonl'})
  assert [m for m in caplog.messages if 'changed settings' in m] == [
    'resuming with changed settings: grpo.beta 0.04 -> 0.5'
  ]
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['grpo']['beta'] == 0.5 and saved['total_steps'] == 2
  # events.jsonl keeps what changed, and which rftjax ran each part (an upgrade mid-run shows in the run's files)
  events = [json.loads(line) for line in (workdir / 'events.jsonl').read_text().splitlines()]
  started, resumed = [e['data'] for e in events if e['message'].startswith(('Fine-tuning job started', 'Resumed'))]
  assert resumed['changed'] == ['grpo.beta 0.04 -> 0.5'] and 'changed' not in started and 'added' not in resumed
  assert started.get('rftjax') == resumed.get('rftjax') == metrics.code_version()

  hf = tmp_path / 'export'
  hf.mkdir()
  (hf / 'config.json').write_text(json.dumps({'model_type': 'llama', 'architectures': ['LlamaForCausalLM']}))
  refused = r'its config.json was not written by rftjax.train \(a Hugging Face model folder\); training there would'
  with pytest.raises(errors.ConfigError, match=refused):
    run(tmp_path, 'export', 1)
  assert sorted(p.name for p in hf.iterdir()) == ['config.json']


@pytest.mark.parametrize('schedule', ['constant', 'cosine'])
def test_more_steps_on_resume_say_when_the_learning_rate_jumps(schedule):
  """Raising total_steps continues a run; under the cosine schedule it also moves the rate: said at the resume."""

  old = tiny.get_config().unlock()
  old.optimizer.schedule, old.total_steps = schedule, 3
  new = old.copy_and_resolve_references()
  new.total_steps = 5
  notes, _ = resume.check(new, json.loads(old.to_json_best_effort()), 'runs/x')
  jumps = 'total_steps 3 -> 5 under the cosine schedule, which now decays over the new length: the learning rate jumps'
  assert [n[: len(jumps)] for n in notes] == ([jumps] if schedule == 'cosine' else [])


def test_the_rftjax_commit_recorded_is_rftjax_s_own(tmp_path, monkeypatch):
  """metrics.code_version: `git describe` of rftjax's own checkout; rftjax inside a user's repository (vendored,
  say) would have recorded that repository's commit as rftjax's."""
  import subprocess

  def repo(folder):
    (folder / 'rftjax').mkdir(parents=True)
    (folder / 'rftjax' / 'metrics.py').write_text('')
    git = lambda *a: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a], cwd=folder, check=True,
                                    capture_output=True, text=True)  # noqa: E731  # fmt: skip
    git('init', '-q')
    git('add', '.')
    git('commit', '-qm', 'x')
    return git('rev-parse', '--short=12', 'HEAD').stdout.strip()

  own = repo(tmp_path / 'own')
  monkeypatch.setattr(metrics, '__file__', str(tmp_path / 'own' / 'rftjax' / 'metrics.py'))
  assert metrics.code_version() == own
  (tmp_path / 'own' / 'rftjax' / 'metrics.py').write_text('# edited')
  assert metrics.code_version() == f'{own}-dirty'
  repo(tmp_path / 'project' / 'vendor')  # a repository around rftjax's folder, not rftjax's own
  (tmp_path / 'project' / 'vendor' / '.git').rename(tmp_path / 'project' / '.git')
  monkeypatch.setattr(metrics, '__file__', str(tmp_path / 'project' / 'vendor' / 'rftjax' / 'metrics.py'))
  assert metrics.code_version() is None


def test_settings_new_since_a_run_began_are_named_as_new_not_as_changes():
  """After an upgrade, the settings rftjax added since a run began were 'changed settings: x null -> 16', and a
  grader field a shipped config gained made the run 'another run ... (or delete that one to start over)'."""

  old = tiny.get_config().unlock()
  old.grader = {'type': 'math', 'name': 'answer', 'input': '{{sample.output_text}}', 'reference': '{{item.answer}}'}
  previous = json.loads(old.to_json_best_effort())
  del previous['grading']['model_threads'], previous['guard']['no_signal_steps']  # not in that rftjax yet
  new = old.copy_and_resolve_references()
  new.eval_interval = old.eval_interval + 1
  del previous['openai']['resolved']  # a JSON record of resolved values: neither listed as changed nor as new
  new.openai.resolved = '{"n_epochs": 3}'
  assert resume.check(new, previous, 'runs/x') == (
    [f'eval_interval {old.eval_interval} -> {new.eval_interval}'],
    [f'grading.model_threads={new.grading.model_threads}', f'guard.no_signal_steps={new.guard.no_signal_steps}'],
  )
  new.grader = {**old.grader, 'exact_number': True}  # the config file's grader gained a field since
  with pytest.raises(errors.ConfigError) as e:
    resume.check(new, previous, 'runs/x')
  assert str(e.value).startswith(
    '--workdir=runs/x began without a setting this config has (config.grader.exact_number was not set, now true): '
    'rftjax or the config file changed since'
  )
  new.grader = {**old.grader, 'exact_number': True, 'reference': '{{item.solution}}'}  # and another grader indeed
  with pytest.raises(errors.ConfigError, match=r'holds checkpoints of another run \(config.grader.exact_number was'):
    resume.check(new, previous, 'runs/x')


def test_a_run_resumed_from_another_folder_is_told_where_its_relative_paths_start(tmp_path, monkeypatch):
  """config.json keeps paths as given. Resumed from another folder with the same files named absolutely, the run
  was "another run ... (or delete that one to start over)": advice to delete a good run."""

  old = tiny.get_config().unlock()  # data/tiny/train.jsonl, sp:... as the repo root names them
  new = old.copy_and_resolve_references()
  new.data.train, new.data.valid = str(REPO / old.data.train), str(REPO / old.data.valid)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(errors.ConfigError) as e:
    resume.check(new, json.loads(old.to_json_best_effort()), 'rel')
  said = str(e.value)
  assert said.startswith('--workdir=rel was started in another folder (config.data.train was "data/tiny/train.jsonl", ')
  assert said.endswith(f'relative to that folder; run this command from there (not {tmp_path}) to resume it')
  new.data.train = str(tmp_path / 'other.jsonl')  # another file indeed
  with pytest.raises(errors.ConfigError, match=r'holds checkpoints of another run .*\(or delete that one'):
    resume.check(new, json.loads(old.to_json_best_effort()), 'rel')


def test_a_run_whose_files_moved_to_another_machine_is_told_how_to_resume(tmp_path):
  """A run and its data moved to another machine (absolute paths): the same files elsewhere were 'another run',
  whose only way out offered was deleting it."""

  old = tiny.get_config().unlock()
  old.data.train, old.tokenizer = str(tmp_path / 'hostA' / 'train.jsonl'), f'sp:{tmp_path}/hostA/tokenizer.model'
  new = old.copy_and_resolve_references()
  (tmp_path / 'hostB').mkdir()
  for name in ('train.jsonl', 'tokenizer.model'):
    shutil.copy(REPO / 'data' / 'tiny' / name, tmp_path / 'hostB' / name)
  new.data.train, new.tokenizer = str(tmp_path / 'hostB' / 'train.jsonl'), f'sp:{tmp_path}/hostB/tokenizer.model'
  with pytest.raises(errors.ConfigError) as e:
    resume.check(new, json.loads(old.to_json_best_effort()), 'runs/x')
  assert str(e.value).startswith(
    f'--workdir=runs/x was started with files that are not there now (config.data.train was "{tmp_path}/hostA/'
    'train.jsonl", now'
  ) and str(e.value).endswith(
    'if they are the same files moved, write their new places in runs/x/config.json and run again (the training '
    "prompts are checked against the run's once the model loads), or choose a new --workdir"
  )
  (tmp_path / 'hostA').mkdir()  # the old ones are there too: another run indeed
  shutil.copy(REPO / 'data' / 'tiny' / 'train.jsonl', tmp_path / 'hostA' / 'train.jsonl')
  with pytest.raises(errors.ConfigError, match=r'holds checkpoints of another run'):
    resume.check(new, json.loads(old.to_json_best_effort()), 'runs/x')


def test_schedule_warmup_and_cosine():
  opt = ml_collections.ConfigDict(dict(OPT.to_dict(), warmup_steps=4, schedule='cosine', learning_rate=1.0))
  lr = [train_step.learning_rate(opt, k, 12) for k in range(1, 13)]
  np.testing.assert_allclose(lr[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)  # update k uses (k)/4 of the peak
  np.testing.assert_allclose(lr[-1], 0.1, rtol=1e-5)  # cosine ends at 10% of the peak
  assert all(a >= b for a, b in zip(lr[3:], lr[4:]))
  const = ml_collections.ConfigDict(dict(OPT.to_dict(), learning_rate=2e-3))
  assert train_step.learning_rate(const, 1, 10) == pytest.approx(2e-3)  # warmup 0: the first update moves


def test_a_batchs_updates_share_its_steps_learning_rate():
  """num_iterations = 2: both updates of GRPO step k run at the rate logged for step k (the warm-up and the decay
  span total_steps GRPO steps, not updates)."""
  opt = ml_collections.ConfigDict(dict(OPT.to_dict(), warmup_steps=4, learning_rate=1.0, weight_decay=0.0))
  tx = train_step.make_optimizer(opt, 12, updates_per_step=2)
  params = {'w': jnp.zeros(3)}
  state, moves = tx.init(params), []
  for _ in range(4):  # a constant gradient: each Adam update moves by its learning rate
    updates, state = tx.update({'w': jnp.ones(3)}, state, params)
    moves.append(-float(updates['w'][0]))
  np.testing.assert_allclose(moves, [0.25, 0.25, 0.5, 0.5], rtol=1e-4)
  assert [train_step.learning_rate(opt, k, 12) for k in (1, 2)] == pytest.approx([0.25, 0.5])


def _schedule_count(opt_state):
  (count,) = {
    int(s.count)
    for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))
    if isinstance(s, optax.ScaleByScheduleState)
  }
  return count


def test_the_rate_follows_the_grpo_step_whatever_updates_ran_before():
  """A run stopped at step 3 with num_iterations 1 and resumed with 2 has made 3 optimizer updates, not 6: the
  schedule once read step 1's rate off the update counter (lr 0.4 applied while 0.7 was logged, on a 10-step
  warm-up). The update at GRPO step k runs at the rate `learning_rate` gives for it, whatever the counter says."""
  opt = ml_collections.ConfigDict(dict(OPT.to_dict(), warmup_steps=10))
  tx = train_step.make_optimizer(opt, 20, updates_per_step=2)
  step = train_step.make_train_step(train_step.StepConfig(CFG, grpo.LossConfig.dapo(), num_iterations=2), tx)
  batch = make_batch()
  states = []
  for history in (3, 6):  # the updates that ran before GRPO step 3 under mu = 1, and under mu = 2
    state = train_step.init_state(model.init_params(CFG, 0), tx)
    state['step'] = jnp.asarray(3, jnp.int32)
    is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
    put = lambda s: s._replace(count=jnp.asarray(history, jnp.int32)) if is_schedule(s) else s  # noqa: E731
    state['opt_state'] = jax.tree.map(put, state['opt_state'], is_leaf=is_schedule)
    states.append(step(state, batch, None, 0)[0])
  for a, b in zip(jax.tree.leaves(states[0]['params']), jax.tree.leaves(states[1]['params'])):
    np.testing.assert_array_equal(a, b)
  assert _schedule_count(states[0]['opt_state']) == 7 and int(states[0]['step']) == 3  # update 0 of step 3 (0-based)


def test_a_batch_with_nothing_to_train_on_leaves_the_weights_alone():
  """Dynamic sampling that found no group with signal masks every row: the gradient is 0, but AdamW's momentum and
  weight decay moved the weights anyway (as far as a real step). Now params and optimizer state stay; the step
  counter moves."""
  tx = train_step.make_optimizer(OPT, 10)
  step = train_step.make_train_step(train_step.StepConfig(CFG, grpo.LossConfig.dapo()), tx)
  state, _ = step(train_step.init_state(model.init_params(CFG, 0), tx), make_batch())  # momentum to carry
  before = jax.device_get(state)
  empty = make_batch(seed=1)
  empty = empty.replace(completion_mask=np.zeros_like(empty.completion_mask))
  after, metrics = step(state, empty)
  assert float(metrics['grad_norm']) == 0.0 and int(after['step']) == 2
  for a, b in zip(jax.tree.leaves(before['params']), jax.tree.leaves(jax.device_get(after['params']))):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(before['opt_state']), jax.tree.leaves(jax.device_get(after['opt_state']))):
    np.testing.assert_array_equal(a, b)


def test_model_graders_naming_an_init_get_a_local_judge(monkeypatch):
  calls = []
  monkeypatch.setattr('rftjax.loader.load', lambda config, mesh: calls.append(config.init) or config.init)
  monkeypatch.setattr('rftjax.inference.make_judge', lambda loaded: lambda messages, params: f'judged by {loaded}')
  spec = {
    'type': 'multi',
    'calculate_output': 'a + b',
    'graders': {
      'a': {'type': 'score_model', 'model': 'gguf:smollm2-135m', 'input': [], 'range': [0, 1]},
      'b': {'type': 'label_model', 'model': 'gpt-4o-mini', 'input': [], 'labels': ['y'], 'passing_labels': ['y']},
    },
  }
  assert graders.local_models(spec) == ['gguf:smollm2-135m']  # an API model name is left to its endpoint
  judges = inference.local_judges(spec)
  assert calls == ['gguf:smollm2-135m'] and list(judges) == ['gguf:smollm2-135m']
  assert judges['gguf:smollm2-135m']([], {}) == 'judged by gguf:smollm2-135m'


@pytest.mark.parametrize('aggregation', ['token_mean', 'sequence_mean', 'constant'])
def test_microbatches_equal_the_full_batch(aggregation):
  loss_cfg = grpo.LossConfig(aggregation=aggregation, max_tokens=4, beta=0.0)
  tx = train_step.make_optimizer(OPT, 10)
  outs = []
  for k in (1, 2):
    state = train_step.init_state(model.init_params(CFG, 0), tx)
    step = train_step.make_train_step(train_step.StepConfig(CFG, loss_cfg, microbatches=k), tx)
    state, m = step(state, make_batch())
    outs.append(((float(m['loss']), float(m['grad_norm'])), jax.device_get(state['params'])))
    np.testing.assert_allclose(float(m['pg_loss']), float(m['loss']), rtol=1e-6)  # beta = 0: the same sum
  assert outs[0][0][1] > 0
  for loss, params in outs[1:]:
    # the gradient too: Adam's first step is lr * sign(gradient), so params alone pass a gradient off by a factor
    np.testing.assert_allclose(loss, outs[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(outs[0][1])):
      np.testing.assert_allclose(a, b, atol=1e-4)  # Adam magnifies float-rounding differences of the gradient


def test_microbatch_token_metrics_weigh_by_tokens_and_sum_gradients_in_float32():
  """Rows of 4, 1, 4, 1, ... tokens in two microbatches of unequal token counts: kl, entropy and the other token
  means are those of the whole batch (an unweighted mean of the two microbatches' differed), and the gradients of
  bfloat16 params are summed in float32."""
  loss_cfg = grpo.LossConfig(beta=0.04)
  batch = make_batch(lengths=[4, 1, 4, 1, 4, 1, 4, 0])
  rng = np.random.default_rng(1)
  batch = batch.replace(ref_logp=batch.sampler_logp + rng.normal(0, 0.5, batch.sampler_logp.shape).astype(np.float32))
  tx = train_step.make_optimizer(OPT, 10)
  metrics = []
  for k in (1, 2):
    step = train_step.make_train_step(train_step.StepConfig(CFG, loss_cfg, microbatches=k), tx)
    metrics.append(jax.device_get(step(train_step.init_state(model.init_params(CFG, 0), tx), batch)[1]))
  for key in ('loss', 'kl', 'entropy', 'ratio_mean', 'clip_frac_low', 'tis_weight_mean', 'grad_norm'):
    np.testing.assert_allclose(metrics[1][key], metrics[0][key], rtol=1e-5, atol=1e-6, err_msg=key)
  half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.init_params(CFG, 0))
  step = train_step.make_train_step(train_step.StepConfig(CFG, loss_cfg, microbatches=2), tx)
  jaxpr = jax.make_jaxpr(step)(train_step.init_state(half, tx), batch)
  scans = [e for e in jaxpr.eqns[0].params['jaxpr'].eqns if e.primitive.name == 'scan']
  carried = {v.aval.dtype for v in scans[-1].outvars[: len(jax.tree.leaves(half))]}
  assert carried == {np.dtype('float32')}


def test_stop_strings_of_one_token_and_of_several_reach_both_samplers(in_repo):
  from rftjax import loader, runspec

  c = tiny.get_config('test')
  c.sampling.stop = ('Largest digit: 12', '7')
  c = runspec.resolve(c, 100)
  tok = loader.load_tokenizer(c)
  spec = runspec.build(c, tok)
  for s in (spec.train_sampler, spec.eval_sampler):
    assert s.stop_ids == (*tok.stop_ids, *tok.encode('7')) and s.stop_seqs == (tuple(tok.encode('Largest digit: 12')),)
  c = tiny.get_config('test')
  c.sampling.stop = ('',)
  with pytest.raises(
    errors.ConfigError, match=r"config.sampling.stop: expected a tuple of non-empty strings, found \(''"
  ):
    runspec.resolve(c, 100)


def test_eval_samples_grades_k_completions_per_prompt(tmp_path, in_repo):
  workdir = run(tmp_path, 'k2', 1, eval_samples=2, eval_temperature=1.0)
  evals = [r for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'valid_reward_mean' in r]
  assert [r['valid/num_graded'] for r in evals] == [400.0, 400.0]  # 200 prompts x 2 samples, at steps 0 and 1


def test_resume_sets_a_torn_metrics_line_aside(tmp_path, in_repo, caplog):
  """A crash in the middle of appending to metrics.jsonl leaves half a line; the next run keeps going."""
  workdir = run(tmp_path, 'torn', 2)
  torn = '{"step": 3, "train_reward_me'
  with (workdir / 'metrics.jsonl').open('a') as f:
    f.write(torn)
  with caplog.at_level('WARNING', logger='rftjax'):
    run(tmp_path, 'torn', 3)
  rows = metrics.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows if 'train_reward_mean' in r] == [1, 2, 3]
  assert (workdir / 'metrics.jsonl.torn').read_text() == torn + '\n'
  assert any('not a JSON object (a write cut short by a crash?); set aside in metrics.jsonl.torn' in m for m in
             caplog.messages)  # fmt: skip


def test_a_full_disk_stops_the_run_with_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
  """A full disk under the run's samples ended in a 37-line traceback naming no file, and the 'Job failed' event
  and the files' close failed again on top of it. One line names the file; events.jsonl says the job failed."""
  from rftjax import cli, train

  monkeypatch.chdir(REPO)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  import errno

  workdir = tmp_path / 'run'
  (workdir / 'samples').mkdir(parents=True)
  rename = pathlib.Path.replace

  def full(self, target):  # the disk fills as the samples are written
    if pathlib.Path(target).name == 'valid_step000000.jsonl':
      raise OSError(errno.ENOSPC, 'No space left on device')
    return rename(self, target)

  monkeypatch.setattr(pathlib.Path, 'replace', full)
  (workdir / '.jax_cache').mkdir()
  (workdir / '.jax_cache' / 'jit_step-cache').write_bytes(b'cut sho')  # JAX would warn about it in every later run
  argv = ['rftjax.train', f'--workdir={workdir}', '--config=configs/tiny.py:test', '--config.eval_batch_size=200']
  assert train.main(argv) == 1
  assert capsys.readouterr().err.splitlines() == [
    f'error: cannot write {workdir}/samples/valid_step000000.jsonl: No space left on device; make room (or write '
    'elsewhere), and run the same command: the last checkpoint on disk is where it resumes'
  ]
  (ended,) = [e for e in metrics.read_jsonl(workdir / 'events.jsonl') if e['data'].get('status') == 'failed']
  assert ended['message'].startswith('Job failed: OSError: [Errno 28] No space left on device')
  assert not (workdir / '.jax_cache').exists()


def test_broken_grading_stops_with_one_line_and_exit_3(tmp_path, monkeypatch, capsys):
  """The step-0 validation grades with the same grader first: nothing is trained or checkpointed on a broken one,
  and its completions are kept for a look."""
  from rftjax import cli, train

  monkeypatch.chdir(REPO)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  grader = tmp_path / 'boom.json'
  grader.write_text(json.dumps({'type': 'python', 'name': 'boom', 'source': 'def grade(s, i):\n  return 1 / 0\n'}))
  workdir = tmp_path / 'run'
  argv = ['rftjax.train', f'--workdir={workdir}', '--config=configs/tiny.py:test', f'--config.grader={grader}']
  assert train.main(argv) == 3
  assert capsys.readouterr().err.splitlines() == [
    'error: grading failed: validation at step 0: 200 of 200 gradings failed (100% > grading.max_error_share=50%): '
    "grader 'boom' (python), python_grader_runtime in 200, e.g. ZeroDivisionError: division by zero (grader boom, "
    'line 2) (every completion is in samples/valid_step000000.jsonl). Nothing was trained; fix the grader and run '
    'again'
  ]
  assert not any(p.name.isdigit() for p in (workdir / 'checkpoints').iterdir())
  assert not [r for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'valid_reward_mean' in r]
  kept = metrics.read_jsonl(workdir / 'samples' / 'valid_step000000.jsonl')
  assert len(kept) == 200 and all(len(r['errors']) == 1 for r in kept)  # each with its message, as evaluate writes
  assert {(e['category'], e['message'].splitlines()[-1]) for r in kept for e in r['errors']} == {
    ('python_grader_runtime', 'ZeroDivisionError: division by zero')
  }


def test_gradings_that_fail_under_the_share_are_said_on_the_console(tmp_path, in_repo, caplog):
  """Failures too few to stop the run still score 0: each validation says so, and training once (then the metrics)."""
  source = (
    "def grade(s, i):\n  if i['answer'] == '9':\n    raise ValueError('nine')\n  return s['output_text'] == '9'\n"
  )
  grader = {'type': 'python', 'name': 'picky', 'source': source}
  with caplog.at_level('WARNING', logger='rftjax'):
    workdir = run(tmp_path, 'picky', 4, grader=grader, batch_size=8, seed=0)  # seed 0's order: most steps draw a 9
  nines = sum(json.loads(line)['answer'] == '9' for line in (REPO / 'data/tiny/valid.jsonl').open())
  said = [m for m in caplog.messages if 'gradings failed' in m]
  valid = [m for m in said if m.startswith('validation at step')]
  assert [m.split(':')[0] for m in valid] == ['validation at step 0', 'validation at step 2', 'validation at step 4']
  assert valid[0].startswith(
    f'validation at step 0: {nines} of 200 gradings failed ({nines / 200:.0%} <= grading.max_error_share=50%): '
    "grader 'picky' (python), python_grader_runtime in"
  ) and valid[0].endswith(
    'ValueError: nine (grader picky, line 3); they score 0 (every completion is in samples/valid_step000000.jsonl)'
  )
  train_said = [m for m in said if m not in valid]
  failing = [r for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if r.get('train/error_rate', 0) > 0]
  assert len(train_said) == 1 and len(failing) >= 2  # said at the first such step only
  assert train_said[0].startswith(f'step {failing[0]["step"]}: ') and 'said once' in train_said[0]
  # what the console said is in events.jsonl too, at its step, and report counts it
  warned = [e for e in metrics.read_jsonl(workdir / 'events.jsonl') if e['level'] == 'warn']
  logged = [m for m in caplog.messages if m in {e['message'] for e in warned}]
  assert [e['message'] for e in warned] == logged and set(said) <= set(logged)
  assert [e['data']['step'] for e in warned if e['message'] in valid] == [0, 2, 4]
  summary = report.summarize(workdir)
  assert summary['warnings'] == {'count': len(warned), 'last': warned[-1]['message'], 'last_step': 4}
  assert any(line.startswith('warnings') and f'{len(warned)} in events.jsonl; the last, at step 4: ' in line
             for line in report.table(summary).splitlines())  # fmt: skip


def test_a_broken_validation_mid_run_keeps_the_step_unranked(tmp_path, in_repo, monkeypatch, caplog):
  """The step (the run's last) is kept unranked, and the run is not finished: the same command again validates the
  step, ranks it and ends the run."""
  from rftjax import checkpoint, inference

  real, calls = inference.evaluate, []

  def broken_second_time(*args, **kwargs):
    rows = real(*args, **kwargs)
    calls.append(len(rows))
    if len(calls) != 2:
      return rows
    error = graders.GradeError('python_grader_runtime', 'KeyError: x')
    return [(c, graders.GradeResult(0.0, errors=(error,))) for c, _ in rows[:-1]] + rows[-1:]

  monkeypatch.setattr(inference, 'evaluate', broken_second_time)
  stopped = (
    r'^validation at step 2: 199 of 200 gradings failed .* KeyError: x \(every completion is in '
    r'samples/valid_step000002.jsonl\). The checkpoint at step 2 is where a rerun resumes$'
  )
  with pytest.raises(trainer.GradingStopped, match=stopped):
    run(tmp_path, 'stop', 2)  # eval_interval 2
  ckpt = checkpoint.Checkpointer(tmp_path / 'stop' / 'checkpoints', read_only=True)
  assert ckpt.latest_step() == 2 and ckpt.metrics(2) is None and ckpt.best_step() == 0
  assert [r['step'] for r in metrics.read_jsonl(tmp_path / 'stop' / 'metrics.jsonl') if 'valid_reward_mean' in r] == [0]
  assert report.summarize(tmp_path / 'stop')['status'] == report.openai_job(tmp_path / 'stop')['status'] == 'failed'
  # the grader mended (an outage over), the same command validates step 2 and ranks it
  assert run(tmp_path, 'stop', 2) and len(calls) == 3
  rows = metrics.read_jsonl(tmp_path / 'stop' / 'metrics.jsonl')
  (valid,) = [r['valid_reward_mean'] for r in rows if r.get('step') == 2 and 'valid_reward_mean' in r]
  ckpt = checkpoint.Checkpointer(tmp_path / 'stop' / 'checkpoints', read_only=True)
  assert ckpt.metrics(2) == {'valid_reward_mean': valid} and 2 in ckpt.best_steps()
  events = [json.loads(line) for line in (tmp_path / 'stop' / 'events.jsonl').read_text().splitlines()]
  assert events[-1]['data'] == {'step': 2, 'status': 'succeeded'}
  assert report.summarize(tmp_path / 'stop')['status'] == report.openai_job(tmp_path / 'stop')['status'] == 'succeeded'
  with caplog.at_level('INFO', logger='rftjax'):  # now nothing is left to do, and nothing to warn of
    run(tmp_path, 'stop', 2)
  assert len(calls) == 3 and not [r for r in caplog.records if r.levelname == 'WARNING']
  assert 'nothing to do: step 2 >= total_steps=2 (raise config.total_steps to continue)' in caplog.messages


def test_a_run_that_ends_between_a_redone_validation_and_its_rank_is_not_validated_twice(tmp_path, in_repo,
                                                                                        monkeypatch):  # fmt: skip
  """The redone validation's line is in metrics.jsonl when the rank fails (a full disk, a kill): the next resume
  ranks the step by that line, so the step has one validation line and one metrics event, as an unbroken run's."""
  from rftjax import checkpoint, preemption

  with monkeypatch.context() as m:
    m.setattr(preemption.Watcher, 'requested', lambda self, step: step == 2)
    with pytest.raises(preemption.Preempted):
      run(tmp_path, 'run', 2, eval_batch_size=50)  # eval_interval 2: step 2's validation cut short
  rank, failures = checkpoint.Checkpointer.rank, [OSError(28, 'No space left on device')]

  def full_once(*args):
    if failures:
      raise failures.pop()
    return rank(*args)

  monkeypatch.setattr(checkpoint.Checkpointer, 'rank', full_once)
  with pytest.raises(OSError, match='No space left on device'):
    run(tmp_path, 'run', 2, eval_batch_size=50)
  validations = []
  monkeypatch.setattr(inference.Validation, '__call__', lambda *a, **k: validations.append(a) or {})
  run(tmp_path, 'run', 2, eval_batch_size=50)
  workdir = tmp_path / 'run'
  valid = [r for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'valid_reward_mean' in r]
  events = [json.loads(line) for line in (workdir / 'events.jsonl').read_text().splitlines()]
  assert validations == [] and [r['step'] for r in valid] == [0, 2]
  assert [e['data']['step'] for e in events if 'full_valid_mean_reward' in e['data']] == [0, 2]
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  assert (
    ckpt.metrics(2) == {'valid_reward_mean': valid[1]['valid_reward_mean']}
    and events[-1]['data']['status'] == 'succeeded'
  )


@pytest.mark.parametrize('rank_fails', [False, True])
def test_the_collapse_guard_hears_a_redone_validation(rank_fails, tmp_path, in_repo, monkeypatch):
  """A SIGTERM cuts step 4's validation; the resume's redone one is the guard's second bad validation, and the guard
  stops the run there (guard.stop), as it stopped the unbroken run at step 4. Also when the resume that redid it
  ended before its rank (a full disk): the next one hears the logged line (it trained on to the end)."""
  from rftjax import checkpoint, preemption

  falling = iter([0.5, 0.5, 0.5, 0.2, 0.2, 0.2])  # the validations that finish: steps 0, 1, 2, 3, then 4 redone
  real = graders.summarize
  monkeypatch.setattr(inference.graders, 'summarize', lambda results, prefix='train': {
    **real(results, prefix), **({'valid_reward_mean': next(falling)} if prefix == 'valid' else {})})  # fmt: skip
  guard = {'guard.stop': True, 'guard.patience': 2, 'guard.sigmas': 0.0, 'eval_interval': 1, 'eval_batch_size': 50}
  with monkeypatch.context() as m:
    m.setattr(preemption.Watcher, 'requested', lambda self, step: step == 4)
    with pytest.raises(preemption.Preempted):
      run(tmp_path, 'falling', 8, **guard)
  if rank_fails:
    with monkeypatch.context() as m:
      m.setattr(checkpoint.Checkpointer, 'rank', lambda *a: (_ for _ in ()).throw(OSError(28, 'No space left')))
      with pytest.raises(OSError):
        run(tmp_path, 'falling', 8, **guard)
  with pytest.raises(trainer.GuardStopped, match='valid_reward_mean fell to 0.2 at step 4'):
    run(tmp_path, 'falling', 8, **guard)
  ckpt = checkpoint.Checkpointer(tmp_path / 'falling' / 'checkpoints', read_only=True)
  assert ckpt.latest_step() == 4 and ckpt.metrics(4) == {'valid_reward_mean': 0.2}
  events = [json.loads(line) for line in (tmp_path / 'falling' / 'events.jsonl').read_text().splitlines()]
  alarms = [(e['data']['step'], e['data']['guard']['alarm']) for e in events if 'guard' in e['data']]
  assert alarms == [(4, 'valid_reward_drop')]  # said once, by the run that first saw it


def test_a_stop_asked_once_the_last_step_is_done_ends_the_run_as_succeeded(tmp_path, in_repo, monkeypatch):
  """Ctrl-C or SIGTERM after the last step's validation and save: nothing is left but the end, which it is (it
  stopped with 130 or 42 and a 'cancelled' event, and the rerun said 'nothing to do' without a 'succeeded' one)."""
  from rftjax import preemption

  monkeypatch.setattr(preemption.Watcher, 'requested', lambda self, step: step == 2)
  workdir = run(tmp_path, 'run', 2, eval_batch_size=200)  # eval_interval 2; one validation batch: never cut short
  events = [json.loads(line) for line in (workdir / 'events.jsonl').read_text().splitlines()]
  assert [e['data']['status'] for e in events if 'status' in e['data']] == ['running', 'succeeded']
  assert [r['step'] for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'valid_reward_mean' in r] == [0, 2]


def test_a_last_step_saved_unranked_between_validations_is_said_by_the_rerun(tmp_path, in_repo, monkeypatch, caplog):
  """A SIGTERM after step 1 (no validation due there) of a run later given total_steps=1: nothing is left to do, and
  the rerun says how to measure the step no validation ranked."""
  from rftjax import checkpoint, preemption

  with monkeypatch.context() as m:
    m.setattr(preemption.Watcher, 'requested', lambda self, step: step == 1)
    with pytest.raises(preemption.Preempted):
      run(tmp_path, 'cut', 2)  # eval_interval 2
  assert not checkpoint.Checkpointer(tmp_path / 'cut' / 'checkpoints', read_only=True).validation_due(1)
  with caplog.at_level('INFO', logger='rftjax'):
    run(tmp_path, 'cut', 1)
  said = 'checkpoint 1 has no validation reward, so it is not among the best kept; measure it with python -m '
  assert caplog.messages[-1] == f'{said}rftjax.evaluate --workdir={tmp_path / "cut"} --step=1'
  assert 'nothing to do: step 1 >= total_steps=1' in caplog.text


def test_a_grading_stop_mid_run_checkpoints_the_step_before_it(tmp_path, in_repo, monkeypatch):
  """Steps since the last checkpoint are kept; the rerun resumes there and draws the prompts it would have."""
  from rftjax import checkpoint, rollout

  calls = []
  real = rollout.Rollouts.__call__

  def failing_at_step_2(self, params, step, stop=None):
    calls.append(step)
    if step == 1 and len(calls) == 2:
      raise graders.GradingFailed('3 of 4 gradings failed', [])
    return real(self, params, step, stop)

  monkeypatch.setattr(rollout.Rollouts, '__call__', failing_at_step_2)
  with pytest.raises(trainer.GradingStopped, match=r'^step 2: 3 of 4 gradings failed. The checkpoint at step 1 is'):
    run(tmp_path, 'stop', 3)  # eval_interval 2: without the stop's own save, the newest checkpoint is step 0
  workdir = tmp_path / 'stop'
  assert checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True).latest_step() == 1
  run(tmp_path, 'stop', 3)
  assert calls == [0, 1, 1, 2]  # resumed at step 2 (index 1), not from the start
  stopped = [r['train_reward_mean'] for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'train_reward_mean' in r]
  whole = run(tmp_path, 'whole', 3)
  assert stopped == [r['train_reward_mean'] for r in metrics.read_jsonl(whole / 'metrics.jsonl') if 'loss' in r]


def test_gdpo_advantages_train_with_a_weighted_multi_grader(tmp_path, in_repo):
  leaf = {'type': 'string_check', 'input': '{{sample.output_text}}', 'reference': '{{item.answer}}'}
  multi = {
    'type': 'multi',
    'graders': {'exact': {**leaf, 'operation': 'eq'}, 'has': {**leaf, 'operation': 'like'}},
    'calculate_output': '0.9 * exact + 0.1 * has',
  }
  workdir = run(tmp_path, 'gdpo', 1, grader=multi, **{'grpo.advantage': 'gdpo'})
  rows = [r for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'train_reward_mean' in r]
  assert [r['step'] for r in rows] == [1] and np.isfinite(rows[0]['loss'])
  with pytest.raises(
    errors.ConfigError,
    match=r"config.grpo.advantage='gdpo': expected a multi .* found calculate_output 'max\(exact, has\)'",
  ):
    run(
      tmp_path, 'not_linear', 1, grader={**multi, 'calculate_output': 'max(exact, has)'}, **{'grpo.advantage': 'gdpo'}
    )
  assert not (tmp_path / 'not_linear').exists()


def test_the_guard_stops_a_falling_run_and_the_best_checkpoint_exports(tmp_path, in_repo, monkeypatch):
  """A real tiny run whose validation reward is made to fall after step 2: with guard.stop the run stops at the
  patience-th bad evaluation, after a checkpoint, naming the best one, which exports."""
  from rftjax import checkpoint, export

  falling = iter([0.5, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])  # validations at steps 0, 1, 2, ...
  real = graders.summarize

  def summarize(results, prefix='train'):
    out = real(results, prefix)
    if prefix == 'valid':
      out['valid_reward_mean'] = next(falling)
    return out

  monkeypatch.setattr(inference.graders, 'summarize', summarize)
  guard = {'guard.stop': True, 'guard.patience': 2, 'guard.sigmas': 0.0, 'eval_interval': 1, 'guard.no_signal_steps': 0}
  with pytest.raises(trainer.GuardStopped) as e:
    run(tmp_path, 'falling', 8, **guard)
  workdir = tmp_path / 'falling'
  assert 'valid_reward_mean fell to 0.2 at step 4' in str(e.value) and 'best 0.5 (step 2)' in str(e.value)
  assert f'python -m rftjax.export --workdir={workdir} --step=best' in str(e.value)
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  assert (ckpt.latest_step(), ckpt.best_step()) == (4, 2)
  events = [json.loads(line) for line in (workdir / 'events.jsonl').read_text().splitlines()]
  assert [ev['data']['guard']['alarm'] for ev in events if 'guard' in ev['data']] == ['valid_reward_drop']
  assert export.main([f'--workdir={workdir}', '--step=best', f'--out={tmp_path / "best"}']) == 0
  assert (tmp_path / 'best' / 'model.safetensors').is_file()


def test_a_sigterm_in_the_step_the_guard_stops_does_not_hide_the_stop(tmp_path, in_repo, monkeypatch):
  """A SIGTERM during the step whose validation raises the guard's stop: the run stops as the guard says (exit 4),
  not as preempted (42: supervise.sh would resume it, and the guard, which fires once, would not stop it again)."""
  from rftjax import preemption

  falling = iter([0.5, 0.5, 0.5, 0.2, 0.2])
  real = graders.summarize
  monkeypatch.setattr(
    inference.graders,
    'summarize',
    lambda results, prefix='train': {
      **real(results, prefix),
      **({'valid_reward_mean': next(falling)} if prefix == 'valid' else {}),
    },
  )
  monkeypatch.setattr(preemption.Watcher, 'requested', lambda self, step: step == 4)
  validate = inference.Validation.__call__  # the SIGTERM comes after step 4's validation has run its batches
  monkeypatch.setattr(
    inference.Validation, '__call__', lambda self, params, step, stop=None: validate(self, params, step)
  )
  with pytest.raises(trainer.GuardStopped, match='valid_reward_mean fell to 0.2 at step 4'):
    run(tmp_path, 'falling', 8, **{'guard.stop': True, 'guard.patience': 2, 'guard.sigmas': 0.0, 'eval_interval': 1})
  rows = metrics.read_jsonl(tmp_path / 'falling' / 'metrics.jsonl')
  assert [r['step'] for r in rows if 'timing/checkpoint_s' in r] == [0, 1, 2, 3, 4]  # one save per step


@pytest.mark.parametrize('during', ['sigterm', 'broken_grading'])
def test_the_guards_stop_is_not_lost_when_that_steps_validation_is_cut_short(during, tmp_path, in_repo, monkeypatch):
  """The guard asks to stop on step 2's training record (entropy blow-up) and step 2's validation then stops on a
  SIGTERM or breaks: the guard's stop still wins (a SIGTERM's exit 42 was relaunched by supervise.sh and the guard,
  which fires once, never stopped the run), or is said beside the broken grading."""
  from rftjax import checkpoint
  from rftjax import guard as guard_lib
  from rftjax import preemption

  observe = guard_lib.Guard.observe

  def blowup(self, record):
    alarms = observe(self, record)
    if record.get('step') == 2 and 'train_reward_mean' in record:
      alarms = [*alarms, guard_lib.Alarm('entropy_blowup', 2, 'entropy 9.0 is 100x its start 0.09', {}, stop=True)]
    return alarms

  monkeypatch.setattr(guard_lib.Guard, 'observe', blowup)
  if during == 'sigterm':
    monkeypatch.setattr(preemption.Watcher, 'requested', lambda self, step: step == 2)
    expected, message = trainer.GuardStopped, 'the collapse guard stopped the run at step 2'
  else:
    validate = inference.Validation.__call__

    def broken(self, params, step, stop=None):
      if step == 2:
        raise graders.GradingFailed('grading failed: validation at step 2: 200 of 200 gradings failed', [])
      return validate(self, params, step, stop=stop)

    monkeypatch.setattr(inference.Validation, '__call__', broken)
    expected = trainer.GradingStopped
    message = 'gradings failed; also the collapse guard stopped the run at step 2 .*entropy_blowup: entropy 9.0'
  with pytest.raises(expected, match=message):
    run(tmp_path, 'run', 4, eval_batch_size=50, **{'guard.stop': True})  # eval_interval 2
  ckpt = checkpoint.Checkpointer(tmp_path / 'run' / 'checkpoints', read_only=True)
  assert ckpt.latest_step() == 2 and ckpt.metrics(2) is None and ckpt.best_step() == 0


@pytest.mark.parametrize('batches', [4, 1])
def test_a_sigterm_during_a_validation_saves_after_the_batch_not_after_the_pass(
  batches, tmp_path, in_repo, monkeypatch
):
  """A preemption's notice (about 30 s on a spot VM) can be shorter than a validation pass: the pass stops after
  the batch in flight and the step is saved unranked (its validation was not done), then the run exits 42. After
  the last batch (a pass of one batch: the demo's) nothing is left to sample: the pass is graded and the step
  ranked, which was lost before (no valid_reward_mean, the checkpoint deleted at the next save)."""
  from rftjax import checkpoint, preemption

  monkeypatch.setattr(preemption.Watcher, 'requested', lambda self, step: step == 2)
  with pytest.raises(preemption.Preempted) as e:
    run(tmp_path, 'run', 3, eval_batch_size=200 // batches)  # 200 validation prompts; eval_interval 2
  assert e.value.step == 2
  workdir = tmp_path / 'run'
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  validated = [r['step'] for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'valid_reward_mean' in r]
  assert ckpt.latest_step() == 2
  if batches > 1:
    assert ckpt.metrics(2) is None and ckpt.best_step() == 0 and validated == [0]
    assert not (workdir / 'samples' / 'valid_step000002.jsonl').exists()  # the pass did not run to its end
    with pytest.raises(preemption.Preempted):  # a second SIGTERM, during the redone validation: cut short again
      run(tmp_path, 'run', 3, eval_batch_size=200 // batches)
    assert [r['step'] for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'valid_reward_mean' in r] == [0]
    assert checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True).validation_due(2)
  else:
    assert ckpt.metrics(2) is not None and validated == [0, 2]
    assert (workdir / 'samples' / 'valid_step000002.jsonl').exists()
  # the resume validates step 2 first (it was never ranked, nor in metrics.jsonl), as an unbroken run did
  monkeypatch.setattr(preemption.Watcher, 'requested', lambda self, step: False)
  run(tmp_path, 'run', 3, eval_batch_size=200 // batches)
  whole = run(tmp_path, 'whole', 3, eval_batch_size=200 // batches)
  valid = [[(r['step'], r['valid_reward_mean']) for r in metrics.read_jsonl(w / 'metrics.jsonl')
            if 'valid_reward_mean' in r] for w in (workdir, whole)]  # fmt: skip
  assert valid[0] == valid[1] and [s for s, _ in valid[0]] == [0, 2, 3]
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', read_only=True)
  assert (
    ckpt.metrics(2) == {'valid_reward_mean': valid[1][1][1]} and (workdir / 'samples/valid_step000002.jsonl').exists()
  )


shutil_usage = collections.namedtuple('usage', 'total used free')


def test_succeeded_is_said_only_once_the_last_checkpoint_is_written(tmp_path, in_repo, monkeypatch, capsys,
                                                                   caplog):  # fmt: skip
  """The last save is asynchronous: when it fails (a full disk, a bucket's quota), events.jsonl must end 'failed',
  not 'succeeded' written before the failure showed; `train` says so in one line and exits 1 (it printed pages of
  Orbax's tracebacks, and Orbax's threads, never closed, more at exit)."""
  from rftjax import checkpoint, cli, train

  real_wait = checkpoint.Checkpointer.wait_until_finished

  full = OSError(28, 'No space left on device')

  def disk_full(self):  # the last save's (step 1's) write: every wait after raises that failure (Checkpointer)
    if 1 in self.all_steps():
      raise full
    real_wait(self)

  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  monkeypatch.setattr(checkpoint.Checkpointer, 'wait_until_finished', disk_full)
  closed = []
  close = checkpoint.Checkpointer.close
  monkeypatch.setattr(checkpoint.Checkpointer, 'close', lambda self: closed.append(1) or close(self))
  workdir = tmp_path / 'full'
  argv = ['rftjax.train', f'--workdir={workdir}', '--config=configs/tiny.py:test', '--config.total_steps=1']
  assert train.main(argv) == 1
  assert capsys.readouterr().err.splitlines() == [
    f'error: a checkpoint could not be written to {workdir / "checkpoints"}: No space left on device; checkpoint 1 '
    'is where a rerun resumes (make room, then run the same command again)'
  ]
  assert closed == [1] and 'failed too' not in caplog.text  # the failure it stopped for is no second one
  events = [json.loads(line) for line in (workdir / 'events.jsonl').read_text().splitlines()]
  assert [ev['data']['status'] for ev in events if 'status' in ev['data']] == ['running', 'failed']
  # a disk without room for one more checkpoint: said before Orbax writes anything. The size is the state's when
  # that is more than the last checkpoint's: step 0's zero optimizer moments compress to a third, and a disk with
  # room for it took the next save part-way, found out a step later
  monkeypatch.setattr(checkpoint.Checkpointer, 'wait_until_finished', lambda self: None)
  monkeypatch.setattr(trainer.shutil, 'disk_usage', lambda path: shutil_usage(total=2**30, used=2**30, free=2**20))
  small = tmp_path / 'small'
  assert train.main([*argv[:1], f'--workdir={small}', *argv[2:]]) == 1
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith(f'error: no room for checkpoint 0 in {small / "checkpoints"}: 1 MiB free, no checkpoint yet '
                         'and the state to save is 1')  # fmt: skip
  assert line.endswith(' MiB; no checkpoint was kept yet (make room, then run the same command again)')
  sizes = {}
  monkeypatch.setattr(trainer.shutil, 'disk_usage', lambda path: shutil_usage(2**30, 0, sizes.get('free', 2**30)))
  real_save = checkpoint.Checkpointer.save

  def then_full(self, step, *a, **k):  # after checkpoint 0, room for one as small as it, not for the state
    done = real_save(self, step, *a, **k)
    real_wait(self)
    size = sum(f.stat().st_size for f in pathlib.Path(self.directory / str(step)).rglob('*') if f.is_file())
    sizes['free'] = int(1.1 * size)
    return done

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', then_full)
  later = tmp_path / 'later'
  assert train.main([*argv[:1], f'--workdir={later}', *argv[2:]]) == 1
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith(f'error: no room for checkpoint 1 in {later / "checkpoints"}: ')
  assert ' MiB free, checkpoint 0 took ' in line and ' MiB and the state to save is 1' in line
  assert line.endswith('; checkpoint 0 is where a rerun resumes (make room, then run the same command again)')


def test_a_failed_save_names_what_to_do_by_its_cause(tmp_path):
  """Every failed save said 'make room': under 'ulimit -u' (Orbax could not start a thread), 'ulimit -f' or another
  user's folder that advice was wrong; and a checkpoints folder that could not be listed was 'no checkpoint was kept'
  with three on disk."""
  import types

  from rftjax import checkpoint

  kept = types.SimpleNamespace(all_steps=lambda: [3, 6])
  said = lambda e, ckpt=kept: str(checkpoint.save_failed(ckpt, tmp_path, e))  # noqa: E731
  where = f'a checkpoint could not be written to {tmp_path / "checkpoints"}: '
  assert said(RuntimeError("can't start new thread")) == (
    f"{where}can't start new thread; checkpoint 6 is where a rerun resumes (raise the limit on processes ('ulimit -u'"
    '), then run the same command again)'
  )
  assert said(OSError(27, 'File too large')).endswith("(raise the file-size limit ('ulimit -f'), then run the same "
                                                      'command again)')  # fmt: skip
  assert said(OSError(28, 'No space left on device')).endswith('(make room, then run the same command again)')
  assert said(ValueError('something else')).endswith('checkpoint 6 is where a rerun resumes (run the same command '
                                                     'again)')  # fmt: skip

  def unreadable():
    raise PermissionError(13, 'Permission denied')

  assert said(PermissionError(13, 'Permission denied'), types.SimpleNamespace(all_steps=unreadable)) == (
    f'{where}Permission denied; the last checkpoint committed is where a rerun resumes (give this user write and '
    "delete rights to the checkpoints' folder, then run the same command again)"
  )
  assert checkpoint.remedy('Error writing: File too large (27)') == "raise the file-size limit ('ulimit -f')"


def test_a_writer_that_cannot_close_does_not_replace_the_error_in_flight(caplog):
  """A full disk: the 'Job failed' event's line stayed in the buffer and the writer's close raised it again, so a
  failed save (exit 1, with its remedy) or a preemption (exit 42) became 'cannot write events.jsonl'."""
  import contextlib
  import types

  from rftjax import checkpoint

  def full():
    raise OSError(28, 'No space left on device', 'events.jsonl')

  writer = types.SimpleNamespace(close=full)
  with pytest.raises(checkpoint.SaveFailed), contextlib.ExitStack() as stack:
    stack.push(trainer._closing_writer(writer))
    raise checkpoint.SaveFailed('a checkpoint could not be written')
  assert 'closing metrics.jsonl and events.jsonl failed too: [Errno 28]' in caplog.text
  with pytest.raises(OSError, match='No space left'), contextlib.ExitStack() as stack:
    stack.push(trainer._closing_writer(writer))  # nothing else went wrong: its own error is the one to see


def test_a_run_folder_deleted_under_the_trainer_is_one_line_at_the_next_save(tmp_path):
  """rm -rf of a live run's folder: the next save's room check died in a FileNotFoundError traceback."""
  import types

  from etils import epath

  from rftjax import checkpoint

  gone = tmp_path / 'run'
  ckpt = types.SimpleNamespace(all_steps=lambda: [], directory=epath.Path(gone / 'checkpoints'))
  with pytest.raises(checkpoint.SaveFailed, match=rf'^--workdir={gone} is gone \(deleted while the run trained\?\)'):
    checkpoint.check_room(ckpt, gone, 4, {'w': np.zeros(3)})


def test_a_librarys_error_on_the_console_is_one_line():
  """Orbax logs a failed save's traceback from each of its threads (~300 lines on a full disk): one line each."""
  import logging
  import sys

  from rftjax import cli

  try:
    raise ValueError('RESOURCE_EXHAUSTED: ' + 'x' * 1000)
  except ValueError:
    record = logging.getLogger('absl').makeRecord('absl', logging.ERROR, 'f', 1, 'save failed: %s', ('boom',), None)
    record.exc_info = sys.exc_info()
  assert cli._short_library_errors(record) and record.exc_info is None
  assert record.getMessage() == 'save failed: boom (--verbosity=1 shows the rest)'


@pytest.mark.parametrize('group', [1, 4])
def test_logits_in_chunks_give_the_same_logprobs_entropy_and_update(group, monkeypatch):
  """Past LOGIT_CHUNK_ELEMENTS a part's logits are built a chunk of positions at a time (and again in the backward
  pass): the same logprobs, entropies and gradients as all at once, and the same update sharded over 8 devices."""
  batch = make_batch(n=7, group=group, lengths=[7, 2, 1, 6, 7, 1, 5, 3], pack=group > 1)
  params = model.init_params(CFG, 3)
  widths = []
  unembed = model.unembed
  monkeypatch.setattr(model, 'unembed', lambda p, c, h, *a: widths.append(h.shape[1]) or unembed(p, c, h, *a))

  def run():
    def f(p):
      logp, entropy = train_step.completion_stats(p, CFG, batch, temperature=0.7)
      return jnp.sum(logp * batch.completion_mask) + 0.3 * jnp.sum(entropy * batch.completion_mask), (logp, entropy)

    (_, stats), grads = jax.value_and_grad(f, has_aux=True)(params)
    return stats, grads

  whole = run()
  rows = 8 if group == 1 else batch.pack_rows * 2  # the packed rows: 2 groups of pack_rows
  assert max(widths) == 7 - (group > 1)  # all positions at once
  monkeypatch.setattr(train_step, 'LOGIT_CHUNK_ELEMENTS', rows * CFG.vocab_size * 4)
  assert train_step.logit_chunk(rows, 7 - (group > 1), CFG.vocab_size) == 4  # 2 chunks, the last one padded
  widths.clear()
  chunked = run()
  assert max(widths) == 4
  for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=3e-5)  # float32 sums in another order
  assert float(jnp.abs(whole[0][1]).max()) > 1.0  # real entropies, not zeros
  sharded, m8 = one_step(sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}), batch)
  monkeypatch.undo()  # the logits whole again
  single, m1 = one_step(None, batch)
  np.testing.assert_allclose(m8['loss'], m1['loss'], atol=1e-5)
  np.testing.assert_allclose(m8['grad_norm'], m1['grad_norm'], rtol=1e-5)


def test_the_progress_bar_shows_each_validation_at_once():
  from rftjax import metrics as metrics_lib

  bar = metrics_lib.Progress(0, 4, enabled=False)
  bar.note(0, {'step': 0, 'valid_reward_mean': 0.125})  # step 0's, before any step
  assert bar.bar.postfix == 'valid=0.125'
  bar.update(1, {'step': 1, 'train_reward_mean': 0.5})
  bar.note(1, {})  # no validation this step: the last one stays
  assert bar.bar.postfix == 'valid=0.125, reward=0.500'
  bar.note(4, {'step': 4, 'valid_reward_mean': 0.75})  # the run's last: shown, with no step after it
  assert bar.bar.postfix == 'valid=0.750, reward=0.500'
  bar.close()


def test_the_progress_bars_eta_follows_the_recent_steps_not_the_first_compile(monkeypatch):
  """The bar's count was set directly, so its rate was the whole run's mean: 2:43 left at step 25 of a run whose
  first step compiled for 19.8 s and whose next ones took 0.15 s (26 s left)."""
  import io

  from rftjax import metrics as metrics_lib

  now = [0.0]
  monkeypatch.setattr(cli, 'redraws_in_place', lambda stream: True)  # a terminal
  bar = metrics_lib.Progress(0, 200)
  bar.bar.fp, bar.bar._time = io.StringIO(), lambda: now[0]
  bar.bar.start_t = bar.bar.last_print_t = 0.0
  now[0] = 19.8
  bar.update(1, {'train_reward_mean': 0.1})
  for step in range(2, 26):
    now[0] += 0.15
    bar.update(step, {'train_reward_mean': 0.1})
  left = bar.bar.format_dict
  rate = left['rate'] or left['n'] / left['elapsed']  # tqdm's own fallback: the mean since the start
  eta = (left['total'] - left['n']) / rate
  assert 25 < eta < 60, eta  # 175 steps x 0.15 s, give or take what is left of the first step in the average
  bar.bar.disable = True  # nothing more to draw: its clock is the test's


def test_progress_in_a_log_file_is_a_line_per_tenth_of_the_run(monkeypatch, caplog):
  """nohup's file or a TPU VM's startup-script log: the bar's carriage returns made one line of two updates per
  step (a 30-step run's log was one 3 kB line); there it is a log line at each tenth and every `every_s`."""
  import io

  from rftjax import metrics as metrics_lib

  now = [100.0]
  monkeypatch.setattr(metrics_lib.time, 'monotonic', lambda: now[0])
  stream = io.StringIO()
  with caplog.at_level('INFO', logger='rftjax'):
    with metrics_lib.Progress(0, 20, stream=stream) as bar:
      bar.note(0, {'valid_reward_mean': 0.125})
      for step in range(1, 21):
        now[0] += 2.0 + 30.0 * (step == 1)  # the first step compiled for 30 s
        bar.update(step, {'train_reward_mean': step / 20, 'timing/compile_s': 30.0 * (step == 1)})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('step ')]
    assert stream.getvalue() == ''  # no bar drawn into the file
    assert [int(x.split('/')[0][5:]) for x in lines] == list(range(2, 21, 2))
    assert lines[0] == 'step 2/20 (10%): reward 0.100, valid 0.125; 2 s/step since step 0, about 0:00:36 left'
    assert lines[4] == 'step 10/20 (50%): reward 0.500, valid 0.125; 2 s/step since step 8, about 0:00:20 left'
    assert lines[-1] == 'step 20/20 (100%): reward 1.000, valid 0.125; 2 s/step since step 18'
    caplog.clear()
    with metrics_lib.Progress(0, 1000, stream=stream, every_s=300.0) as bar:  # a long run: a line each 5 minutes
      for step in range(1, 7):
        now[0] += 200.0
        bar.update(step, {'train_reward_mean': 0.5})
    assert [r.getMessage()[:13] for r in caplog.records] == ['step 2/1000 (', 'step 4/1000 (', 'step 6/1000 (']
    assert caplog.records[0].getMessage().endswith('200 s/step since step 0, about 2 days, 7:26:40 left')


def test_the_bar_is_drawn_on_a_terminal_and_in_a_notebook_only():
  import io

  from rftjax import metrics as metrics_lib

  class Tty(io.StringIO):
    def isatty(self):
      return True

  kernel_stream = type('OutStream', (io.StringIO,), {'__module__': 'ipykernel.iostream'})  # Jupyter's, Colab's
  closed = io.StringIO()
  closed.close()
  assert [cli.redraws_in_place(s) for s in (Tty(), kernel_stream(), io.StringIO(), closed, object())] == [
    True, True, False, False, False,
  ]  # fmt: skip
  bar = metrics_lib.Progress(0, 4, stream=Tty())
  bar.update(1, {'train_reward_mean': 0.5})
  bar.close()
  assert not bar.lines and '1/4' in bar.bar.fp.getvalue()


def test_checkpoint_events_come_once_the_step_is_on_disk_and_before_the_jobs_last_event(tmp_path, in_repo, monkeypatch):
  """'Checkpoint created at step N' was written as the asynchronous save began (only N.orbax-checkpoint-tmp on disk),
  and a stop's checkpoint was said before it existed."""
  from rftjax import preemption

  checked = []
  event = metrics.MetricsWriter.event

  def on_disk(self, message, **kw):
    if message.startswith('Checkpoint created'):
      step = kw['data']['step']
      checked.append((step, (tmp_path / 'run' / 'checkpoints' / str(step)).is_dir()))
    return event(self, message, **kw)

  monkeypatch.setattr(metrics.MetricsWriter, 'event', on_disk)
  with monkeypatch.context() as m:
    m.setattr(preemption.Watcher, 'requested', lambda self, step: step == 3)
    with pytest.raises(preemption.Preempted):
      run(tmp_path, 'run', 4, eval_interval=2)
  messages = [e['message'] for e in metrics.read_jsonl(tmp_path / 'run' / 'events.jsonl') if e['type'] == 'message']
  said = [x for x in messages if x.startswith(('Checkpoint', 'Job'))]
  assert said == ['Checkpoint created at step 0', 'Checkpoint created at step 2', 'Checkpoint created at step 3',
                  'Job stopped at step 3 (preempted); training again in the same workdir resumes there']  # fmt: skip
  run(tmp_path, 'run', 4, eval_interval=2)  # resumed: its last save is said before the job's end
  messages = [e['message'] for e in metrics.read_jsonl(tmp_path / 'run' / 'events.jsonl') if e['type'] == 'message']
  assert messages[-2:] == ['Checkpoint created at step 4', 'The job has successfully completed']
  assert messages.count('Checkpoint created at step 3') == 1  # said at the stop: not again at the resume
  assert checked == [(0, True), (2, True), (3, True), (4, True)]


def test_a_checkpoint_a_hard_kill_left_unsaid_is_said_at_the_resume(tmp_path, in_repo):
  """A save is said at the next step's settle: a kill -9 between its commit and that left no 'Checkpoint created'
  event for a checkpoint the resume then starts from, and a script waiting on the event never saw it."""
  import os

  run(tmp_path, 'run', 2, eval_interval=2)
  events = tmp_path / 'run' / 'events.jsonl'
  lines = events.read_text().splitlines(keepends=True)
  events.write_text(''.join(x for x in lines if 'Checkpoint created at step 2' not in x))  # as the kill left it
  os.utime(tmp_path / 'run' / 'checkpoints' / '2' / '_CHECKPOINT_METADATA', (1_700_000_000, 1_700_000_000))
  run(tmp_path, 'run', 3, eval_interval=2)
  said = [(e['message'], e['created_at']) for e in metrics.read_jsonl(events) if e['type'] == 'message']
  at = [m for m, _ in said].index('Resumed from step 2')
  assert said[at - 1] == ('Checkpoint created at step 2', 1_700_000_000)  # dated by its writing, not the resume
  assert [m for m, _ in said].count('Checkpoint created at step 2') == 1
  assert [m for m, _ in said].count('Checkpoint created at step 0') == 1  # said before: not again


def test_a_second_sigterm_while_a_stops_checkpoint_is_written_keeps_the_stops_events(tmp_path, in_repo,
                                                                                       monkeypatch):  # fmt: skip
  """The stop's save is waited for before the job's last event: a second SIGTERM meanwhile found the start-up
  handler back (the watcher had gone), which ended the process with neither event written."""
  import os
  import signal
  import time

  import orbax.checkpoint as ocp

  from rftjax import preemption

  stopping, real_wait, real_stop = [], ocp.CheckpointManager.wait_until_finished, preemption.Watcher.stop

  def wait(self):
    if stopping == [True]:
      stopping.append('sent')
      os.kill(os.getpid(), signal.SIGTERM)  # a preemption's notice, sent again
      time.sleep(0.2)
    return real_wait(self)

  monkeypatch.setattr(ocp.CheckpointManager, 'wait_until_finished', wait)
  monkeypatch.setattr(preemption.Watcher, 'requested', lambda self, step: step == 3)
  monkeypatch.setattr(preemption.Watcher, 'stop', lambda self, step: stopping.append(True) or real_stop(self, step))
  with pytest.raises(preemption.Preempted):
    run(tmp_path, 'run', 4, eval_interval=2)
  assert stopping == [True, 'sent']
  messages = [e['message'] for e in metrics.read_jsonl(tmp_path / 'run' / 'events.jsonl') if e['type'] == 'message']
  stopped = 'Job stopped at step 3 (preempted); training again in the same workdir resumes there'
  assert messages[-2:] == ['Checkpoint created at step 3', stopped]


def test_a_finished_run_says_what_to_do_next(tmp_path, in_repo, monkeypatch, caplog):
  """A run that succeeded ended on its last validation line; a stop or a failure says a line of its own."""
  from rftjax import cli, train

  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  w = tmp_path / 'run'
  argv = ['rftjax.train', f'--workdir={w}', '--config=configs/tiny.py:test', '--config.total_steps=1']
  with caplog.at_level('INFO', logger='rftjax'):
    assert train.main(argv) == 0
    assert caplog.messages[-1] == (f'done: python -m rftjax.report --workdir={w} names the best checkpoint; python -m '
                                   f'rftjax.export --workdir={w} --out=DIR exports it')  # fmt: skip
    caplog.clear()
    assert train.main(argv) == 0  # nothing left to do: not 'done' again
    assert caplog.messages[-1].startswith('nothing to do: step 1 >= total_steps=1')


def test_a_stop_during_step_0_validation_keeps_it_and_the_resume_does_not_redo_it(tmp_path, in_repo, monkeypatch):
  from rftjax import preemption

  with monkeypatch.context() as m:  # SIGTERM arrived during the step-0 validation
    m.setattr(preemption.Watcher, 'requested', lambda self, step: True)
    with pytest.raises(preemption.Preempted) as e:
      run(tmp_path, 'run', 2)
  assert e.value.step == 0
  rows = metrics.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')
  assert [r['step'] for r in rows] == [0, 0]  # its validation and one checkpoint: no rollout after it
  assert rows[0]['valid_reward_mean'] >= 0 and 'timing/checkpoint_s' in rows[1]
  with monkeypatch.context() as m:  # SIGTERM during the resumed run's first rollout: step 0 is on disk already
    m.setattr(preemption.Watcher, 'requested', lambda self, step: step == 0)
    with pytest.raises(preemption.Preempted):
      run(tmp_path, 'run', 2)
  assert [r['step'] for r in metrics.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')] == [0, 0]  # no second row
  run(tmp_path, 'run', 2)  # resumes from checkpoint 0, whose validation is done
  rows = metrics.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')
  assert [r['step'] for r in rows if 'valid_reward_mean' in r] == [0, 2]
  assert [r['step'] for r in rows if 'timing/checkpoint_s' in r] == [0, 2]


def test_a_second_trainer_in_the_same_workdir_is_refused_before_it_writes(tmp_path, in_repo):
  """Two trainers in one folder would write over each other's checkpoints and logs; the lock goes with its process."""
  import os
  import socket
  import subprocess
  import sys

  from rftjax import errors
  from rftjax import runfs

  workdir = tmp_path / 'run'
  workdir.mkdir()
  holder = subprocess.Popen(
    [sys.executable, '-c', 'import sys; from rftjax import runfs; held = runfs.lock(sys.argv[1]); '
     'print(1, flush=True); sys.stdin.read()', str(workdir)],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, 'PYTHONPATH': str(REPO)},
  )  # fmt: skip
  try:
    assert holder.stdout.readline().strip() == '1'
    with pytest.raises(errors.ConfigError) as e:
      run(tmp_path, 'run', 1)
    assert str(e.value).startswith(f'--workdir={workdir}: process {holder.pid} on {socket.gethostname()} (started ')
    assert str(e.value).endswith(') is training in it; expected no other trainer there (stop that one, or give '
                                 'this run another --workdir)')  # fmt: skip
    assert sorted(p.name for p in workdir.iterdir()) == [runfs.LOCK]  # no config.json, checkpoint or log
    said, alive = runfs.lock_holder(workdir)
    assert alive is True and said.startswith(f'process {holder.pid} ')
    assert runfs.held_by(workdir) == said  # asked of the lock itself

    def theirs(path, mode='r', *a, **k):  # another user's lock file (umask 022): readable, not writable
      if 'a' in mode:
        raise PermissionError(13, 'Permission denied', str(path))
      return open(path, mode, *a, **k)

    runfs.open = theirs
    try:
      with pytest.raises(errors.ConfigError, match=rf'^--workdir={workdir}: process {holder.pid} on .* is training'):
        runfs.lock(workdir)  # the trainer there is the news, not the permission
    finally:
      del runfs.open
    # a live run with checkpoints, resumed with other data: the lock's refusal, not "holds checkpoints of another
    # run ... (or delete that one to start over)" about a run still training
    (workdir / 'checkpoints' / '5').mkdir(parents=True)
    (workdir / 'config.json').write_text(json.dumps({'model': 'tiny', 'grpo': {}, 'data': {'train': 'other.jsonl'}}))
    with pytest.raises(errors.ConfigError, match=r'\) is training in it; expected no other trainer there'):
      run(tmp_path, 'run', 1)
    # said before the data is read (thousands of prompts to tokenize first, to be refused after)
    with pytest.raises(errors.ConfigError, match=r'\) is training in it; expected no other trainer there'):
      run(tmp_path, 'run', 1, **{'data.train': 'no/such.jsonl'})
  finally:
    holder.kill()
    holder.wait()
  assert runfs.lock_holder(workdir)[1] is False  # killed: the lock went with it, the file says who it was
  assert runfs.held_by(workdir) is None
  runfs.lock(workdir).close()


def test_long_prompts_can_be_skipped_instead_of_stopping_the_run(tmp_path, in_repo, caplog):
  lines = (REPO / 'data/tiny/train.jsonl').read_text().splitlines()[:40]
  long = json.dumps({'messages': [{'role': 'user', 'content': 'Largest digit: ' + '1 2 ' * 40}], 'answer': '2'})
  train = tmp_path / 'train.jsonl'
  train.write_text('\n'.join([*lines[:3], long, *lines[3:]]) + '\n')
  from rftjax import data

  with pytest.raises(data.DataError, match=r'train.jsonl:4: the prompt is \d+ tokens long, more than config.data.max'):
    run(tmp_path, 'strict', 1, **{'data.train': str(train)})
  with caplog.at_level('WARNING', logger='rftjax'):
    workdir = run(tmp_path, 'skip', 1, **{'data.train': str(train), 'data.skip_long_prompts': True})
  assert any(m.startswith('skipped 1 prompt longer than config.data.max_prompt_len=20') for m in caplog.messages)
  assert [r['step'] for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'train_reward_mean' in r] == [1]
  # the file cut under the same name: the saved data position would point at other prompts (it resumed silently)
  train.write_text('\n'.join(lines[:10]) + '\n')
  with pytest.raises(errors.ConfigError) as e:
    run(tmp_path, 'skip', 2, **{'data.train': str(train), 'data.skip_long_prompts': True})
  assert re.fullmatch(
    rf'--workdir={workdir}: checkpoint 1 cannot resume on this data: its data position is into 40 training '
    r'prompts \(fingerprint \w{12}\), this run has 10 \(fingerprint \w{12}\): other prompts, or in another order\. '
    r'config\.data\.train, data\.max_prompt_len, data\.skip_long_prompts or the chat template changed since; put them '
    r'back, or choose a new --workdir',
    str(e.value),
  ), str(e.value)


def test_openai_epochs_count_the_prompts_that_train(tmp_path, in_repo, monkeypatch, caplog):
  """openai.n_epochs=1 on 40 rows of which 30 are too long and skipped is one pass over the 10 that train (3 steps of
  4), not over 40 (10 steps: 4 passes); the log and config.json say the count used."""
  lines = (REPO / 'data/tiny/train.jsonl').read_text().splitlines()[:10]
  long = json.dumps({'messages': [{'role': 'user', 'content': 'Largest digit: ' + '1 2 ' * 40}], 'answer': '2'})
  train = tmp_path / 'train.jsonl'
  train.write_text('\n'.join([*lines, *[long] * 30]) + '\n')
  seen = {}
  monkeypatch.setattr(trainer, '_train', lambda config, spec, *a: seen.update(config=config, spec=spec) or {})
  overrides = {'data.train': str(train), 'data.skip_long_prompts': True, 'openai.n_epochs': 1, 'batch_size': 4}
  with caplog.at_level('INFO', logger='rftjax'):
    run(tmp_path, 'skip', 99, **overrides)
  assert seen['config'].total_steps == 3 and seen['spec'].total_steps == 3
  notes = [m for m in caplog.messages if m.startswith('hparams: total_steps')]
  assert notes == [
    'hparams: total_steps = 3 (ceil(n_epochs 1 x 10 examples / batch_size 4); n_epochs openai.n_epochs=1.0)'
  ]


def test_resume_calls_only_a_checkpoint_of_other_shapes_a_config_error(tmp_path, in_repo, monkeypatch):
  """Params of other shapes (a model file replaced under the same path: config.json cannot tell) are a one-line
  ConfigError naming the leaf; a checkpoint that fails to read for another reason keeps its own error and traceback."""
  from rftjax import checkpoint
  from rftjax import loader

  run(tmp_path, 'one', 1)
  model_config = loader.model_config
  monkeypatch.setattr(loader, 'model_config', lambda *a: dataclasses.replace(model_config(*a), mlp_dim=256))
  other = (
    r'--workdir=.*/one: checkpoint 1 does not fit this config \(params.layers.mlp.down: the checkpoint holds shape '
    r'\(4, 512, 128\), this config expects \(4, 256, 128\)\); was it written with another model'
  )
  with pytest.raises(errors.ConfigError, match=other):
    run(tmp_path, 'one', 2)
  monkeypatch.setattr(loader, 'model_config', model_config)

  def unreadable(self, step, abstract_state):
    raise ValueError(f'restoring {self.directory}/{step} into abstract_state failed: Error reading "d/abc": corrupt')

  monkeypatch.setattr(checkpoint.Checkpointer, 'restore', unreadable)
  with pytest.raises(ValueError, match='corrupt') as raised:
    run(tmp_path, 'one', 2)
  assert not isinstance(raised.value, errors.UserError)


def test_training_twice_in_one_process_leaves_nothing_behind(tmp_path, in_repo, monkeypatch):
  """A notebook trains again in the same process: a stopped run's progress bar stayed open (the next was drawn a
  line lower, with a cursor-up a notebook prints as a new line per refresh), and each run added a compile-time
  listener to jax.monitoring for good."""
  import tqdm
  from jax._src import monitoring

  from rftjax import preemption

  listeners = list(monitoring._event_duration_secs_listeners)
  monkeypatch.setattr(cli, 'redraws_in_place', lambda stream: True)  # a notebook's output: the bar is drawn
  with monkeypatch.context() as m:
    m.setattr(preemption.Watcher, 'requested', lambda self, step: step == 2)
    with pytest.raises(preemption.Preempted) as stopped:  # kept, as a notebook keeps the last traceback
      run(tmp_path, 'run', 3, progress=True)
  assert stopped.value.step == 2 and not [bar for bar in tqdm.tqdm._instances if bar.desc == 'rft']
  assert monitoring._event_duration_secs_listeners == listeners
  run(tmp_path, 'run', 3, progress=True)  # resumed at step 2
  assert not [bar for bar in tqdm.tqdm._instances if bar.desc == 'rft']
  assert monitoring._event_duration_secs_listeners == listeners


def test_each_run_in_a_process_compiles_into_its_own_cache(tmp_path):
  """Where the environment sets no compilation cache, a run keeps its own next to it; a second run in the same
  process (a notebook) wrote into the first one's folder, which may be gone."""
  from jax.experimental.compilation_cache import compilation_cache

  chosen, least = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update('jax_compilation_cache_dir', None)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  compilation_cache.reset_cache()
  try:
    entries = {}
    for name, k in (('a', 3.0), ('b', 5.0)):
      run = types.SimpleNamespace(compile_cache=tmp_path / name / '.jax_cache')
      with trainer._compile_cache(run):
        assert jax.config.jax_compilation_cache_dir == str(run.compile_cache)
        jax.jit(lambda x, k=k: jnp.sin(x) * k + k)(jnp.arange(11.0 + k)).block_until_ready()
      assert jax.config.jax_compilation_cache_dir is None
      entries[name] = sorted(p.name for p in run.compile_cache.iterdir())
      assert any(e.startswith('jit__lambda') for e in entries[name])  # what it compiled is there
    assert sorted(p.name for p in (tmp_path / 'a' / '.jax_cache').iterdir()) == entries['a']  # b wrote none there
  finally:
    jax.config.update('jax_compilation_cache_dir', chosen)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', least)
    compilation_cache.reset_cache()


def test_a_run_folder_copied_without_its_checkpoints_is_not_started_over(tmp_path, in_repo):
  """A copy of a run made without checkpoints/: training there started from step 0 without a word, and replaced
  the logs of the run it held."""
  workdir = run(tmp_path, 'run', 2)
  shutil.rmtree(workdir / 'checkpoints')
  logs = (workdir / 'metrics.jsonl').read_text()
  with pytest.raises(errors.ConfigError) as e:
    run(tmp_path, 'run', 4)
  assert str(e.value) == (
    f'--workdir={workdir}: its metrics.jsonl logs a run up to step 2, but its checkpoints/ holds no checkpoint '
    '(copied without them, or deleted?); training there would start over and replace those logs. Restore the '
    'checkpoints to resume, or choose a new --workdir (or delete metrics.jsonl and events.jsonl there to start over)'
  )
  assert (workdir / 'metrics.jsonl').read_text() == logs
  (workdir / 'checkpoints' / '0.orbax-checkpoint-tmp').mkdir(parents=True)  # its first save cut short instead
  run(tmp_path, 'run', 1)  # starts over, as a run stopped before its first checkpoint does
  assert [r['step'] for r in metrics.read_jsonl(workdir / 'metrics.jsonl') if 'train_reward_mean' in r] == [1]
