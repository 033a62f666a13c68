"""Host side of a step: dynamic sampling changes what is trained on; advantages and masks from rollouts."""

import dataclasses
import types

import jax
import numpy as np
import pytest

from rftjax import graders
from rftjax import presets
from rftjax import rollout

G = 2


def fake_rollout(group_rewards, tag):
  """One group per entry of group_rewards (a pair of rewards); tokens carry `tag` so rows are traceable."""
  rewards = np.asarray(group_rewards, np.float32).reshape(-1)
  n = len(rewards)
  return rollout.Rollout(
    prompt_tokens=np.zeros((n, 3), np.int32),
    prompt_mask=np.ones((n, 3), bool),
    tokens=np.full((n, 2), tag, np.int32) + np.arange(n)[:, None] * 100,
    mask=np.ones((n, 2), np.float32),
    logprobs=np.zeros((n, 2), np.float32),
    lengths=np.full(n, 2),
    truncated=np.zeros(n, bool),
    rewards=rewards,
    results=[graders.GradeResult(float(x)) for x in rewards],
    texts=[f'{tag}:{i}' for i in range(n)],
    discard=np.zeros(n, bool),
    episodes=[None] * n,
  )


ROUNDS = [
  [(1, 0), (1, 1), (0, 1), (0, 0)],  # half the groups have zero variance
  [(0, 0), (1, 0), (1, 1), (1, 1)],
  [(0, 1), (0, 0), (0, 0), (0, 0)],
]


class CannedRollouts(rollout.Rollouts):
  """Rollouts whose draws are the canned rounds above, so the selection logic runs without a model."""

  def __init__(self, dynamic: bool, max_rounds: int):
    cfg = rollout.RolloutConfig(
      num_generations=G, prompts=4, max_new_tokens=2, dynamic_sampling=dynamic, max_resample_rounds=max_rounds
    )
    super().__init__(cfg, types.SimpleNamespace(tools=()), [], [], None, None, None, None, None, jax.random.key(0))
    self.draws = 0

  def draw(self, params, rng):
    self.draws += 1
    return fake_rollout(ROUNDS[self.draws - 1], tag=self.draws), 0.5, 0.25


def collect(dynamic: bool, max_rounds: int = 3):
  captured = {}
  rollouts = CannedRollouts(dynamic, max_rounds)
  real = rollout.make_batch
  rollout.make_batch = lambda r, cfg, mesh, shapes=None: captured.setdefault('r', r)
  try:
    _, stats, timings = rollouts(None, 0)
  finally:
    rollout.make_batch = real
  assert timings == {'sampling_s': 0.5 * rollouts.draws, 'grading_s': 0.25 * rollouts.draws}
  return captured['r'], stats['sampling_rounds']


def test_without_dynamic_sampling_zero_variance_groups_are_trained_on():
  r, n = collect(dynamic=False)
  assert n == 1 and r.texts == fake_rollout(ROUNDS[0], 1).texts
  assert r.mask.sum() == 16  # every row (8 x 2 tokens), flat groups included, gets a loss


def test_dynamic_sampling_keeps_only_groups_with_signal():
  r, n = collect(dynamic=True)
  assert n == 3  # 2 signal groups in round 1, +1 in round 2, +1 in round 3
  assert r.texts == ['1:0', '1:1', '1:4', '1:5', '2:2', '2:3', '3:0', '3:1']
  groups = r.rewards.reshape(4, G)
  assert (groups.max(1) != groups.min(1)).all()
  assert r.mask.sum() == 16


def test_dynamic_sampling_shortfall_is_masked_out(caplog):
  with caplog.at_level('WARNING', logger='rftjax'):
    r, n = collect(dynamic=True, max_rounds=1)
  assert n == 2  # bounded: one extra round only
  # said on the console (metrics.jsonl's zero_std_group_frac was the only trace)
  assert caplog.messages == [
    'step 1: dynamic sampling found 3 of 4 groups with reward variance after 2 draws (grpo.max_resample_rounds=1); '
    'the other 1 train nothing this step'
  ]
  assert r.texts[:6] == ['1:0', '1:1', '1:4', '1:5', '2:2', '2:3']
  np.testing.assert_array_equal(r.mask.sum(1), [2, 2, 2, 2, 2, 2, 0, 0])  # the filler group gets no loss


