"""The collapse guard on hand-made metric streams: each alarm fires at the record it should and not before, patience,
min_delta and the noise bound hold, healthy noisy runs stay quiet, and a resumed guard counts like an unbroken one."""

import inspect
import json
import math
import re

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from rftjax import export
from rftjax import graders
from rftjax import grpo
from rftjax import guard
from rftjax import rollout


def make_cfg(**fields):
  c = guard.add_guard_fields(ml_collections.ConfigDict()).guard
  for k, v in fields.items():
    c[k] = v
  return c


def train(step, reward=0.3, entropy=0.5, truncated=0.1, length=10.0, zero_std=0.5):
  return {
    'step': step,
    'train_reward_mean': reward,
    'loss': 0.01,
    'kl': 0.0,
    'entropy': entropy,
    'truncated_frac': truncated,
    'completion_len_mean': length,
    'zero_std_group_frac': zero_std,
  }


def valid(step, reward, graded=None):
  record = {'step': step, 'valid_reward_mean': reward}
  if graded is not None:
    record['valid/num_graded'] = float(graded)
  return record


def fired(g, records):
  return [(a.step, a.kind) for r in records for a in g.observe(r)]


def as_written(record):
  """What metrics.jsonl gives back: MetricsWriter writes non-finite floats as null."""
  clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
  return json.loads(json.dumps(clean))


# ---- valid_reward_drop -----------------------------------------------------------------------------------------
def test_valid_reward_drop_fires_on_the_patience_th_eval_below_the_best_and_again_after_a_recovery():
  g = guard.Guard(make_cfg(), max_new_tokens=32)
  values = [0.30, 0.52, 0.46, 0.45, 0.31, 0.30, 0.50, 0.40, 0.40, 0.40]  # steps 0, 10, ..., 90
  alarms = {r['step']: g.observe(r) for r in [valid(10 * i, v) for i, v in enumerate(values)]}
  # 0.06, 0.07, 0.21 below 0.52: the third in a row (step 40) fires; step 50 continues the same run; 0.50 at step 60
  # is within 0.05 and ends it; 70, 80, 90 are a new run
  assert [s for s, a in alarms.items() if a] == [40, 90]
  (a,) = alarms[40]
  assert a.kind == 'valid_reward_drop' and a.step == 40 and a.stop is False
  assert a.message == (
    'valid_reward_mean fell to 0.31 at step 40, more than 0.05 below the best 0.52 (step 10) for 3 evals in a row '
    '(steps 20, 30, 40: 0.46, 0.45, 0.31; the margin is guard.min_delta=0.05 or guard.sigmas=2.5 standard errors, '
    'whichever is larger)'
  )
  assert a.data == {
    'valid_reward_mean': 0.31,
    'best': 0.52,
    'best_step': 10,
    'margin': 0.05,
    'evals': [[20, 0.46], [30, 0.45], [40, 0.31]],
  }
  assert g.best == (10, 0.52)


def test_min_delta_is_a_strict_bound_and_patience_counts_evals():
  g = guard.Guard(make_cfg(), max_new_tokens=32)
  # exactly 0.05 below is not a drop (0.52 - 0.47 is 0.05000000000000004 in floats); 0.0501 below is
  stream = [valid(0, 0.52)] + [valid(s, 0.47) for s in (10, 20, 30)] + [valid(s, 0.4699) for s in (40, 50, 60)]
  assert fired(g, stream) == [(60, 'valid_reward_drop')]
  (alarm,) = guard.Guard(make_cfg(patience=1), max_new_tokens=32).replay(stream)
  assert (alarm.step, alarm.kind) == (40, 'valid_reward_drop')
  assert 'for 1 eval in a row (step 40: 0.4699;' in alarm.message
  g = guard.Guard(make_cfg(min_delta=0.1), max_new_tokens=32)
  assert fired(g, stream) == []


def test_a_good_eval_or_a_new_best_restarts_the_count():
  g = guard.Guard(make_cfg(), max_new_tokens=32)
  values = [0.52, 0.40, 0.40, 0.50, 0.40, 0.40, 0.60, 0.50, 0.50, 0.50]
  # two below, one within 0.05, two below, a new best (0.60), then three 0.10 below the new best
  assert fired(g, [valid(10 * i, v) for i, v in enumerate(values)]) == [(90, 'valid_reward_drop')]
  assert g.best == (60, 0.6)


