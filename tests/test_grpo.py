"""Hand-computed checks of rftjax.grpo: every expected number is written out as arithmetic next to its test."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rftjax import grpo

EPS = 1e-4  # compute_advantages' default eps


# ----------------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------------
# B=2 prompts, G=3 samples each, prompt-major. Group 0 = [1, 0, 0]: mean 1/3, deviations (2/3, -1/3, -1/3),
# population variance (4/9 + 1/9 + 1/9) / 3 = 2/9, std = sqrt(2)/3 ~ 0.4714; unbiased (ddof=1) variance 6/9 / 2 =
# 1/3, std = 1/sqrt(3). Group 1 = [1, 1, 1]: zero std, advantage must be exactly 0 (not NaN).
REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
DEV0 = np.array([2 / 3, -1 / 3, -1 / 3])
STD0 = math.sqrt(2) / 3


def _adv(rewards=REWARDS, **kw):
  return np.asarray(grpo.compute_advantages(jnp.array(rewards), 3, **kw))


def test_grpo_group_scale():
  # (r - mean) / (std + eps): 2/3 / (0.4714 + 1e-4) ~ 1.4139, -1/3 / (0.4714 + 1e-4) ~ -0.7070.
  np.testing.assert_allclose(_adv(), np.r_[DEV0 / (STD0 + EPS), 0, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(_adv(method='grpo', scale='group'), _adv(), rtol=0)
  # TRL's unbiased std: divide by 1/sqrt(3) ~ 0.5774 instead.
  np.testing.assert_allclose(_adv(ddof=1), np.r_[DEV0 / (1 / math.sqrt(3) + EPS), 0, 0, 0], rtol=1e-6)


def test_grpo_none_scale_and_dr_grpo():
  # No division: the centred rewards (2/3, -1/3, -1/3, 0, 0, 0); dr_grpo is the same thing.
  np.testing.assert_allclose(_adv(scale='none'), np.r_[DEV0, 0, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(_adv(method='dr_grpo'), np.r_[DEV0, 0, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(_adv(method='dr_grpo', scale='none'), np.r_[DEV0, 0, 0, 0], rtol=1e-6)
  with pytest.raises(ValueError, match='dr_grpo'):
    _adv(method='dr_grpo', scale='group')


def test_grpo_batch_scale():
  # Rewards [1,0,0, 2,2,2]: batch mean 7/6, squared deviations 1/36, 49/36, 49/36, 25/36 x 3 -> sum 174/36,
  # population variance 174/216 = 29/36, batch std = sqrt(29)/6 ~ 0.8975. Group 1 is constant -> 0.
  expected = np.r_[DEV0 / (math.sqrt(29) / 6 + EPS), 0, 0, 0]
  np.testing.assert_allclose(_adv([1, 0, 0, 2, 2, 2], scale='batch'), expected, rtol=1e-6)


def test_rloo():
  # r_i - mean of the other two: 1 - (0+0)/2 = 1; 0 - (1+0)/2 = -0.5 (twice); group 1: 1 - 1 = 0.
  np.testing.assert_allclose(_adv(method='rloo'), [1, -0.5, -0.5, 0, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(_adv(method='rloo', scale='none'), [1, -0.5, -0.5, 0, 0, 0], rtol=1e-6)
  # Scaled by the group std sqrt(2)/3: 1 / 0.4715 ~ 2.1209.
  np.testing.assert_allclose(
    _adv(method='rloo', scale='group'), np.r_[np.array([1, -0.5, -0.5]) / (STD0 + EPS), 0, 0, 0], rtol=1e-6
  )
  # Batch std of [1,0,0,2,2,2] is sqrt(29)/6 (see test_grpo_batch_scale).
  np.testing.assert_allclose(
    _adv([1, 0, 0, 2, 2, 2], method='rloo', scale='batch'),
    np.r_[np.array([1, -0.5, -0.5]) / (math.sqrt(29) / 6 + EPS), 0, 0, 0],
    rtol=1e-6,
  )


@pytest.mark.parametrize('method,scale', [('grpo', 'group'), ('grpo', 'batch'), ('rloo', 'group'), ('dr_grpo', 'none')])
def test_constant_groups_are_exactly_zero(method, scale):
  # 0.1 is not representable: a float mean of [0.1]*3 can differ from 0.1 by round-off that the 1/eps scaling would
  # blow up; constant groups must still give exact zeros.
  adv = _adv([0.1, 0.1, 0.1, 0.7, 0.7, 0.7], method=method, scale=scale)
  assert np.all(adv == 0.0) and np.all(np.isfinite(adv))


def test_advantages_jit_and_bad_shapes():
  f = jax.jit(grpo.compute_advantages, static_argnames=('num_generations', 'method', 'scale'))
  np.testing.assert_allclose(f(jnp.array(REWARDS), num_generations=3), _adv(), rtol=1e-6)
  with pytest.raises(ValueError, match='B\\*G'):
    grpo.compute_advantages(jnp.zeros(5), 3)


# ----------------------------------------------------------------------------------------------------------------
# Log-probs and entropy
# ----------------------------------------------------------------------------------------------------------------
def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_token_logprobs_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32) * 3
  targets = rng.integers(0, 5, size=(2, 3))
  expected = np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
  got = grpo.token_logprobs(jnp.array(logits), jnp.array(targets))
  assert got.dtype == jnp.float32 and got.shape == (2, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # bf16 logits still give float32 logprobs (of the bf16-rounded logits).
  got16 = grpo.token_logprobs(jnp.array(logits, jnp.bfloat16), jnp.array(targets))
  assert got16.dtype == jnp.float32
  np.testing.assert_allclose(got16, expected, atol=0.1)
  # temperature 2 is the log-softmax of logits / 2.
  np.testing.assert_allclose(
    grpo.token_logprobs(jnp.array(logits), jnp.array(targets), temperature=2.0),
    grpo.token_logprobs(jnp.array(logits / 2), jnp.array(targets)),
    rtol=1e-6,
  )


def test_entropy():
  # Uniform over V=7: H = -7 * (1/7) log(1/7) = log 7 ~ 1.9459, whatever the constant logit.
  np.testing.assert_allclose(
    grpo.entropy_from_logits(jnp.full((2, 4, 7), 3.0)), np.full((2, 4), math.log(7)), rtol=1e-6
  )
  # Random logits vs -sum p log p in numpy; a near one-hot distribution has entropy near 0.
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 6)).astype(np.float32)
  logp = _np_log_softmax(logits.astype(np.float64))
  np.testing.assert_allclose(grpo.entropy_from_logits(jnp.array(logits)), -(np.exp(logp) * logp).sum(-1), rtol=1e-5)
  assert float(grpo.entropy_from_logits(jnp.array([[100.0, 0.0, 0.0]]))[0]) < 1e-6


# ----------------------------------------------------------------------------------------------------------------
# Policy loss on a hand-made batch
# ----------------------------------------------------------------------------------------------------------------
# N=3 completions, T=3:
#   row 0: A = +1, two real tokens then padding after EOS; ratios 1.5, 0.9
#   row 1: A = -1, three real tokens;                      ratios 0.5, 1.1, 1.3
#   row 2: A = +2, a truncated completion masked out entirely (ratio 2 everywhere; must not count)
# The padding slot of row 0 holds garbage logprobs (ratio e^100 = inf in float32) that must not leak into anything.
# Per-token pg = -min(r A, clip(r, 0.8, 1.2) A) with eps = 0.2:
#   row 0: r=1.5 -> -min(1.5, 1.2) = -1.2 (high clip active);   r=0.9 -> -0.9
#   row 1: r=0.5 -> -min(-0.5, -0.8) = 0.8 (low clip active);   r=1.1 -> 1.1;   r=1.3 -> -min(-1.3, -1.2) = 1.3
#   (pessimistic: for A<0 a ratio above 1+eps is NOT clipped; that is the case dual-clip bounds.)
# 5 valid tokens; pg sum = -1.2 - 0.9 + 0.8 + 1.1 + 1.3 = 1.1.
MASK = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], np.float32)
ADV = np.array([1.0, -1.0, 2.0], np.float32)
RATIOS = np.array([[1.5, 0.9, 1.0], [0.5, 1.1, 1.3], [2.0, 2.0, 2.0]])
OLD = np.full((3, 3), -1.0, np.float32)
LOGP = (OLD + np.log(RATIOS)).astype(np.float32)
LOGP[0, 2], OLD[0, 2] = 50.0, -50.0  # padding garbage
PG = np.array([-1.2, -0.9, 0.8, 1.1, 1.3])  # the 5 valid tokens, row-major
VALID = MASK > 0


def _loss(cfg, logp=LOGP, old=OLD, adv=ADV, mask=MASK, **kw):
  loss, metrics = grpo.policy_loss(
    jnp.array(logp), None if old is None else jnp.array(old), jnp.array(adv), jnp.array(mask), config=cfg, **kw
  )
  return float(loss), {k: float(v) for k, v in metrics.items()}


def test_token_mean_clipping_and_metrics():
  loss, m = _loss(grpo.LossConfig())
  assert loss == pytest.approx(1.1 / 5, abs=1e-6)  # 0.22
  assert m['loss'] == pytest.approx(0.22, abs=1e-6) and m['pg_loss'] == pytest.approx(0.22, abs=1e-6)
  assert m['clip_frac_low'] == pytest.approx(1 / 5)  # row 1 token 0 (r=0.5, A<0)
  assert m['clip_frac_high'] == pytest.approx(1 / 5)  # row 0 token 0 (r=1.5, A>0)
  assert m['ratio_mean'] == pytest.approx((1.5 + 0.9 + 0.5 + 1.1 + 1.3) / 5, abs=1e-6)  # 1.06
  assert m['kl'] == 0.0 and m['tis_weight_mean'] == 1.0
  assert 'entropy' not in m and 'logprob_gap' not in m and 'dual_clip_frac' not in m


def test_sequence_mean_and_constant_aggregation():
  # sequence_mean: row 0 mean (-1.2 - 0.9)/2 = -1.05; row 1 mean (0.8 + 1.1 + 1.3)/3 = 3.2/3; row 2 has no valid
  # token and is not counted -> (-1.05 + 1.0667) / 2 = 0.008333.
  loss, _ = _loss(grpo.LossConfig(aggregation='sequence_mean'))
  assert loss == pytest.approx((-1.05 + 3.2 / 3) / 2, abs=1e-6)
  # constant (Dr. GRPO): sum / (N * max_tokens) = 1.1 / (3 * 4) with max_tokens=4; 1.1 / (3 * 3) with T.
  loss, _ = _loss(grpo.LossConfig(aggregation='constant', max_tokens=4))
  assert loss == pytest.approx(1.1 / 12, abs=1e-6)
  loss, _ = _loss(grpo.LossConfig(aggregation='constant'))
  assert loss == pytest.approx(1.1 / 9, abs=1e-6)
  # An explicit denominator (e.g. the global token count over micro-batches): 1.1 / 10.
  loss, _ = _loss(grpo.LossConfig(), loss_denominator=10.0)
  assert loss == pytest.approx(0.11, abs=1e-6)


def test_clip_higher_and_dual_clip():
  # epsilon_high=0.6: r=1.5 < 1.6 is no longer clipped -> -1.5; sum = -1.5 - 0.9 + 3.2 = 0.8 -> 0.8 / 5 = 0.16.
  loss, m = _loss(grpo.LossConfig(epsilon_high=0.6))
  assert loss == pytest.approx(0.16, abs=1e-6)
  assert m['clip_frac_high'] == 0.0 and m['clip_frac_low'] == pytest.approx(0.2)
  # dual_clip c=1.25: for A=-1 the loss is bounded by 1.25 * |A| = 1.25, so row 1 token 2: 1.3 -> 1.25;
  # sum = -2.1 + 0.8 + 1.1 + 1.25 = 1.05 -> 0.21. One of 5 tokens hits the bound.
  loss, m = _loss(grpo.LossConfig(dual_clip=1.25))
  assert loss == pytest.approx(0.21, abs=1e-6)
  assert m['dual_clip_frac'] == pytest.approx(0.2)


# ref_logp = logp - delta on the valid tokens: k1 = logp - ref = delta;
# k3 = exp(ref - logp) - (ref - logp) - 1 = exp(-delta) + delta - 1.
DELTA = np.array([[0.1, -0.2, 0.0], [0.3, 0.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
REF = (LOGP - DELTA).astype(np.float32)
REF[0, 2] = -1e4  # padding garbage again
REF[2, :] = -1e4  # and in the masked row


def test_kl_k1_k3():
  # k1 masked mean: (0.1 - 0.2 + 0.3 + 0 + 0.5) / 5 = 0.14; loss = 0.22 + 0.1 * 0.14 = 0.234.
  loss, m = _loss(grpo.LossConfig(beta=0.1, kl_estimator='k1'), ref_logp=jnp.array(REF))
  assert m['kl'] == pytest.approx(0.14, abs=1e-6)
  assert loss == pytest.approx(0.234, abs=1e-6)
  # k3 per token: exp(-0.1)+0.1-1 = 0.0048374, exp(0.2)-0.2-1 = 0.0214028, exp(-0.3)+0.3-1 = 0.0408182, 0,
  # exp(-0.5)+0.5-1 = 0.1065307; mean = 0.1735891 / 5 = 0.0347178.
  k3 = [math.exp(-d) + d - 1 for d in (0.1, -0.2, 0.3, 0.0, 0.5)]
  loss, m = _loss(grpo.LossConfig(beta=0.1, kl_estimator='k3'), ref_logp=jnp.array(REF))
  assert m['kl'] == pytest.approx(sum(k3) / 5, abs=1e-6)
  assert loss == pytest.approx(0.22 + 0.1 * sum(k3) / 5, abs=1e-6)
  # beta=0 with a ref: KL is reported, not added.
  loss, m = _loss(grpo.LossConfig(beta=0.0, kl_estimator='k1'), ref_logp=jnp.array(REF))
  assert loss == pytest.approx(0.22, abs=1e-6) and m['kl'] == pytest.approx(0.14, abs=1e-6)


def test_truncated_importance_sampling():
  # sampler = old - s with exp(s) = 2, 0.5, 1.5, 1, 3 on the valid tokens; tis_cap=2 -> w = 2, 0.5, 1.5, 1, 2.
  # weighted pg: -1.2*2 - 0.9*0.5 + 0.8*1.5 + 1.1*1 + 1.3*2 = -2.4 - 0.45 + 1.2 + 1.1 + 2.6 = 2.05 -> 0.41.
  s = np.log(np.array([[2, 0.5, 1], [1.5, 1, 3], [1, 1, 1]], np.float32))
  sampler = jnp.array(OLD - s)
  loss, m = _loss(grpo.LossConfig(tis_cap=2.0), sampler_logp=sampler)
  assert loss == pytest.approx(0.41, abs=1e-6)
  assert m['tis_weight_mean'] == pytest.approx((2 + 0.5 + 1.5 + 1 + 2) / 5, abs=1e-6)  # 1.4
  # |old - sampler| = |s|: (ln 2 + ln 2 + ln 1.5 + 0 + ln 3) / 5 = 2.890372 / 5 = 0.578074.
  assert m['logprob_gap'] == pytest.approx((2 * math.log(2) + math.log(1.5) + math.log(3)) / 5, abs=1e-6)
  # Without tis_cap the sampler logprobs only feed the metric.
  loss, m = _loss(grpo.LossConfig(), sampler_logp=sampler)
  assert loss == pytest.approx(0.22, abs=1e-6) and m['tis_weight_mean'] == 1.0
  # With old_logp=None (on-policy) the weight is exp(sg(logp) - sampler), held constant: d loss / d logp = -w A / 5.
  cfg = grpo.LossConfig(tis_cap=2.0)
  g = jax.grad(
    lambda lp: grpo.policy_loss(
      lp, None, jnp.array(ADV), jnp.array(MASK), config=cfg, sampler_logp=jnp.array(LOGP - s)
    )[0]
  )(jnp.array(LOGP))
  w = np.minimum(np.exp(s), 2.0)
  np.testing.assert_allclose(g, np.where(VALID, -w * ADV[:, None] / 5, 0), atol=1e-6)


def test_entropy_bonus():
  # H on the valid tokens 1, 2 | 3, 4, 5 -> mean 3; loss = 0.22 - 0.01 * 3 = 0.19; garbage on padding ignored.
  ent = np.array([[1, 2, 1e9], [3, 4, 5], [7, 7, 7]], np.float32)
  loss, m = _loss(grpo.LossConfig(entropy_coef=0.01), entropy=jnp.array(ent))
  assert loss == pytest.approx(0.19, abs=1e-6) and m['entropy'] == pytest.approx(3.0)
  with pytest.raises(ValueError, match='entropy'):
    _loss(grpo.LossConfig(entropy_coef=0.01))


def test_gspo_sequence_ratio_by_hand():
  # s_i = exp(mean of valid log-ratios): row 0 (1.5 * 0.9)^(1/2) = sqrt(1.35) = 1.161895 (A=+1, inside [0.8,1.2]);
  # row 1 (0.5 * 1.1 * 1.3)^(1/3) = 0.715^(1/3) = 0.894190 (A=-1, inside). Every token of row i carries -s_i A_i.
  s0, s1 = 1.35**0.5, 0.715 ** (1 / 3)
  loss, m = _loss(grpo.LossConfig(importance_level='sequence', aggregation='sequence_mean'))
  assert loss == pytest.approx((-s0 + s1) / 2, abs=1e-6)  # -0.133852
  assert m['ratio_mean'] == pytest.approx((2 * s0 + 3 * s1) / 5, abs=1e-6)
  loss, _ = _loss(grpo.LossConfig(importance_level='sequence'))
  assert loss == pytest.approx((-2 * s0 + 3 * s1) / 5, abs=1e-6)  # token_mean: 0.071756
  # GSPO gradient (sequence_mean): d loss / d logp_{i,t} = -A_i s_i / (|y_i| * 2 sequences): -s0/4 and +s1/6.
  cfg = grpo.LossConfig(importance_level='sequence', aggregation='sequence_mean')
  g = jax.grad(lambda lp: grpo.policy_loss(lp, jnp.array(OLD), jnp.array(ADV), jnp.array(MASK), config=cfg)[0])(
    jnp.array(LOGP)
  )
  np.testing.assert_allclose(g, [[-s0 / 4, -s0 / 4, 0], [s1 / 6, s1 / 6, s1 / 6], [0, 0, 0]], atol=1e-6)

  # The same gradient from GSPO's own form, the ratio s_i(theta) differentiated through the sequence mean.
  def pure_gspo(lp):
    lr = jnp.where(VALID, lp - OLD, 0.0)
    s = jnp.exp(lr.sum(-1) / jnp.maximum(VALID.sum(-1), 1))
    a = jnp.array(ADV)
    per_seq = -jnp.minimum(s * a, jnp.clip(s, 0.8, 1.2) * a)
    return jnp.sum(jnp.where(VALID.any(-1), per_seq, 0.0)) / 2

  np.testing.assert_allclose(g, jax.grad(pure_gspo)(jnp.array(LOGP)), atol=1e-6)


@pytest.mark.parametrize('aggregation', grpo.AGGREGATIONS)
def test_sequence_and_token_ratio_agree_on_one_token_completions(aggregation):
  rng = np.random.default_rng(2)
  logp = jnp.array(rng.normal(size=(4, 3)) - 2, jnp.float32)
  old = jnp.array(np.asarray(logp) + rng.normal(size=(4, 3)) * 0.3, jnp.float32)  # some ratios get clipped
  adv = jnp.array([1.0, -1.0, 0.5, -2.0])
  mask = jnp.array([[1, 0, 0]] * 4, jnp.float32)

  def f(level):
    cfg = grpo.LossConfig(importance_level=level, aggregation=aggregation, dual_clip=3.0)
    return jax.value_and_grad(lambda lp: grpo.policy_loss(lp, old, adv, mask, config=cfg)[0])(logp)

  (lt, gt), (ls, gs) = f('token'), f('sequence')
  np.testing.assert_allclose(ls, lt, rtol=1e-6)
  np.testing.assert_allclose(gs, gt, rtol=1e-6, atol=1e-7)


def test_on_policy_gradient_is_minus_advantage_over_num_tokens():
  # old_logp=None means sg(logp): ratio 1 in value, loss = -(1*2 + (-1)*3) / 5 = 0.2, and
  # d loss / d logp = -A / 5 on the valid tokens, 0 on padding and on the masked row.
  f = lambda lp: grpo.policy_loss(lp, None, jnp.array(ADV), jnp.array(MASK), config=grpo.LossConfig())
  (loss, m), g = jax.value_and_grad(f, has_aux=True)(jnp.array(LOGP))
  assert float(loss) == pytest.approx(0.2, abs=1e-6) and float(m['ratio_mean']) == 1.0
  np.testing.assert_allclose(g, np.where(VALID, -ADV[:, None] / 5, 0), atol=1e-7)
  assert np.all(np.isfinite(g))
  # Same with old_logp passed explicitly equal to logp.
  g2 = jax.grad(
    lambda lp: grpo.policy_loss(lp, jnp.array(LOGP), jnp.array(ADV), jnp.array(MASK), config=grpo.LossConfig())[0]
  )(jnp.array(LOGP))
  np.testing.assert_allclose(g2, g, atol=1e-7)
  # sequence_mean at ratio 1: -A_i / (|y_i| * 2): row 0 -1/4, row 1 +1/6.
  g3 = jax.grad(
    lambda lp: grpo.policy_loss(
      lp, None, jnp.array(ADV), jnp.array(MASK), config=grpo.LossConfig(aggregation='sequence_mean')
    )[0]
  )(jnp.array(LOGP))
  np.testing.assert_allclose(g3, [[-1 / 4, -1 / 4, 0], [1 / 6, 1 / 6, 1 / 6], [0, 0, 0]], atol=1e-7)


def test_gradients_finite_with_garbage_padding():
  # Every option on at once; the inf ratio / -1e4 ref in padding must not produce NaN/inf gradients.
  cfg = grpo.LossConfig(
    epsilon_high=0.28,
    dual_clip=3.0,
    beta=0.05,
    kl_estimator='k3',
    tis_cap=2.0,
    entropy_coef=0.01,
    importance_level='sequence',
  )
  f = lambda lp: grpo.policy_loss(
    lp,
    jnp.array(OLD),
    jnp.array(ADV),
    jnp.array(MASK),
    config=cfg,
    ref_logp=jnp.array(REF),
    sampler_logp=jnp.array(OLD),
    entropy=jnp.ones((3, 3)),
  )[0]
  g = jax.grad(f)(jnp.array(LOGP))
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~VALID] == 0)


def test_policy_loss_jit_matches_eager_and_presets():
  for cfg in (
    grpo.LossConfig.grpo(),
    grpo.LossConfig.dr_grpo(max_tokens=4),
    grpo.LossConfig.dapo(),
    grpo.LossConfig.gspo(),
  ):
    kw = dict(ref_logp=jnp.array(REF)) if cfg.beta > 0 else {}
    eager = _loss(cfg, **kw)
    jitted = jax.jit(functools.partial(grpo.policy_loss, config=cfg, **kw))(
      jnp.array(LOGP), jnp.array(OLD), jnp.array(ADV), jnp.array(MASK)
    )
    assert float(jitted[0]) == pytest.approx(eager[0], abs=1e-6)
  # DAPO preset = eps (0.2, 0.28): r=1.5 -> clipped at 1.28; sum = -1.28 - 0.9 + 3.2 = 1.02 -> 0.204.
  assert _loss(grpo.LossConfig.dapo())[0] == pytest.approx(0.204, abs=1e-6)
  assert dataclasses.replace(grpo.LossConfig.dapo(), beta=0.1).beta == 0.1


def test_config_and_input_errors():
  for bad in (
    dict(dual_clip=0.5),
    dict(aggregation='mean'),
    dict(kl_estimator='k4'),
    dict(epsilon=0.0),
    dict(importance_level='seq'),
  ):
    with pytest.raises(ValueError, match='LossConfig'):
      grpo.LossConfig(**bad)
  with pytest.raises(ValueError, match='ref_logp'):
    _loss(grpo.LossConfig(beta=0.1))
  with pytest.raises(ValueError, match='sampler_logp'):
    _loss(grpo.LossConfig(tis_cap=2.0))
  with pytest.raises(ValueError, match='mask'):
    _loss(grpo.LossConfig(), mask=MASK[:, :2])


# ----------------------------------------------------------------------------------------------------------------
# Host-side helpers
# ----------------------------------------------------------------------------------------------------------------
def test_dynamic_sampling_keep():
  # 4 groups of 3: mixed, all 1, all 0, mixed -> keep the two mixed ones (half the groups have zero variance).
  r = np.array([1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0.5, 0])
  keep = grpo.dynamic_sampling_keep(r, 3)
  assert keep.dtype == bool and keep.tolist() == [True, False, False, True]
  # Consistent with the advantages: dropped groups are exactly the zero-advantage ones.
  adv = np.asarray(grpo.compute_advantages(jnp.array(r, jnp.float32), 3)).reshape(4, 3)
  assert (np.abs(adv).sum(1) > 0).tolist() == keep.tolist()


def test_overlong_penalty():
  # max=10, buffer=4: free up to 6 tokens, then -(L - 6)/4: L=7 -> -0.25, 8 -> -0.5, 10 -> -1, 11 (over) -> -1.
  p = grpo.overlong_penalty(np.array([0, 6, 7, 8, 10, 11]), max_new_tokens=10, buffer_len=4, penalty_factor=1.0)
  np.testing.assert_allclose(p, [0, 0, -0.25, -0.5, -1, -1])
  assert p.dtype == np.float32
  # penalty_factor scales linearly: 0.5 -> -0.125 at L=7, -0.5 at L=10.
  np.testing.assert_allclose(grpo.overlong_penalty([7, 10], 10, 4, 0.5), [-0.125, -0.5])
  # No buffer: nothing up to max, the full penalty beyond it.
  np.testing.assert_allclose(grpo.overlong_penalty([5, 10, 11], 10, 0, 1.0), [0, 0, -1])
  with pytest.raises(ValueError, match='buffer_len'):
    grpo.overlong_penalty([1], 10, 11, 1.0)


def test_truncation_mask():
  mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  out = grpo.truncation_mask(mask, np.array([False, True]))
  assert out.dtype == np.float32 and out.tolist() == [[1, 1, 0], [0, 0, 0]]
  out = grpo.truncation_mask(jnp.array(mask, bool), jnp.array([True, False]))
  assert out.dtype == jnp.bool_ and np.asarray(out).tolist() == [[False] * 3, [True] * 3]


# GDPO: multi-reward advantages ------------------------------------------------------------------------------------
def _gdpo_reference(sub, weights, g, eps=1e-4):
  """The GDPO recipe in plain numpy, row by row."""
  sub = np.asarray(sub, np.float64)
  out = np.zeros(len(sub))
  for start in range(0, len(sub), g):
    for k, w in enumerate(weights):
      col = sub[start : start + g, k]
      if col.max() != col.min():
        out[start : start + g] += w * (col - col.mean()) / (col.std() + eps)
  return (out - out.mean()) / (out.std() + eps) if out.std() > 0 else out


def test_gdpo_normalises_each_reward_in_its_group_then_the_sum_over_the_batch():
  # 3 prompts x G=4; column 0 a 0/1 correctness, column 1 a narrow-range style score
  sub = [[1, 0.50], [0, 0.52], [0, 0.51], [1, 0.50],
         [0, 0.90], [0, 0.91], [0, 0.92], [0, 0.90],
         [1, 0.30], [1, 0.30], [1, 0.30], [1, 0.30]]  # fmt: skip
  adv = np.asarray(grpo.gdpo_advantages(jnp.asarray(sub), jnp.asarray([0.8, 0.2]), 4))
  np.testing.assert_allclose(adv, _gdpo_reference(sub, [0.8, 0.2], 4), rtol=1e-5, atol=1e-5)
  assert np.all(adv[8:] == adv[8])  # a group constant in every reward has the same advantage as the batch mean
  # the narrow style score still ranks the rows of the group whose correctness ties: GRPO on the combined reward
  # gives them the same ordering but a magnitude set by a 0.02 spread, next to groups spread by 0.8
  assert adv[6] > adv[5] > adv[4] and adv[4] == pytest.approx(adv[7])
  assert np.all(np.asarray(grpo.gdpo_advantages(jnp.ones((8, 2)), jnp.ones(2), 4)) == 0)
  # a discarded row (keep False) takes no part: the kept rows' advantages are those of the batch without it,
  # whatever its sub-rewards (before, its 0s moved its group's means and stds and the batch's)
  keep = np.ones(12, bool)
  keep[[1, 9]] = False
  kept = np.asarray(grpo.gdpo_advantages(jnp.asarray(sub), jnp.asarray([0.8, 0.2]), 4, keep=jnp.asarray(keep)))
  moved = np.asarray(sub, np.float32)
  moved[[1, 9]] = [[1, 5.0], [0, -3.0]]
  again = np.asarray(grpo.gdpo_advantages(jnp.asarray(moved), jnp.asarray([0.8, 0.2]), 4, keep=jnp.asarray(keep)))
  np.testing.assert_allclose(again, kept, atol=1e-6)
  assert kept[1] == kept[9] == 0 and np.abs(kept[keep]).max() > 0.5


def test_gdpo_needs_a_multi_grader_with_a_weighted_sum():
  from rftjax import graders

  def multi(formula):
    leaf = {'type': 'string_check', 'input': '{{sample.output_text}}', 'reference': 'x', 'operation': 'eq'}
    return graders.build({'type': 'multi', 'graders': {'a': leaf, 'b': leaf}, 'calculate_output': formula})

  assert multi('0.7 * a + 0.3 * b').linear_weights() == pytest.approx({'a': 0.7, 'b': 0.3})
  assert multi('(a + 2 * b) / 4 + 1').linear_weights() == pytest.approx({'a': 0.25, 'b': 0.5})
  assert multi('max(a, b)').linear_weights() is None and multi('a * b').linear_weights() is None
  # linear on [0, 1) where weights were read, not on a 0-10 score_model's range (b > 5) or past clipping
  assert multi('a + 0.1 * max(b, 5)').linear_weights() is None and multi('a + min(b, 1)').linear_weights() is None
  assert multi('a + b ^ 2').linear_weights() is None
  assert multi('sqrt(4) * a + 2 ^ 2 * b').linear_weights() == pytest.approx(
    {'a': 2.0, 'b': 4.0}
  )  # constants bend nothing


def test_a_batch_without_valid_tokens_has_no_token_means():
  """Dynamic sampling may mask every row of a step: its entropy is not 0 (what the guard reads as a collapse)."""
  logp = jnp.full((2, 3), -1.0)
  mask = jnp.zeros((2, 3))
  loss, m = grpo.policy_loss(
    logp, logp, jnp.ones(2), mask, config=grpo.LossConfig(beta=0.04), ref_logp=logp, entropy=jnp.ones((2, 3))
  )
  assert float(loss) == 0.0 and float(m['pg_loss']) == 0.0
  for key in ('kl', 'clip_frac_low', 'clip_frac_high', 'ratio_mean', 'tis_weight_mean', 'entropy'):
    assert np.isnan(float(m[key])), key
  _, m = grpo.policy_loss(logp, logp, jnp.ones(2), mask.at[0, 0].set(1.0), config=grpo.LossConfig(), entropy=logp)
  assert float(m['entropy']) == -1.0 and float(m['tis_weight_mean']) == 1.0