def test_a_stop_between_dynamic_sampling_draws_ends_the_step_without_more_draws():
  """A SIGTERM while dynamic sampling still wants draws: asked before each extra draw, the step ends at once (the
  trainer then drops it and saves the step before it) instead of drawing up to max_resample_rounds more."""
  asked = []
  rollouts = CannedRollouts(dynamic=True, max_rounds=3)
  with pytest.raises(rollout.RolloutStopped, match=r'^step 1: stopped after 1 dynamic-sampling draws$'):
    rollouts(None, 0, stop=lambda: asked.append(1) or True)
  assert rollouts.draws == 1 and asked == [1]
  r, n = collect(dynamic=True)  # no stop asked for: the three draws of the test above
  assert n == 3


def test_make_batch_overlong_penalty_and_truncation_mask():
  r = fake_rollout([(1, 1), (0, 1)], tag=1)
  r.lengths = np.asarray([4, 8, 8, 2])
  r.truncated = np.asarray([False, True, False, False])
  cfg = rollout.RolloutConfig(
    num_generations=G,
    prompts=2,
    max_new_tokens=8,
    advantage='grpo',
    scale_rewards='group',
    overlong_buffer=4,
    overlong_penalty=1.0,
    mask_truncated=True,
  )
  batch = rollout.make_batch(r, cfg, mesh=None)
  # shaped rewards: len 4 <= 8 - 4 -> 0 penalty; len 8 = max -> -1; len 2 -> 0  =>  [1, 0, -1, 1]
  # group (1, 0): mean .5, std .5 -> (+1, -1); group (-1, 1): mean 0, std 1 -> (-1, +1)   (eps 1e-4 in the std)
  np.testing.assert_allclose(np.asarray(batch.advantages), [1, -1, -1, 1], atol=1e-3)
  np.testing.assert_array_equal(np.asarray(batch.completion_mask).sum(1), [2, 0, 2, 2])  # truncated row: no loss


@pytest.mark.parametrize('advantage,scale', [('grpo', 'none'), ('grpo', 'group'), ('grpo', 'batch'), ('rloo', 'none')])
def test_discarded_rollouts_get_no_loss_and_move_no_advantage(advantage, scale):
  """A rollout whose tool or endpoint grader failed for good: its loss mask is zeroed and it takes no part in its
  group's mean and std (or the batch's), so the other rows' advantages are those of the groups without it."""
  r = fake_rollout([(1, 0, 0, 1), (1, 1, 0, 0)], tag=1)
  r.results[5] = graders.GradeResult(0.0, metadata={'discard': True})  # an endpoint grader gave up on row 5
  r.discard[2] = True  # a tool gave up on row 2 (the episode marks it before grading)
  r = r.graded(r.results)
  r.lengths[:] = 1
  r.lengths[2] = 2  # and it ran long: an overlong penalty on it would move its group's mean
  cfg = rollout.RolloutConfig(
    num_generations=4, prompts=2, max_new_tokens=2, advantage=advantage, scale_rewards=scale, overlong_buffer=1
  )
  batch = rollout.make_batch(r, cfg, mesh=None)
  np.testing.assert_array_equal(np.asarray(batch.completion_mask).sum(1), [2, 2, 0, 2, 2, 0, 2, 2])
  kept = np.asarray(batch.advantages)[[0, 1, 3, 4, 6, 7]]
  # the kept rows, hand-computed: group 1 (1, 0, 1), mean 2/3; group 2 (1, 0, 0), mean 1/3 (lengths 1: no penalty)
  centred = np.asarray([1 / 3, -2 / 3, 1 / 3, 2 / 3, -1 / 3, -1 / 3])
  expected = {
    'none': centred,
    'group': centred / (np.sqrt(2 / 9) + 1e-4),
    'batch': centred / (np.std([1, 0, 1, 1, 0, 0]) + 1e-4),
  }[scale] * (3 / 2 if advantage == 'rloo' else 1)  # rloo: the mean of the other two kept rows
  np.testing.assert_allclose(kept, expected, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(batch.advantages)[[2, 5]], [0, 0])
  assert rollout.rollout_metrics(r, 4)['discarded_frac'] == 0.25
  # row 5's grader gave no verdict, row 2's reward was earned against a broken tool: both out of the mean and std
  m = rollout.rollout_metrics(r, 4)
  counted = np.delete(r.rewards, [2, 5])
  assert r.results[2].metadata['discard'] and not r.results[1].metadata.get('discard')
  assert m['train/num_discarded'] == 2.0 and m['train_reward_mean'] == pytest.approx(counted.mean())
  assert m['train_reward_std'] == pytest.approx(counted.std()) and counted.std() != pytest.approx(r.rewards.std())