def test_ties_make_the_later_step_best_as_the_checkpointer_does():
  g = guard.Guard(make_cfg(), max_new_tokens=32)
  g.replay([valid(0, 0.2), valid(10, 0.5), valid(20, 0.5), valid(30, 0.45)])
  assert g.best == (20, 0.5)


def test_the_drop_margin_grows_with_the_noise_of_small_validation_sets():
  # 100 graded answers each: 2.5 standard errors of 0.5 - 0.35 are 2.5 * sqrt(.25/100 + .35*.65/100) = 0.1728 > 0.15,
  # so 0.35 is noise; of 0.5 - 0.3: 2.5 * sqrt(.25/100 + .3*.7/100) = 0.1696 < 0.2, so 0.3 counts
  stream = [valid(10 * i, v, graded=100) for i, v in enumerate([0.5, 0.35, 0.35, 0.35, 0.3, 0.3, 0.3])]
  g = guard.Guard(make_cfg(), max_new_tokens=32)
  alarms = g.replay(stream)
  assert [(a.step, a.kind) for a in alarms] == [(60, 'valid_reward_drop')]
  assert alarms[0].data['margin'] == pytest.approx(2.5 * math.sqrt(0.0025 + 0.0021))
  assert 'more than 0.1696 below the best 0.5 (step 0)' in alarms[0].message
  # sigmas=0: min_delta alone, and the first three 0.35s already count
  assert fired(guard.Guard(make_cfg(sigmas=0), max_new_tokens=32), stream) == [(30, 'valid_reward_drop')]
  # half of each evaluation left out for a judge's outage (valid/num_discarded): 50 answers, not 100, so
  # 2.5 * sqrt(.25/50 + .3*.7/50) = 0.2398 > 0.2, and 0.3 is noise too
  halved = [{**r, 'valid/num_discarded': 50.0} for r in stream]
  assert fired(guard.Guard(make_cfg(), max_new_tokens=32), halved) == []


def test_a_flat_noisy_validation_curve_rarely_alarms():
  """20 runs that never change (p = 0.5, 200 prompts, 30 evals): the best is a lucky draw, about 2 standard errors
  above the rest. min_delta alone calls a drop in nearly all of them; the noise bound in about one in twenty."""

  def plateau(seed):
    rng = np.random.default_rng(seed)
    return [valid(10 * i, rng.binomial(200, 0.5) / 200, graded=200) for i in range(30)]

  noisy = sum(bool(guard.Guard(make_cfg(), 32).replay(plateau(s))) for s in range(20))
  plain = sum(bool(guard.Guard(make_cfg(sigmas=0), 32).replay(plateau(s))) for s in range(20))
  assert noisy <= 2 and plain >= 15, (noisy, plain)


# ---- train_valid_gap -------------------------------------------------------------------------------------------
def gap_stream(windows):
  """valid(0, 0.2), then for each (train reward, valid reward): ten training steps, then an evaluation."""
  records, step = [valid(0, 0.2)], 0
  for train_reward, valid_reward in windows:
    records += [train(s, reward=train_reward) for s in range(step + 1, step + 11)]
    step += 10
    records.append(valid(step, valid_reward))
  return records


def test_train_valid_gap_compares_the_mean_train_reward_since_the_last_eval():
  # window means 0.5, 0.7, 0.8 against 0.25, 0.45, 0.5: gaps 0.25, 0.25, 0.3, the third fires
  g = guard.Guard(make_cfg(), max_new_tokens=32)
  records = gap_stream([(0.5, 0.25), (0.7, 0.45), (0.8, 0.5)])
  records[1:11] = [train(s, reward=0.4 if s % 2 else 0.6) for s in range(1, 11)]  # the mean is what counts
  alarms = g.replay(records)
  assert [(a.step, a.kind) for a in alarms] == [(30, 'train_valid_gap')]
  assert alarms[0].message == (
    'train_reward_mean 0.8 (mean of steps 21-30) is 0.3 above valid_reward_mean 0.5 at step 30, more than '
    'guard.gap=0.2 for 3 evals in a row (steps 10, 20, 30: gaps 0.25, 0.25, 0.3)'
  )
  assert alarms[0].stop is False
  assert guard.Guard(make_cfg(gap=0), max_new_tokens=32).replay(records) == []


def test_a_gap_of_exactly_the_threshold_ends_the_run():
  windows = [(0.5, 0.25), (0.7, 0.5), (0.8, 0.55), (0.85, 0.6), (0.9, 0.65)]  # gaps 0.25, 0.2, 0.25, 0.25, 0.25
  assert fired(guard.Guard(make_cfg(), max_new_tokens=32), gap_stream(windows)) == [(50, 'train_valid_gap')]


# ---- entropy ---------------------------------------------------------------------------------------------------
START = [train(s, entropy=e) for s, e in zip(range(1, 6), [0.8, 0.7, 0.6, 0.5, 0.4])]  # its start: mean 0.6


def test_entropy_collapse_fires_after_step_patience_low_steps_once_per_run():
  g = guard.Guard(make_cfg(step_patience=3, no_signal_steps=0), max_new_tokens=32)  # no_signal: its own test
  low = [0.05, 0.05, 0.07, 0.01, 0.02, 0.03, 0.0, 0.5, 0.01, 0.01, 0.01]  # steps 6-16; the limit is 0.1 x 0.6 = 0.06
  stream = START + [train(s, entropy=e, zero_std=1.0) for s, e in zip(range(6, 17), low)]
  alarms = g.replay(stream)
  # 6, 7 low, 8 (0.07) ends the run; 9, 10, 11 fire; 12 continues it; 13 ends it; 14, 15, 16 fire again
  assert [(a.step, a.kind) for a in alarms] == [(11, 'entropy_collapse'), (16, 'entropy_collapse')]
  assert alarms[0].message == (
    'entropy fell to 0.03 at step 11, below guard.entropy_low=0.1 x 0.6 (its mean over steps 1-5) = 0.06 for 3 '
    'steps in a row (steps 9-11, mean 0.02) with train_reward_mean below guard.solved_reward=0.9; '
    'zero_std_group_frac 1'
  )
  assert alarms[0].stop is False  # a collapsed entropy only warns, even with guard.stop
  assert guard.Guard(make_cfg(step_patience=3, stop=True), 32).replay(stream)[1].stop is False  # [0]: no_signal


def test_entropy_collapse_is_no_alarm_on_a_solved_task():
  low = [0.05, 0.05, 0.07, 0.01, 0.02, 0.03, 0.0, 0.5, 0.01, 0.01, 0.01]
  solved = START + [train(s, reward=0.95, entropy=e) for s, e in zip(range(6, 17), low)]
  assert fired(guard.Guard(make_cfg(step_patience=3), 32), solved) == []
  once = START + [train(s, reward=0.95 if s == 10 else 0.3, entropy=e) for s, e in zip(range(6, 17), low)]
  assert fired(guard.Guard(make_cfg(step_patience=3), 32), once) == [(16, 'entropy_collapse')]


def test_entropy_blowup_counts_non_finite_entropy_and_stops_only_with_guard_stop():
  flat = [train(s, entropy=0.5) for s in range(1, 6)]  # start 0.5: the limit is 2 x 0.5 = 1
  high = [1.2, 1.0, 1.5, float('nan'), 3.0]  # steps 6-10: 1.0 is not above the limit and ends the first run
  stream = flat + [train(s, entropy=e) for s, e in zip(range(6, 11), high)]
  alarms = guard.Guard(make_cfg(step_patience=3), 32).replay(stream)
  assert [(a.step, a.kind, a.stop) for a in alarms] == [(10, 'entropy_blowup', False)]
  assert alarms[0].message == (
    'entropy rose to 3 at step 10, above guard.entropy_high=2 x 0.5 (its mean over steps 1-5) = 1 for 3 steps in a '
    'row (steps 8-10)'
  )
  stopping = guard.Guard(make_cfg(step_patience=3, stop=True), 32).replay(stream)
  assert [(a.step, a.stop) for a in stopping] == [(10, True)]
  nans = flat + [train(s, entropy=float('nan')) for s in range(6, 9)]
  (a,) = guard.Guard(make_cfg(step_patience=3), 32).replay(nans)
  assert a.message.startswith('entropy was not a finite number at step 8,')