@pytest.mark.parametrize('advantage,scale', [('grpo', 'batch'), ('gdpo', 'batch')])
def test_groups_kept_only_to_fill_the_batch_move_no_advantage(advantage, scale):
  """Dynamic sampling that found one group with signal fills the batch with zero-variance groups, loss masked: their
  rewards took part in the batch's std, so the one group's advantages depended on them (3.10 with all-0 fillers,
  1.92 with all-1, 1.73 alone). Now they are the group's alone."""
  got = []
  for filler in (0, 1):
    parts = [fake_rollout([(1, 0, 0, 0), (filler,) * 4, (filler,) * 4, (filler,) * 4], tag=1)]
    r, n_signal = rollout.keep_signal(parts, 4, 4)
    assert n_signal == 4
    r = dataclasses.replace(r, results=[graders.GradeResult(x.reward, {'a': x.reward}) for x in r.results])
    cfg = rollout.RolloutConfig(
      num_generations=4, prompts=4, max_new_tokens=2, advantage=advantage, scale_rewards=scale,
      gdpo_weights=(('a', 1.0),),
    )  # fmt: skip
    got.append(np.asarray(rollout.make_batch(r, cfg, mesh=None).advantages))
  centred = np.asarray([0.75, -0.25, -0.25, -0.25])
  np.testing.assert_allclose(got[0][:4], centred / (np.std([1, 0, 0, 0]) + 1e-4), rtol=1e-3)
  np.testing.assert_array_equal(got[0], got[1])
  np.testing.assert_array_equal(got[0][4:], 0)


def test_gdpo_groups_whose_totals_tie_still_have_signal():
  """Sub-rewards a, b, c of one group: each column differs but every total is 1. GDPO normalises each column alone,
  so the group trains (advantages +-1 after the batch std); dynamic sampling dropped it by the totals."""
  subs = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1)]
  tied = fake_rollout([(1, 1, 1, 1)], tag=1)
  tied = dataclasses.replace(tied, results=[graders.GradeResult(1.0, dict(zip('abc', s))) for s in subs])
  flat = fake_rollout([(0, 0, 0, 0)], tag=2)
  flat = dataclasses.replace(flat, results=[graders.GradeResult(0.0, {'a': 0, 'b': 0, 'c': 0})] * 4)
  weights = (('a', 1.0), ('b', 1.0), ('c', 1.0))
  r, n_signal = rollout.keep_signal([flat, tied], 1, 4, weights)
  assert n_signal == 4 and r.texts == tied.texts
  assert rollout.keep_signal([flat, tied], 1, 4)[1] == 0  # GRPO: the totals are all it trains on
  assert rollout.keep_signal([tied], 1, 4, (('a', 0.0), ('c', 1.0)))[1] == 4  # c alone differs
  assert rollout.keep_signal([tied], 1, 4, (('a', 0.0),))[1] == 0  # a weight of 0 moves nothing
  assert rollout.rollout_metrics(tied, 4, gdpo_weights=weights)['zero_std_group_frac'] == 0.0
  assert rollout.rollout_metrics(tied, 4)['zero_std_group_frac'] == 1.0
  cfg = rollout.RolloutConfig(num_generations=4, prompts=1, max_new_tokens=2, advantage='gdpo', gdpo_weights=weights)
  advantages = np.asarray(rollout.make_batch(r, cfg, mesh=None).advantages)
  assert np.all(np.abs(advantages) > 0.99), advantages