# ---- length_pinned ---------------------------------------------------------------------------------------------
def test_length_pinned_fires_when_most_completions_hit_max_new_tokens():
  start = [train(s, truncated=t) for s, t in zip(range(1, 6), [0.1, 0.2, 0.1, 0.2, 0.4])]  # 20% at the start
  shares = [0.9, 0.9, 0.79, 0.8, 0.85, 1.0]  # steps 6-11: 0.79 ends the first run; 0.8 counts (at or above)
  stream = start + [train(s, truncated=t, length=64.0) for s, t in zip(range(6, 12), shares)]
  alarms = guard.Guard(make_cfg(step_patience=3, stop=True), max_new_tokens=64).replay(stream)
  assert [(a.step, a.kind, a.stop) for a in alarms] == [(11, 'length_pinned', False)]
  assert alarms[0].message == (
    '100% of completions ran to max_new_tokens=64 without stopping at step 11 (mean length 64 tokens), at or above '
    'guard.truncated_frac=0.8 for 3 steps in a row (steps 9-11); 20% over steps 1-5'
  )


def test_a_run_pinned_from_its_start_is_its_configuration_not_a_collapse():
  # configs/tiny.py: max_new_tokens=1, so every completion is cut at the cap from step 1
  stream = [train(s, truncated=1.0, length=1.0) for s in range(1, 60)]
  assert fired(guard.Guard(make_cfg(), max_new_tokens=1), stream) == []


# ---- healthy runs ----------------------------------------------------------------------------------------------
# configs/smollm2_arith.py as run for the README (40 steps, 50 validation prompts, eval every 10 steps)
SMOLLM2 = {
  'train_reward_mean': [0.0, 0.0, 0.188, 0.438, 0.125, 0.188, 0.062, 0.562, 0.25, 0.062, 0.375, 0.188, 0.438, 0.438,
                        0.5, 0.0, 0.562, 0.312, 0.375, 0.25, 0.062, 0.25, 0.5, 0.375, 0.75, 0.438, 0.188, 0.5, 0.5,
                        0.375, 0.375, 0.688, 0.688, 0.688, 0.75, 0.312, 0.062, 0.25, 0.875, 0.562],
  'entropy': [0.805, 0.648, 0.65, 0.582, 0.771, 0.592, 0.631, 0.624, 0.56, 0.671, 0.716, 0.727, 0.451, 0.529, 0.379,
              0.51, 0.46, 0.547, 0.288, 0.411, 0.352, 0.411, 0.192, 0.301, 0.263, 0.213, 0.274, 0.244, 0.219, 0.19,
              0.204, 0.175, 0.192, 0.177, 0.223, 0.261, 0.275, 0.16, 0.116, 0.221],
  'truncated_frac': [0.688, 0.75, 0.438, 0.312, 0.562, 0.312, 0.125, 0.125, 0.25, 0.25, 0.062, 0.25, 0.0, 0.062,
                     0.062, 0.0, 0.062, 0.125, 0.0, 0.188, 0.188, 0.062, 0.0, 0.062, 0.125, 0.062, 0.062, 0.062, 0.0,
                     0.0, 0.0, 0.0, 0.0, 0.0, 0.062, 0.0, 0.0, 0.0, 0.0, 0.0],
}  # fmt: skip
SMOLLM2_VALID = [0.28, 0.46, 0.4, 0.42, 0.42]