def test_bucket_lengths():
  assert [rollout.bucket(n, 48) for n in (1, 16, 17, 24, 25, 40, 41, 48)] == [16, 16, 24, 24, 40, 40, 48, 48]
  assert [rollout.bucket(n, 64, parts=2) for n in (1, 32, 33, 64)] == [32, 32, 64, 64]
  assert rollout.bucket(5, 7) == 7  # limits below 8 are one bucket


def test_make_batch_cuts_padding_columns_without_changing_logprobs():
  """Columns that are padding in every row are cut to a bucket; the logprobs of the real tokens stay the same."""
  from rftjax import model
  from rftjax import train_step

  cfg = presets.tiny(vocab_size=64)
  params = model.init_params(cfg, 1)
  rng = np.random.default_rng(0)
  n, p, lengths, prompt_lens = 48, 64, [9, 3, 14, 1], [5, 12, 7, 12]
  r = fake_rollout([(1, 0), (0, 1)], tag=1)
  r.prompt_tokens, r.prompt_mask = np.zeros((4, p), np.int32), np.zeros((4, p), bool)
  r.tokens, r.mask = np.zeros((4, n), np.int32), np.zeros((4, n), np.float32)
  for i, (length, plen) in enumerate(zip(lengths, prompt_lens)):
    r.prompt_tokens[i, p - plen :], r.prompt_mask[i, p - plen :] = rng.integers(4, 64, plen), True
    r.tokens[i, :length], r.mask[i, :length] = rng.integers(4, 64, length), 1.0
  r.logprobs, r.lengths = np.zeros((4, n), np.float32), np.asarray(lengths)
  batch = rollout.make_batch(r, rollout.RolloutConfig(num_generations=G, prompts=2, max_new_tokens=n), mesh=None)
  assert batch.completion_tokens.shape == (4, 16) and batch.prompt_tokens.shape == (4, 32)  # longest 14 and 12
  full = train_step.Batch(
    prompt_tokens=r.prompt_tokens,
    prompt_mask=r.prompt_mask,
    completion_tokens=r.tokens,
    completion_mask=r.mask,
    advantages=np.zeros(4, np.float32),
    sampler_logp=r.logprobs,
  )
  cut_logp = np.asarray(train_step.token_logprobs(params, cfg, batch, 1.0))
  full_logp = np.asarray(train_step.token_logprobs(params, cfg, full, 1.0))
  np.testing.assert_allclose(cut_logp * r.mask[:, :16], full_logp[:, :16] * r.mask[:, :16], atol=1e-5)

  # a run that compiled the full shape before (for longer rows) gives this batch that shape while a compile costs
  # more than the padding; the logprobs stay the same
  rc, picker = rollout.RolloutConfig(num_generations=G, prompts=2, max_new_tokens=n), rollout.ShapePicker()
  longer = dataclasses.replace(r, lengths=np.asarray([44, 3, 14, 1]), prompt_mask=np.ones((4, p), bool))
  assert rollout.make_batch(longer, rc, None, picker).completion_tokens.shape == (4, 48)
  picker.observe(training_s=1.0, compile_s=100.0)
  wide = rollout.make_batch(r, rc, None, picker)
  assert wide.completion_tokens.shape == (4, 48) and wide.prompt_tokens.shape == (4, 64) and wide.group_size == 1
  wide_logp = np.asarray(train_step.token_logprobs(params, cfg, wide, 1.0))
  np.testing.assert_allclose(wide_logp * r.mask, full_logp * r.mask, atol=1e-5)


def test_batches_share_prompts_only_when_every_group_has_one_prompt():
  """make_batch marks a batch whose rows come in groups of G identical prompts (then the train step computes each
  prompt once); one row with another prompt makes it a per-row batch."""
  cfg = rollout.RolloutConfig(num_generations=G, prompts=2, max_new_tokens=2)
  r = fake_rollout([(1, 0), (0, 1)], tag=1)
  r.prompt_tokens[:] = [[0, 5, 6], [0, 5, 6], [7, 8, 9], [7, 8, 9]]
  assert rollout.make_batch(r, cfg, mesh=None).group_size == G
  r.prompt_tokens[3, 0] = 4
  assert rollout.make_batch(r, cfg, mesh=None).group_size == 1
  r.prompt_tokens[3, 0] = 7
  r.prompt_mask[3, 0] = False  # the same tokens, but one of them padding: another prompt
  assert rollout.make_batch(r, cfg, mesh=None).group_size == 1


def grouped_rollout(rng, lengths, g: int, n: int, p: int) -> rollout.Rollout:
  """Two groups of g rows sharing a random p-token prompt each, with random completions of these lengths."""
  r = fake_rollout([(1, 0, 0, 1), (0, 1, 1, 0)], tag=1)
  r.prompt_tokens = np.repeat(rng.integers(4, 64, (2, p)), g, axis=0).astype(np.int32)
  r.prompt_mask = np.ones((2 * g, p), bool)
  r.tokens, r.mask = rng.integers(4, 64, (2 * g, n)).astype(np.int32), np.zeros((2 * g, n), np.float32)
  for i, length in enumerate(lengths):
    r.mask[i, :length] = 1.0
  r.logprobs, r.lengths = np.zeros((2 * g, n), np.float32), np.asarray(lengths)
  r.truncated = np.zeros(2 * g, bool)
  return r


def assert_packed_logprobs_match(params, cfg, batch):
  """The packed batch's logprobs of the loss tokens equal those of one row per completion."""
  from rftjax import train_step

  per_row = batch.replace(group_size=1, pack_row=None, pack_start=None, pack_rows=0, pack_groups=1)
  mask = np.asarray(batch.completion_mask)
  got = np.asarray(train_step.token_logprobs(params, cfg, batch, 1.0)) * mask
  want = np.asarray(train_step.token_logprobs(params, cfg, per_row, 1.0)) * mask
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.abs(want).max() > 0.1


def test_make_batch_packs_each_groups_completions_without_changing_logprobs():
  """Shared prompts: each group's completions go into as few rows of the cut width as hold them (a discarded row
  takes no room: it has no loss tokens), and the logprobs of the loss tokens stay those of one row per completion."""
  from rftjax import model

  cfg = presets.tiny(vocab_size=64)
  params = model.init_params(cfg, 1)
  rng = np.random.default_rng(1)
  g, n, p = 4, 48, 8
  lengths = np.asarray([14, 3, 9, 6, 11, 12, 2, 13])
  r = grouped_rollout(rng, lengths, g, n, p)
  r.discard[5] = True
  batch = rollout.make_batch(r, rollout.RolloutConfig(num_generations=g, prompts=2, max_new_tokens=n), mesh=None)
  assert batch.completion_tokens.shape == (8, 16) and batch.group_size == g
  # rows of 15 holding each completion but its last token: group 1 (13, 8, 5, 2) -> [13, 2], [8, 5];
  # group 2 (12, 10, 1, discarded: 0) -> [12, 1, 0], [10]
  assert batch.pack_rows == 2
  np.testing.assert_array_equal(np.asarray(batch.pack_row), [0, 0, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(batch.pack_start), [0, 13, 0, 8, 0, 13, 12, 0])
  assert_packed_logprobs_match(params, cfg, batch)
  assert np.asarray(batch.completion_mask)[5].sum() == 0


def test_make_batch_packs_groups_together_when_fewer_rows_hold_them():
  """Two groups whose completions fit fewer rows together than apart share rows (one part of 2 groups), and the
  logprobs stay those of one row per completion; a mesh whose shards split the groups, or microbatches that would
  split a part, keep each group to its own rows."""
  from rftjax import model
  from rftjax import sharding

  cfg = presets.tiny(vocab_size=64)
  params = model.init_params(cfg, 1)
  rng = np.random.default_rng(2)
  g, n, p = 4, 16, 8
  lengths = np.asarray([10, 10, 1, 1, 6, 6, 1, 1])  # rows of 15: apart [9], [9] | [5, 5]; together [9, 5] x 2
  r = grouped_rollout(rng, lengths, g, n, p)
  r.prompt_mask[4:, :3] = False  # the second prompt is shorter: its completions' positions differ
  rc = rollout.RolloutConfig(num_generations=g, prompts=2, max_new_tokens=n, key_costs=rollout.key_costs(cfg))
  assert rollout.part_sizes(rc, None, p) == [1, 2]
  batch = rollout.make_batch(r, rc, mesh=None)
  assert (batch.pack_groups, batch.pack_rows) == (2, 2)
  np.testing.assert_array_equal(np.asarray(batch.pack_row), [0, 1, 0, 0, 0, 1, 0, 0])  # one-token ones: no room
  np.testing.assert_array_equal(np.asarray(batch.pack_start), [0, 0, 14, 14, 9, 9, 14, 14])
  assert_packed_logprobs_match(params, cfg, batch)

  mesh = sharding.make_mesh({'data': 4, 'fsdp': 2, 'tensor': 1})  # 8 shards: a group spans several
  assert rollout.part_sizes(rc, mesh, p) == [1]
  assert rollout.make_batch(r, rc, mesh).pack_groups == 1
  assert rollout.part_sizes(dataclasses.replace(rc, microbatches=2), None, p) == [1]
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 1, 'tensor': 4})  # 2 shards of 4 groups each
  assert rollout.part_sizes(dataclasses.replace(rc, prompts=8), mesh, p) == [1, 4]
  # keys that cost more (longer prompts, a costlier attention) stop at the part that adds at most a quarter:
  # 1 + 0.02 x (A x 8 + 16) is 1.48, 1.64, 1.96 at A = 1, 2, 4
  assert rollout.part_sizes(dataclasses.replace(rc, prompts=8, key_costs=(0.02, 0.0)), mesh, p) == [1, 2]