def smollm2_records():
  records = [valid(0, SMOLLM2_VALID[0], graded=50)]
  for s in range(1, 41):
    reward, entropy, truncated = (SMOLLM2[k][s - 1] for k in ('train_reward_mean', 'entropy', 'truncated_frac'))
    records.append(train(s, reward=reward, entropy=entropy, truncated=truncated))
    if s % 10 == 0:
      records.append(valid(s, SMOLLM2_VALID[s // 10], graded=50))
  return records


def test_the_guard_reads_the_names_the_trainer_writes():
  """A training record is rollout stats + update metrics; an evaluation is graders.summarize(prefix='valid')."""
  n = 4
  r = rollout.Rollout(
    prompt_tokens=np.zeros((n, 3), np.int32),
    prompt_mask=np.ones((n, 3), bool),
    tokens=np.zeros((n, 2), np.int32),
    mask=np.ones((n, 2), np.float32),
    logprobs=np.zeros((n, 2), np.float32),
    lengths=np.array([2, 2, 1, 2]),
    truncated=np.array([True, True, False, True]),
    rewards=np.array([1, 0, 1, 1], np.float32),
    results=[graders.GradeResult(float(x)) for x in (1, 0, 1, 1)],
    texts=[''] * n,
    discard=np.zeros(n, bool),
    episodes=[None] * n,
  )
  _, update = grpo.policy_loss(
    jnp.zeros((n, 2)), None, jnp.ones(n), jnp.ones((n, 2)), config=grpo.LossConfig(), entropy=jnp.full((n, 2), 0.5)
  )
  record = {'step': 1, **rollout.rollout_metrics(r, 2), **{k: float(v) for k, v in update.items()}}
  assert {'train_reward_mean', 'entropy', 'truncated_frac', 'completion_len_mean', 'zero_std_group_frac'} <= set(record)
  assert record['truncated_frac'] == 0.75 and record['entropy'] == pytest.approx(0.5)
  evaluation = {'step': 1, **graders.summarize([graders.GradeResult(1.0)] * 3, prefix='valid')}
  assert evaluation['valid_reward_mean'] == 1.0 and evaluation['valid/num_graded'] == 3


def healthy_run(seed, steps=200, every=10, graded=200):
  """A pretrained model that learns: entropy falls to about half, truncations fade, rewards rise, all noisy."""
  rng = np.random.default_rng(seed)
  records = []
  for s in range(steps + 1):
    t = s / steps
    if s:
      reward = float(np.clip(0.25 + 0.35 * t + rng.normal(0, 0.08), 0, 1))
      entropy = float(0.7 * (1 - 0.5 * t) * rng.lognormal(0, 0.15))
      truncated = float(np.clip(0.5 * (1 - t) + rng.normal(0, 0.06), 0, 1))
      records.append(train(s, reward=reward, entropy=entropy, truncated=truncated, length=40 * (1 - 0.3 * t)))
    if s % every == 0:
      records += [valid(s, rng.binomial(graded, 0.3 + 0.3 * t) / graded, graded), {'step': s, 'timing/checkpoint_s': 1}]
  return records


def test_healthy_noisy_runs_raise_no_alarm():
  assert guard.Guard(make_cfg(), max_new_tokens=24).replay(smollm2_records()) == []
  for seed in range(10):
    assert guard.Guard(make_cfg(), max_new_tokens=64).replay(healthy_run(seed)) == [], seed


def test_no_signal_fires_when_every_group_scored_alike_for_no_signal_steps():
  """A reference the grader could never match trained 40 steps on zeros (grad_norm 0, loss 0) and the report said
  "succeeded"; a task already solved, the same on ones. Three such steps in a row say so, with what to check."""
  g = guard.Guard(make_cfg(), max_new_tokens=8)
  zeros = [train(s, reward=0.0, zero_std=1.0) for s in range(1, 6)]
  alarms = [a for r in zeros for a in g.observe(r)]
  assert [(a.step, a.kind, a.stop) for a in alarms] == [(3, 'no_signal', False)]
  assert alarms[0].message.startswith(
    'every group of completions got one reward at steps 1-3 (zero_std_group_frac 1, train_reward_mean 0): no '
    'advantage, so no gradient and nothing learnt; every completion scored 0: check the grader'
  )
  g = guard.Guard(make_cfg(), max_new_tokens=8)
  stream = [train(1, reward=1.0, zero_std=1.0), train(2, reward=1.0, zero_std=0.9)]  # a step with a spread
  stream += [train(s, reward=1.0, zero_std=1.0) for s in (3, 4, 5)]
  (alarm,) = [a for r in stream for a in g.observe(r)]
  assert alarm.step == 5 and 'every completion scored 1: the task is already solved' in alarm.message
  assert not guard.Guard(make_cfg(no_signal_steps=0), 8).replay(zeros)
  # every completion cut off at max_new_tokens (sampling.max_new_tokens=4 for arithmetic answers): the cause is
  # the length, not the grader; length_pinned stays quiet on a run pinned from its first step
  cut = [train(s, reward=0.0, zero_std=1.0, truncated=1.0) for s in range(1, 6)]
  (alarm,) = guard.Guard(make_cfg(), max_new_tokens=4).replay(cut)
  assert alarm.kind == 'no_signal' and alarm.data['truncated_frac'] == 1.0
  assert '100% of the completions ran to max_new_tokens=4 without stopping: answers cut short score 0; raise ' \
         'sampling.max_new_tokens' in alarm.message  # fmt: skip
  (alarm,) = guard.Guard(make_cfg(), max_new_tokens=1).replay(cut)  # one token: no room for a stop, by design
  assert 'check the grader' in alarm.message
  # most cut off, a few ending early: it was 'check the grader' unless every one ran out
  most = [train(s, reward=0.0, zero_std=1.0, truncated=0.9) for s in range(1, 6)]
  (alarm,) = guard.Guard(make_cfg(), max_new_tokens=2).replay(most)
  assert '90% of the completions ran to max_new_tokens=2 without stopping' in alarm.message
  assert 'or the grader passes anything (try it on a wrong answer' in g.replay(stream)[0].message


def test_no_signal_after_a_fall_from_reward_names_the_learning_rate_not_the_grader():
  """learning_rate=0.01 on the tiny demo: the policy collapsed (kl 4-8, entropy 2.9 -> 0.05) after train rewards
  up to 0.23, and the alarm said to check the grader, which had given that credit."""
  fall = [train(s, reward=0.2) for s in range(1, 5)]
  fall += [{**train(s, reward=0.0, zero_std=1.0, entropy=0.05), 'kl': 4.3} for s in range(5, 8)]
  (alarm,) = guard.Guard(make_cfg(), max_new_tokens=8).replay(fall)
  assert alarm.kind == 'no_signal' and 'check the grader' not in alarm.message
  unmeasured = [{**r, 'kl': 0.0} for r in fall]  # grpo.beta=0 (the default): kl is not measured, no evidence
  (quiet,) = guard.Guard(make_cfg(), max_new_tokens=8).replay(unmeasured)
  assert 'the policy moved off the answers it gave (entropy 0.05); a learning' in quiet.message
  lucky = [train(1, reward=0.016)] + [train(s, reward=0.0, zero_std=1.0) for s in (2, 3, 4)]  # no earned reward
  assert 'check the grader' in guard.Guard(make_cfg(), max_new_tokens=8).replay(lucky)[0].message
  assert 'every completion scored 0, after train_reward_mean 0.2 at step 1: the policy moved off the answers it ' \
         'gave (kl 4.3, entropy 0.05); a learning rate too high does this: lower optimizer.learning_rate' \
         in alarm.message  # fmt: skip


# ---- one stream with every alarm: stop flags, resume ------------------------------------------------------------
def every_alarm():
  """step_patience 3, patience 2: collapse at 8, blow-up at 11 (a NaN inside), pinned at 14, gap and drop at 24."""
  r = [valid(0, 0.3), {'step': 0, 'timing/checkpoint_s': 0.1}]
  r += [train(s) for s in range(1, 6)]  # start: entropy 0.5, truncated 0.1
  r += [train(s, entropy=0.01) for s in (6, 7, 8)]
  r += [train(s, entropy=e) for s, e in zip((9, 10, 11), (1.5, float('nan'), 1.5))]
  r += [train(s, truncated=0.9) for s in (12, 13, 14)]
  r += [valid(14, 0.6), {'step': 14, 'timing/checkpoint_s': 0.1}]
  r += [train(s, reward=0.95) for s in range(15, 21)] + [valid(20, 0.5)]
  r += [train(s, reward=0.95) for s in range(21, 25)] + [valid(24, 0.45)]
  return r


EVERY_CFG = dict(step_patience=3, patience=2)
EVERY_FIRED = [
  (8, 'entropy_collapse'),
  (11, 'entropy_blowup'),
  (14, 'length_pinned'),
  (24, 'train_valid_gap'),
  (24, 'valid_reward_drop'),
]


@pytest.mark.parametrize('stop', [False, True])
def test_stop_only_with_guard_stop_and_only_for_the_stopping_kinds(stop):
  alarms = guard.Guard(make_cfg(stop=stop, **EVERY_CFG), 32).replay(every_alarm())
  assert [(a.step, a.kind) for a in alarms] == EVERY_FIRED
  assert {a.kind for a in alarms if a.stop} == ({'valid_reward_drop', 'entropy_blowup'} if stop else set())


def test_disabled_guard_says_nothing():
  assert guard.Guard(make_cfg(enabled=False, **EVERY_CFG), 32).replay(every_alarm()) == []


def test_other_records_leave_the_counts_alone():
  g = guard.Guard(make_cfg(**EVERY_CFG), 32)
  g.replay(every_alarm()[:-1])
  before = g.state()
  for record in [{'step': 24, 'timing/checkpoint_s': 0.2}, {'step': 24}, {'valid/num_graded': 100.0}]:
    assert g.observe(record) == []
  assert g.state() == before


def test_a_resumed_guard_counts_like_an_unbroken_one():
  """At every cut: state() through JSON, or a replay of what metrics.jsonl holds, then the rest of the stream gives
  the alarms the unbroken guard gave for it."""
  stream = every_alarm()
  whole = guard.Guard(make_cfg(**EVERY_CFG), 32)
  per_record = [whole.observe(r) for r in stream]
  for cut in range(len(stream) + 1):
    expected = [a for alarms in per_record[cut:] for a in alarms]
    first = guard.Guard(make_cfg(**EVERY_CFG), 32)
    first.replay(stream[:cut])
    resumed = guard.Guard(make_cfg(**EVERY_CFG), 32)
    resumed.restore(json.loads(json.dumps(first.state())))
    assert resumed.replay(stream[cut:]) == expected, cut
    replayed = guard.Guard(make_cfg(**EVERY_CFG), 32)
    replayed.replay([as_written(r) for r in stream[:cut]])
    assert replayed.replay(stream[cut:]) == expected, cut
  assert [(a.step, a.kind) for alarms in per_record for a in alarms] == EVERY_FIRED


# ---- after a stop ----------------------------------------------------------------------------------------------
def test_stop_message_names_the_best_checkpoint_and_the_export_command():
  stream = [valid(10 * i, v) for i, v in enumerate([0.30, 0.52, 0.46, 0.45, 0.31])]
  (alarm,) = guard.Guard(make_cfg(stop=True), 32).replay(stream)
  text = guard.stop_message(alarm, 'runs/my run', 10, 0.52)
  assert text.startswith(
    'the collapse guard stopped the run at step 40 (guard.stop=True): valid_reward_drop: valid_reward_mean fell to 0.31'
  )
  assert (
    'The best checkpoint is step 10, valid_reward_mean 0.52; export it with: '
    "python -m rftjax.export --workdir='runs/my run' --step=best --out=OUT" in text
  )
  assert 'rerun the same command with --config.guard.stop=False' in text and '\n' not in text
  # the flags are rftjax.export's own
  command = re.search(r'python -m rftjax\.export (.*?) \(', text).group(1)
  for flag in re.findall(r'(--\w+)=', command):
    assert f"'{flag}'" in inspect.getsource(export.main), flag
  none_kept = guard.stop_message(alarm, 'runs/x', None)
  assert 'No evaluated checkpoint is kept' in none_kept and '--workdir=runs/x --step=latest --out=OUT' in none_kept


def test_the_default_block_builds_a_warning_guard():
  c = common.base()
  if 'guard' not in c:  # until configs/common.py calls it itself
    guard.add_guard_fields(c)
  c.lock()
  c.guard.patience = 5  # overridable like any field (--config.guard.patience=5)
  g = guard.Guard(c.guard, c.sampling.max_new_tokens)
  assert g.enabled and not g.stop and g.patience == 5
  with pytest.raises(AttributeError):
    c.guard.patiense = 5