@pytest.mark.parametrize('name', ['smollm2_135m', 'gemma3_270m'])
def test_key_memory_is_what_the_planner_counts(name):
  """`rollout.key_costs`' memory figure (a key's kept attention probabilities against a token's kept arrays, which
  decides whether groups may share rows) is the ratio rftjax.plan counts for a layer: the two must not drift."""
  import jax.numpy as jnp

  from rftjax import plan

  cfg = getattr(presets, name)()
  one = plan._MeshShape({'data': 1, 'fsdp': 1, 'tensor': 1})
  per_token = plan._layer_activations(cfg, 1, 1, 0, jnp.float32, one)
  per_key = plan._layer_activations(cfg, 1, 1, 1, jnp.float32, one) - per_token
  assert rollout.key_costs(cfg)[1] == pytest.approx(per_key / per_token, rel=1e-12)


def test_shape_picker_reuses_a_compiled_shape_until_its_padding_costs_a_compile():
  """Ski rental: a batch takes a compiled wider shape while the padding that adds (cost difference x the measured
  seconds per unit) sums to less than the last compile took; then its own shape compiles, and is reused."""
  wide, narrow = rollout.Shape(8, 48, 1, 4), rollout.Shape(8, 24, 1, 4)
  cost = lambda s: float(s.width)  # noqa: E731
  holds = lambda s: True  # noqa: E731
  picker = rollout.ShapePicker()
  assert picker.pick(wide, holds, cost) == wide  # nothing compiled yet
  picker.observe(training_s=10.0, compile_s=6.0)  # 10 s for 48 units; a compile costs 6 s
  assert picker.pick(narrow, holds, cost) == wide  # 24 units of padding: 5 s < 6 s
  assert picker.padding_s == pytest.approx(5.0)
  picker.observe(training_s=10.0, compile_s=0.0)  # a reused shape compiles nothing: the 6 s estimate stays
  assert picker.compile_s == 6.0
  assert picker.pick(narrow, holds, cost) == narrow  # 5 + 5 s >= 6 s: compile it
  assert picker.padding_s == 0.0 and list(picker.seen) == [wide, narrow]
  picker.observe(training_s=5.0, compile_s=7.0)
  assert picker.pick(narrow, holds, cost) == narrow  # compiled: no padding
  other = rollout.Shape(16, 24, 1, 4)
  assert picker.pick(other, lambda s: s.prompt >= 16, cost) == other  # nothing compiled holds a wider prompt
  assert len(picker.seen) == 3


def test_a_shape_pickers_state_picks_after_a_resume_as_it_would_have(tmp_path):
  """The picker's history goes into each checkpoint: without it a resumed run had compiled nothing, took the ~1 s
  of loading a cached shape as the price of a compile, and compiled a shape the run would have reused."""
  import json

  wide, narrow = rollout.Shape(8, 48, 1, 4), rollout.Shape(8, 24, 1, 4)
  cost, holds = (lambda s: float(s.width)), (lambda s: True)  # noqa: E731
  picker = rollout.ShapePicker()
  picker.pick(wide, holds, cost)
  picker.observe(training_s=10.0, compile_s=6.0)
  saved = json.loads(json.dumps(picker.state()))  # as the checkpoint's JSON keeps it
  resumed, fresh = rollout.ShapePicker(), rollout.ShapePicker()
  resumed.restore(saved)
  fresh.restore(None)  # a checkpoint from before: as new
  assert resumed.pick(narrow, holds, cost) == picker.pick(narrow, holds, cost) == wide  # 5 s of padding < 6 s
  assert resumed.state() == picker.state() and resumed.padding_s == pytest.approx(5.0)
  assert fresh.pick(narrow, holds, cost) == narrow


def test_make_batch_takes_a_compiled_wider_shape_without_changing_logprobs():
  """After a batch of long completions, one of short completions takes the long one's compiled shape (wider, more
  rows) while a compile costs more than the padding, and its logprobs stay those of one row per completion; when
  compiles cost nothing it takes its own narrower shape."""
  from rftjax import model

  cfg = presets.tiny(vocab_size=64)
  params = model.init_params(cfg, 1)
  rng = np.random.default_rng(3)
  g, n, p = 4, 48, 8
  rc = rollout.RolloutConfig(num_generations=g, prompts=2, max_new_tokens=n, key_costs=rollout.key_costs(cfg))

  def batch_of(lengths, picker):
    return rollout.make_batch(grouped_rollout(rng, lengths, g, n, p), rc, None, picker)

  long_ones, short_ones = [40, 30, 44, 20, 35, 41, 12, 25], [5, 9, 3, 7, 10, 2, 6, 8]
  for compile_s, want_width in ((100.0, 48), (0.0, 16)):
    picker = rollout.ShapePicker()
    first = batch_of(long_ones, picker)
    assert first.completion_tokens.shape[1] == 48
    picker.observe(training_s=1.0, compile_s=compile_s)
    batch = batch_of(short_ones, picker)
    assert batch.completion_tokens.shape[1] == want_width
    if want_width == 48:  # the first batch's shape, rows included
      assert (batch.pack_rows, batch.pack_groups) == (first.pack_rows, first.pack_groups)
      assert batch.pack_rows > int(np.asarray(batch.pack_row).max()) + 1  # rows of padding only
    assert_packed_logprobs_match(params, cfg, batch)


def test_sampling_cuts_prompts_to_a_bucket_of_the_longest_with_the_same_completions(monkeypatch):
  """Prompts of 3-9 tokens with data.max_prompt_len 64: the sampler prefills 16 columns, not 64 (a validation of
  short prompts took 17x as long at 256), and the completions are those of the full width; the Rollout keeps it."""
  from rftjax import model
  from rftjax import sampler as sampler_lib

  cfg = presets.tiny(vocab_size=64)
  params = model.init_params(cfg, 2)
  rng = np.random.default_rng(1)
  prompts = [list(rng.integers(5, 64, n)) for n in (3, 9, 5, 7)]
  s = sampler_lib.Sampler(cfg, 64, 6, stop_ids=(1,), params=sampler_lib.SamplingParams(1.0))
  monkeypatch.setattr(rollout, '_WIDTHS', {})  # no width compiled before in this process
  widths = []
  call = sampler_lib.Sampler.__call__
  monkeypatch.setattr(
    sampler_lib.Sampler, '__call__', lambda self, *a: widths.append(self.max_prompt_len) or call(self, *a)
  )
  tok = types.SimpleNamespace(
    decode=lambda ids: ' '.join(map(str, ids)), decode_completion=lambda ids, cut: ' '.join(map(str, ids))
  )
  r = rollout.sample(s, params, prompts, tok, jax.random.key(3), mesh=None)
  full = jax.device_get(call(s, params, *sampler_lib.pad_prompts(prompts, 64, 0), jax.random.key(3)))
  assert widths == [16] and r.prompt_tokens.shape == (4, 64)
  np.testing.assert_array_equal(r.tokens, full.tokens)
  np.testing.assert_allclose(r.logprobs, full.logprobs, atol=1e-5)
  # a width compiled before serves prompts it pads at most 2x; shorter ones get their own bucket
  rollout._WIDTHS.clear()
  assert [rollout._prompt_width(s, n) for n in (40, 30, 12, 9, 33)] == [48, 48, 16, 16, 48]  # 30: 48, not 32


def test_validation_batches_hold_whole_groups_of_eval_samples(monkeypatch):
  """eval_samples=3 with an eval batch of 4 rows: batches cut groups apart, so no batch prefilled its prompts once
  (2.8x the time a row in the scale audit); batches are now rounded up to whole groups."""
  from rftjax import inference
  from rftjax import model
  from rftjax import sampler as sampler_lib

  cfg = presets.tiny(vocab_size=64)
  params = model.init_params(cfg, 2)
  prompts = [p for p in ([5, 6, 7], [8, 9], [10, 11, 12, 13]) for _ in range(3)]
  s = sampler_lib.Sampler(cfg, 8, 3, stop_ids=(1,), params=sampler_lib.SamplingParams(1.0), group_size=3)
  groups = []
  call = sampler_lib.Sampler.__call__
  monkeypatch.setattr(
    sampler_lib.Sampler, '__call__', lambda self, *a: groups.append(self.group_size) or call(self, *a)
  )
  tok = types.SimpleNamespace(
    decode=lambda ids: ' '.join(map(str, ids)), decode_completion=lambda ids, cut: ' '.join(map(str, ids))
  )
  got = list(inference._host_batches(s, params, prompts, tok, mesh=None, rng=jax.random.key(0), batch_size=4))
  assert [rows for rows, _ in got] == [[0, 1, 2, 3, 4, 5], [6, 7, 8]] and groups == [3, 3]


def test_a_long_validation_pass_says_how_far_it_got(caplog):
  from rftjax import inference

  report = inference.progress_log('step 5: validating', every_s=0.0)
  with caplog.at_level('INFO', logger='rftjax'):
    report(64, 1000)
    report(1000, 1000)  # the pass's own line follows
  assert [m.split(' (')[0] for m in caplog.messages] == ['step 5: validating: 64/1000 prompts']
  quiet = inference.progress_log('validation')  # the first 30 s say nothing
  caplog.clear()
  with caplog.at_level('INFO', logger='rftjax'):
    quiet(64, 1000)
  assert caplog.messages == []


def test_a_step_that_mask_truncated_masks_whole_is_said_once(caplog, monkeypatch):
  rollouts = CannedRollouts(dynamic=False, max_rounds=0)
  rollouts.cfg = dataclasses.replace(rollouts.cfg, mask_truncated=True)
  cut = lambda self, params, rng: (dataclasses.replace(fake_rollout(ROUNDS[0], 1), truncated=np.ones(8, bool)), 0, 0)  # noqa: E731
  monkeypatch.setattr(CannedRollouts, 'draw', cut)
  monkeypatch.setattr(rollout, 'make_batch', lambda r, cfg, mesh, shapes=None: None)
  with caplog.at_level('WARNING', logger='rftjax'):
    rollouts(None, 0)
    rollouts(None, 1)
  assert [m.split(': the step')[0] for m in caplog.messages] == [
    'step 1: every completion reached sampling.max_new_tokens=2 without a stop token, and grpo.mask_truncated masks '
    'such completions out of the loss'
  ]
