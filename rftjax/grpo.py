"""GRPO maths as small pure functions: advantages, per-token log-probs, the clipped policy loss, DAPO helpers.

Shapes (the trainer's contract, see docs/design.md and docs/grpo.md):
  rewards      [N]      N = B*G, prompt-major: the G samples of prompt 0 come first, then prompt 1, ...
  logp, mask   [N, T]   per completion token; mask is 1 (or True) on real completion tokens and 0 on padding after
                        EOS and on every token of a completion that was masked out (e.g. truncated).
  advantages   [N]      one per completion (a [N, T] array of per-token advantages is accepted too).

Everything under "device" is jnp and jit-able (``LossConfig`` is a frozen, hashable dataclass, so it can be a
static argument or a closure constant). The functions under "host" take and return numpy arrays and are meant to
run between sampling and the train step, outside jit.

References (equation numbers refer to the arXiv versions):
  [GRPO]   Shao et al. 2024, DeepSeekMath, arXiv:2402.03300.
  [PPO]    Schulman et al. 2017, Proximal Policy Optimization Algorithms, arXiv:1707.06347.
  [DAPO]   Yu et al. 2025, DAPO: An Open-Source LLM RL System at Scale, arXiv:2503.14476.
  [DrGRPO] Liu et al. 2025, Understanding R1-Zero-Like Training: A Critical Perspective, arXiv:2503.20783.
  [GSPO]   Zheng et al. 2025, Group Sequence Policy Optimization, arXiv:2507.18071.
  [RLOO]   Kool et al. 2019, Buy 4 REINFORCE Samples, Get a Baseline for Free!; Ahmadian et al. 2024, Back to
           Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback, arXiv:2402.14740.
  [DUAL]   Ye et al. 2020, Mastering Complex Control in MOBA Games with Deep RL, arXiv:1912.09729.
  [KL]     Schulman 2020, Approximating KL Divergence, http://joschu.net/blog/kl-approx.html.
  [TIS]    Yao et al. 2025, Your Efficient RL Framework Secretly Brings You Off-Policy RL Training (blog post).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ADVANTAGE_METHODS = ('grpo', 'dr_grpo', 'rloo', 'gdpo')
ADVANTAGE_SCALES = ('group', 'batch', 'none')
IMPORTANCE_LEVELS = ('token', 'sequence')
KL_ESTIMATORS = ('k1', 'k2', 'k3')
AGGREGATIONS = ('token_mean', 'sequence_mean', 'constant')

# Default scale per advantage method when the caller passes scale=None.
_DEFAULT_SCALE = {'grpo': 'group', 'dr_grpo': 'none', 'rloo': 'none', 'gdpo': 'group'}


# ----------------------------------------------------------------------------------------------------------------
# Advantages (device)
# ----------------------------------------------------------------------------------------------------------------
def compute_advantages(
  rewards: jax.Array,
  num_generations: int,
  method: str = 'grpo',
  scale: str | None = None,
  eps: float = 1e-4,
  ddof: int = 0,
  keep=None,
  batch_moments=None,
) -> jax.Array:
  """Group-relative advantages, one per completion: [N] -> [N] float32, N = B*G prompt-major.

  method='grpo' ([GRPO] §4.1.2, outcome supervision):  A_i = (r_i - mean(r_group)) / (std(r_group) + eps).
  method='dr_grpo' ([DrGRPO] §3.1, Dr. GRPO objective): A_i = r_i - mean(r_group); the std division is removed
      because it up-weights groups whose rewards barely differ (too easy / too hard questions).
      dr_grpo is exactly grpo with scale='none'; asking for dr_grpo with another scale raises ValueError.
  method='rloo' ([RLOO], leave-one-out baseline): A_i = r_i - (sum_j r_j - r_i) / (G - 1)
      = G/(G-1) * (r_i - mean(r_group)). Needs G >= 2.

  scale (None = the method's default: 'group' for grpo, 'none' for dr_grpo and rloo):
    'group': divide by the group's std of rewards (+ eps);
    'batch': divide by the std of all N rewards of the batch (+ eps) ("group mean, batch std", as TRL's
             scale_rewards='batch'); the centring is still per group;
    'none':  no division.
  std is the POPULATION std (ddof=0, divide by G) by default, which is what the DeepSeekMath formula std(r) reads
  as; TRL computes torch's unbiased std (ddof=1, divide by G-1): pass ddof=1 to match it.

  A group whose G rewards are all equal gets advantage exactly 0 (never eps-amplified round-off, never NaN).

  keep ([N] bool, None = all): rows left out (discarded rollouts) take no part in any mean or std, and get 0; a
  group is then its kept rows (rloo: G is their count). batch_moments(x, keep) -> (mean, std) for scale='batch' (a
  multi-host batch pools its hosts'; None: this array's).
  """
  if method not in ADVANTAGE_METHODS or method == 'gdpo':
    raise ValueError(
      f'compute_advantages: method={method!r}; expected one of {ADVANTAGE_METHODS[:3]} (gdpo: gdpo_advantages)'
    )
  if scale is None:
    scale = _DEFAULT_SCALE[method]
  if scale not in ADVANTAGE_SCALES:
    raise ValueError(f'compute_advantages: scale={scale!r}; expected one of {ADVANTAGE_SCALES}')
  if method == 'dr_grpo' and scale != 'none':
    raise ValueError(
      f"compute_advantages: method='dr_grpo' means no std scaling, got scale={scale!r}; "
      "use method='grpo' with that scale instead"
    )
  g = int(num_generations)
  r = jnp.asarray(rewards, jnp.float32)
  if r.ndim != 1 or g < 1 or r.shape[0] % g:
    raise ValueError(f'compute_advantages: rewards must be [B*G] with G={g}, got shape {r.shape}')
  if method == 'rloo' and g < 2:
    raise ValueError("compute_advantages: method='rloo' needs num_generations >= 2")
  if scale != 'none' and ddof >= g:
    raise ValueError(f'compute_advantages: ddof={ddof} needs num_generations > ddof, got {g}')

  r_bg = r.reshape(-1, g)
  keep_bg = None if keep is None else jnp.asarray(keep, bool).reshape(-1, g)
  mean_b1, std_b1 = _moments(r_bg, keep_bg, ddof, axis=1)
  adv_bg = r_bg - mean_b1
  if method == 'rloo':  # == r_i - mean of the other G-1 (of the other kept rows)
    count = keep_bg.sum(axis=1, keepdims=True) if keep_bg is not None else None
    adv_bg = adv_bg * (g / (g - 1) if count is None else count / jnp.maximum(count - 1, 1))
  if scale == 'group':
    adv_bg = adv_bg / (std_b1 + eps)
  elif scale == 'batch':
    flat = None if keep_bg is None else keep_bg.reshape(-1)
    std = (batch_moments or (lambda x, k: _moments(x, k, ddof)))(r, flat)[1]
    adv_bg = adv_bg / (std + eps)
  # Constant groups carry no signal: force exact zeros (round-off in the mean could otherwise survive).
  adv_bg = jnp.where(_constant(r_bg, keep_bg), 0.0, adv_bg)
  if keep_bg is not None:
    adv_bg = jnp.where(keep_bg, adv_bg, 0.0)
  return adv_bg.reshape(-1)


def _moments(x, keep, ddof: int = 0, axis=None):
  """(mean, std) of x along `axis` (None: all of it; kept dims otherwise), over the `keep` entries only when given
  (keep: x's leading dims)."""
  kw = dict(axis=axis, keepdims=axis is not None)
  if keep is None:
    return x.mean(**kw), x.std(ddof=ddof, **kw)
  keep = jnp.broadcast_to(keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim)), x.shape)
  count = keep.sum(**kw)
  mean = jnp.where(keep, x, 0.0).sum(**kw) / jnp.maximum(count, 1)
  var = jnp.where(keep, (x - mean) ** 2, 0.0).sum(**kw) / jnp.maximum(count - ddof, 1)
  return mean, jnp.sqrt(var)


def _constant(x, keep):
  """[B, G(, K)] -> [B, 1(, K)]: True where the (kept) values of a group are all equal (or fewer than two kept)."""
  if keep is None:
    return x.max(axis=1, keepdims=True) == x.min(axis=1, keepdims=True)
  keep = keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim))
  hi = jnp.where(keep, x, -jnp.inf).max(axis=1, keepdims=True)
  return hi <= jnp.where(keep, x, jnp.inf).min(axis=1, keepdims=True)


def gdpo_advantages(
  sub_rewards: jax.Array, weights: jax.Array, num_generations: int, eps: float = 1e-4, keep=None, batch_moments=None
) -> jax.Array:
  """GDPO (Liu et al. 2026, "Group reward-Decoupled Normalization Policy Optimization"): [N, K] sub-rewards (one
  column per sub-grader of a `multi` grader) -> [N] advantages.

  Each reward is normalised within its group on its own, A_k = (r_k - mean_group) / (std_group + eps) (a constant
  group gives 0), the A_k are summed with the weights of the grader's weighted-sum formula, and the sum is
  normalised over the batch, (A - mean) / (std + eps). Normalising the combined reward instead (GRPO) lets a
  sub-grader with a wide spread drown one with a narrow spread, and maps different reward combinations to the same
  advantage; decoupled, each criterion keeps its own signal.

  keep and batch_moments: as compute_advantages' (the batch normalisation pools the kept rows of every host).
  """
  g = int(num_generations)
  r = jnp.asarray(sub_rewards, jnp.float32)
  if r.ndim != 2 or r.shape[0] % g:
    raise ValueError(f'gdpo_advantages: sub_rewards must be [B*G, K] with G={g}, got shape {r.shape}')
  r_bgk = r.reshape(-1, g, r.shape[1])
  keep_bg = None if keep is None else jnp.asarray(keep, bool).reshape(-1, g)
  mean, std = _moments(r_bgk, keep_bg, axis=1)
  per_reward = jnp.where(_constant(r_bgk, keep_bg), 0.0, (r_bgk - mean) / (std + eps))
  total = (per_reward * jnp.asarray(weights, jnp.float32)).sum(-1).reshape(-1)
  mean, spread = (batch_moments or _moments)(total, keep)
  out = jnp.where(spread > 0, (total - mean) / (spread + eps), 0.0)
  return out if keep is None else jnp.where(jnp.asarray(keep, bool), out, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Log-probs and entropy (device)
# ----------------------------------------------------------------------------------------------------------------
def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
  """log pi(target_t | context) in float32: logits [..., T, V], targets [..., T] int -> [..., T] (logits of size 1
  in a leading dim serve every target along it: one prediction, several sampled tokens).

  log_softmax(z)[y] = z_y - logsumexp(z). The [..., V] log_softmax tensor is never built: we gather the one target
  logit and subtract a float32 logsumexp (under jit XLA fuses the upcast into the reduction, so no float32 copy of
  bf16 logits is materialised). `temperature` must equal the sampler's, so that these are the logprobs of the
  distribution that was actually sampled from.
  """
  try:
    fits = jnp.broadcast_shapes(logits.shape[:-1], targets.shape) == targets.shape
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f'token_logprobs: logits {logits.shape} and targets {targets.shape} disagree on [..., T]')
  z = logits.astype(jnp.float32)
  if temperature != 1.0:
    z = z / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  target_logit = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return target_logit - lse


def entropy_from_logits(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
  """Entropy of the next-token distribution in float32: [..., T, V] -> [..., T] (nats).

  H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v with p = softmax(z); the second form needs no log p tensor.
  """
  z = logits.astype(jnp.float32)
  if temperature != 1.0:
    z = z / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  p = jax.nn.softmax(z, axis=-1)
  return lse - jnp.sum(p * z, axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Policy loss (device)
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Options of `policy_loss`; see docs/grpo.md for each one's equation and the GRPO/Dr.GRPO/DAPO/GSPO presets.

  epsilon:          low clip: ratio is clipped below at 1 - epsilon ([PPO] Eq. 7).
  epsilon_high:     high clip, ratio clipped above at 1 + epsilon_high; None = epsilon ([DAPO] clip-higher, 0.28).
  dual_clip:        None or c > 1: for A < 0 the per-token loss is bounded by c*|A| ([DUAL]).
  importance_level: 'token' (PPO/GRPO ratio per token) or 'sequence' ([GSPO] length-normalised sequence ratio).
  beta:             KL coefficient against the reference policy; 0 = no KL term (ref_logp may be None).
  kl_estimator:     'k1' = logp - ref, 'k2' = (logp - ref)^2 / 2, 'k3' = exp(ref - logp) - (ref - logp) - 1 ([KL]).
  aggregation:      'token_mean' ([DAPO]), 'sequence_mean' ([GRPO]), 'constant' ([DrGRPO]).
  max_tokens:       denominator of 'constant' aggregation per sequence; None = T, the padded completion length.
  tis_cap:          None or C: weight each token's policy-gradient loss by min(exp(old - sampler), C) ([TIS]).
  entropy_coef:     subtract entropy_coef * H (aggregated like the loss) - an entropy bonus; needs `entropy`.
  """

  epsilon: float = 0.2
  epsilon_high: float | None = None
  dual_clip: float | None = None
  importance_level: str = 'token'
  beta: float = 0.0
  kl_estimator: str = 'k3'
  aggregation: str = 'token_mean'
  max_tokens: int | None = None
  tis_cap: float | None = None
  entropy_coef: float = 0.0

  def __post_init__(self):
    def bad(field, found, expected):
      raise ValueError(f'LossConfig.{field}: found {found!r}, expected {expected}')

    if not self.epsilon > 0:
      bad('epsilon', self.epsilon, '> 0')
    if self.epsilon_high is not None and not self.epsilon_high > 0:
      bad('epsilon_high', self.epsilon_high, 'None or > 0')
    if self.dual_clip is not None and not self.dual_clip > 1:
      bad('dual_clip', self.dual_clip, 'None or > 1')
    if self.importance_level not in IMPORTANCE_LEVELS:
      bad('importance_level', self.importance_level, f'one of {IMPORTANCE_LEVELS}')
    if not self.beta >= 0:
      bad('beta', self.beta, '>= 0')
    if self.kl_estimator not in KL_ESTIMATORS:
      bad('kl_estimator', self.kl_estimator, f'one of {KL_ESTIMATORS}')
    if self.aggregation not in AGGREGATIONS:
      bad('aggregation', self.aggregation, f'one of {AGGREGATIONS}')
    if self.max_tokens is not None and not self.max_tokens >= 1:
      bad('max_tokens', self.max_tokens, 'None or >= 1')
    if self.tis_cap is not None and not self.tis_cap > 0:
      bad('tis_cap', self.tis_cap, 'None or > 0')

  @property
  def eps_high(self) -> float:
    return self.epsilon if self.epsilon_high is None else self.epsilon_high

  # Presets (docs/grpo.md explains each choice). Override fields with dataclasses.replace(...).
  @classmethod
  def grpo(cls, **kw: Any) -> 'LossConfig':
    """DeepSeekMath GRPO: symmetric clip 0.2, k3 KL with beta=0.04, per-sequence mean."""
    return cls(**{'epsilon': 0.2, 'beta': 0.04, 'kl_estimator': 'k3', 'aggregation': 'sequence_mean', **kw})

  @classmethod
  def dr_grpo(cls, max_tokens: int, **kw: Any) -> 'LossConfig':
    """Dr. GRPO: no length normalisation (constant max_tokens), no KL; pair with method='dr_grpo' advantages."""
    return cls(**{'epsilon': 0.2, 'beta': 0.0, 'aggregation': 'constant', 'max_tokens': max_tokens, **kw})

  @classmethod
  def dapo(cls, **kw: Any) -> 'LossConfig':
    """DAPO: clip-higher (0.2, 0.28), token-level mean, no KL."""
    return cls(**{'epsilon': 0.2, 'epsilon_high': 0.28, 'beta': 0.0, 'aggregation': 'token_mean', **kw})

  @classmethod
  def gspo(cls, **kw: Any) -> 'LossConfig':
    """GSPO: sequence-level ratio with the paper's tiny clip range (3e-4, 4e-4), no KL, per-sequence mean."""
    return cls(
      **{
        'epsilon': 3e-4,
        'epsilon_high': 4e-4,
        'importance_level': 'sequence',
        'beta': 0.0,
        'aggregation': 'sequence_mean',
        **kw,
      }
    )


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """sum(x * mask) / max(sum(mask), 1): a scalar mean over the valid entries (0 when there are none)."""
  m = mask.astype(jnp.float32)
  return jnp.sum(jnp.where(m > 0, x, 0.0) * m) / jnp.maximum(jnp.sum(m), 1.0)


def aggregate_denominator(mask_nt: jax.Array, aggregation: str, max_tokens: int | None = None) -> jax.Array:
  """The outer denominator of `aggregate` for this mask: valid tokens ('token_mean'), sequences with >= 1 valid token
  ('sequence_mean'), or N * max_tokens ('constant'). Computed on a whole batch, it is what micro-batches share."""
  m = mask_nt.astype(jnp.float32)
  if aggregation == 'token_mean':
    return jnp.maximum(jnp.sum(m), 1.0)
  if aggregation == 'sequence_mean':
    return jnp.maximum(jnp.sum(jnp.sum(m, axis=-1) > 0), 1).astype(jnp.float32)
  if aggregation == 'constant':
    return jnp.float32(m.shape[0] * (m.shape[-1] if max_tokens is None else max_tokens))
  raise ValueError(f'aggregate: aggregation={aggregation!r}; expected one of {AGGREGATIONS}')


def aggregate(
  x_nt: jax.Array,
  mask_nt: jax.Array,
  aggregation: str,
  max_tokens: int | None = None,
  denominator: jax.Array | float | None = None,
) -> jax.Array:
  """Reduce per-token values [N, T] to the scalar loss ("loss aggregation").

  'token_mean'    ([DAPO] Eq. 12, token-level loss): sum_{i,t} m x / sum_{i,t} m.
  'sequence_mean' ([GRPO] Eq. 3): mean over the sequences that have >= 1 valid token of (sum_t m x / sum_t m);
                  fully masked rows (masked truncations, batch padding) are not counted.
  'constant'      ([DrGRPO] §3.1): sum_{i,t} m x / (N * max_tokens), max_tokens None -> T; every row counts in N,
                  so the normaliser does not depend on lengths or on how many completions were masked.
  `denominator` replaces the outer denominator (the valid-token count, the valid-sequence count, or N*max_tokens),
  e.g. the global count when gradients are accumulated over micro-batches.
  """
  m = mask_nt.astype(jnp.float32)
  x = jnp.where(m > 0, x_nt, 0.0) * m  # where(): padding may hold inf/NaN garbage; 0*NaN would still be NaN
  if denominator is None:
    den = aggregate_denominator(mask_nt, aggregation, max_tokens)  # also rejects an unknown aggregation
  else:
    den = jnp.asarray(denominator, jnp.float32)
  if aggregation == 'sequence_mean':
    num = jnp.sum(jnp.sum(x, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0))
  elif aggregation in ('token_mean', 'constant'):
    num = jnp.sum(x)
  else:
    raise ValueError(f'aggregate: aggregation={aggregation!r}; expected one of {AGGREGATIONS}')
  return num / den


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta ([KL]; [GRPO] Eq. 4 uses k3).

  With d = ref_logp - logp (log pi_ref/pi_theta at the sampled token):
    k1 = -d                  unbiased, high variance, can be negative;
    k2 = d^2 / 2             biased, low variance, >= 0;
    k3 = exp(d) - d - 1      unbiased, low variance, >= 0.
  """
  d = ref_logp - logp
  if estimator == 'k1':
    return -d
  if estimator == 'k2':
    return 0.5 * jnp.square(d)
  if estimator == 'k3':
    return jnp.exp(d) - d - 1.0
  raise ValueError(f'kl_penalty: estimator={estimator!r}; expected one of {KL_ESTIMATORS}')


def policy_loss(
  logp: jax.Array,
  old_logp: jax.Array | None,
  advantages: jax.Array,
  mask: jax.Array,
  *,
  config: LossConfig,
  ref_logp: jax.Array | None = None,
  sampler_logp: jax.Array | None = None,
  entropy: jax.Array | None = None,
  loss_denominator: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The clipped-surrogate GRPO loss and its metrics: (scalar loss, {name: scalar}).

  Per token (i completion, t position), with r the importance ratio and A the advantage ([GRPO] Eq. 3, [PPO] Eq. 7,
  [DAPO] Eq. 10 for the decoupled range):
    pg_{i,t} = -min(r A, clip(r, 1 - eps, 1 + eps_high) A)
  dual clip ([DUAL]), c = config.dual_clip, for A < 0 only:  pg_{i,t} = min(pg_{i,t}, c |A|)
  truncated importance sampling ([TIS]):  pg_{i,t} *= w_{i,t} = sg[min(exp(old - sampler), tis_cap)]
  loss = agg(pg) + beta * agg(KL_est(logp, ref)) - entropy_coef * agg(H)      (agg per config.aggregation)

  Importance ratio:
    'token':     r_{i,t} = exp(logp - old) ([GRPO] Eq. 3).
    'sequence':  s_i = exp(mean_{valid t}(logp - old)) = (pi/pi_old)(y_i)^(1/|y_i|) ([GSPO] Eq. 7), used in the
                 GSPO-token form ([GSPO] Eq. 14) r_{i,t} = sg[s_i] * exp(logp - sg[logp]): its value is s_i on every
                 token and d r_{i,t} = s_i d logp_{i,t}, so with a per-sequence advantage the gradient equals GSPO's
                 (s_i A_i / |y_i| * sum_t grad logp) under 'sequence_mean', and per-token advantages work too.

  Args:
    logp: [N, T] log pi_theta of the sampled tokens (float32, differentiable).
    old_logp: [N, T] log pi_old (treated as a constant), or None for num_iterations=1, meaning stop_gradient(logp):
      then r = 1 in value but its gradient is grad logp.
    advantages: [N] (one per completion) or [N, T].
    mask: [N, T] float or bool, 1 on valid completion tokens.
    config: LossConfig (static).
    ref_logp: [N, T] reference-policy logprobs; required when beta > 0; when given with beta = 0 the KL is only
      reported.
    sampler_logp: [N, T] logprobs the sampler reported; required when tis_cap is set; gives `logprob_gap`.
    entropy: [N, T] per-token entropy (entropy_from_logits); required when entropy_coef != 0.
    loss_denominator: overrides the aggregation's denominator for every term (see `aggregate`).

  Metrics (masked token means over valid tokens unless said): loss; pg_loss (aggregated like the loss);
  kl (masked mean of the estimator, 0 without ref_logp); clip_frac_low (r < 1 - eps and A < 0: the low clip is
  active); clip_frac_high (r > 1 + eps_high and A > 0); dual_clip_frac (A < 0 and c|A| < the clipped loss, only
  with dual_clip); ratio_mean; tis_weight_mean (1 without TIS); entropy (if given); logprob_gap
  (mean |old - sampler|, if sampler_logp given). With no valid token every metric but the losses is NaN.
  """
  cfg = config
  if logp.ndim != 2 or mask.shape != logp.shape:
    raise ValueError(f'policy_loss: logp {logp.shape} and mask {mask.shape} must both be [N, T]')
  for name, arr in (
    ('old_logp', old_logp),
    ('ref_logp', ref_logp),
    ('sampler_logp', sampler_logp),
    ('entropy', entropy),
  ):
    if arr is not None and arr.shape != logp.shape:
      raise ValueError(f'policy_loss: {name} has shape {arr.shape}, expected {logp.shape} like logp')
  if cfg.beta > 0 and ref_logp is None:
    raise ValueError(f'policy_loss: LossConfig.beta={cfg.beta} > 0 needs ref_logp')
  if cfg.tis_cap is not None and sampler_logp is None:
    raise ValueError(f'policy_loss: LossConfig.tis_cap={cfg.tis_cap} needs sampler_logp')
  if cfg.entropy_coef != 0 and entropy is None:
    raise ValueError(f'policy_loss: LossConfig.entropy_coef={cfg.entropy_coef} needs entropy')

  valid = mask.astype(jnp.float32) > 0
  logp = logp.astype(jnp.float32)
  old = jax.lax.stop_gradient(logp if old_logp is None else old_logp.astype(jnp.float32))
  adv = advantages.astype(jnp.float32)
  if adv.ndim == 1:
    adv = adv[:, None]
  adv = jnp.broadcast_to(adv, logp.shape)

  # Padding may carry arbitrary logprobs: zero the log-ratio there so exp() cannot overflow into NaN gradients.
  log_ratio = jnp.where(valid, logp - old, 0.0)
  if cfg.importance_level == 'token':
    ratio = jnp.exp(log_ratio)
  else:
    len_n1 = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1).astype(jnp.float32)
    seq_log_ratio_n1 = jnp.sum(log_ratio, axis=-1, keepdims=True) / len_n1
    token_part = jnp.where(valid, logp - jax.lax.stop_gradient(logp), 0.0)  # value 0, gradient d logp
    ratio = jnp.exp(jax.lax.stop_gradient(seq_log_ratio_n1) + token_part)

  eps_low, eps_high = cfg.epsilon, cfg.eps_high
  unclipped = -ratio * adv
  clipped = -jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
  pg = jnp.maximum(unclipped, clipped)
  if cfg.dual_clip is not None:
    bound = -cfg.dual_clip * adv  # = c|A| where A < 0
    pg = jnp.where(adv < 0, jnp.minimum(pg, bound), pg)

  if sampler_logp is not None:
    sampler = sampler_logp.astype(jnp.float32)
    old_minus_sampler = jnp.where(valid, old - sampler, 0.0)
  if cfg.tis_cap is not None:
    tis_w = jax.lax.stop_gradient(jnp.minimum(jnp.exp(old_minus_sampler), cfg.tis_cap))
    pg = pg * tis_w
  else:
    tis_w = jnp.ones_like(logp)

  def agg(x):
    return aggregate(x, valid, cfg.aggregation, cfg.max_tokens, loss_denominator)

  pg_loss = agg(pg)
  loss = pg_loss
  if ref_logp is not None:
    # Both sides zeroed on padding (d = 0 there), so exp() in k3 can neither overflow nor send NaN gradients.
    kl = kl_penalty(jnp.where(valid, logp, 0.0), jnp.where(valid, ref_logp.astype(jnp.float32), 0.0), cfg.kl_estimator)
    if cfg.beta > 0:
      loss = loss + cfg.beta * agg(kl)
    kl_metric = masked_mean(kl, valid)
  else:
    kl_metric = jnp.float32(0.0)
  if entropy is not None and cfg.entropy_coef != 0:
    loss = loss - cfg.entropy_coef * agg(entropy.astype(jnp.float32))

  r = jax.lax.stop_gradient(ratio)
  metrics = {
    'loss': loss,
    'pg_loss': pg_loss,
    'kl': kl_metric,
    'clip_frac_low': masked_mean(((r < 1.0 - eps_low) & (adv < 0)).astype(jnp.float32), valid),
    'clip_frac_high': masked_mean(((r > 1.0 + eps_high) & (adv > 0)).astype(jnp.float32), valid),
    'ratio_mean': masked_mean(r, valid),
    'tis_weight_mean': masked_mean(tis_w, valid),
  }
  if cfg.dual_clip is not None:
    ppo_clipped = jnp.maximum(-r * adv, -jnp.clip(r, 1.0 - eps_low, 1.0 + eps_high) * adv)
    metrics['dual_clip_frac'] = masked_mean(
      ((adv < 0) & (ppo_clipped > -cfg.dual_clip * adv)).astype(jnp.float32), valid
    )
  if entropy is not None:
    metrics['entropy'] = masked_mean(jax.lax.stop_gradient(entropy.astype(jnp.float32)), valid)
  if sampler_logp is not None:
    metrics['logprob_gap'] = masked_mean(jnp.abs(jax.lax.stop_gradient(old_minus_sampler)), valid)
  # no valid token (dynamic sampling found no group with signal): the token means measure nothing, and a 0 would
  # read as a collapsed entropy; NaN is written as null and skipped by the guard
  empty = jnp.sum(valid) == 0
  metrics = {k: v if k in ('loss', 'pg_loss') else jnp.where(empty, jnp.nan, v) for k, v in metrics.items()}
  return loss, metrics


# ----------------------------------------------------------------------------------------------------------------
# DAPO data-side helpers (host, numpy; outside jit)
# ----------------------------------------------------------------------------------------------------------------
def dynamic_sampling_keep(rewards: np.ndarray, num_generations: int) -> np.ndarray:
  """Host-side. DAPO dynamic sampling ([DAPO] Eq. 11 constraint 0 < |{correct}| < G): bool [B], True for the
  groups whose G rewards are not all equal (they have a non-zero advantage, hence a gradient). rewards: [B*G], or
  [B*G, K] sub-rewards (GDPO normalises each alone): a group has signal when any of its K columns differs.

  The trainer drops the other groups and samples more prompts until the batch is full (or trains on fewer).
  """
  r = np.asarray(rewards, dtype=np.float64)
  g = int(num_generations)
  if r.ndim not in (1, 2) or g < 1 or r.shape[0] % g:
    raise ValueError(f'dynamic_sampling_keep: rewards must be [B*G] or [B*G, K] with G={g}, got shape {r.shape}')
  r_bg = r.reshape(r.shape[0] // g, g, -1)
  return (r_bg.max(axis=1) != r_bg.min(axis=1)).any(axis=-1)


def overlong_penalty(
  lengths: np.ndarray, max_new_tokens: int, buffer_len: int, penalty_factor: float = 1.0
) -> np.ndarray:
  """Host-side. DAPO soft overlong punishment ([DAPO] Eq. 13), lengths in TOKENS: [N] -> float32 [N] to add to
  the rewards.

    0                                        if L <= max_new_tokens - buffer_len
    -penalty_factor * (L - (max - buffer)) / buffer_len   if max - buffer < L <= max   (linear, -penalty at L = max)
    -penalty_factor                          if L > max_new_tokens
  buffer_len = 0 gives no penalty up to max_new_tokens.
  """
  if not 0 <= buffer_len <= max_new_tokens:
    raise ValueError(f'overlong_penalty: buffer_len={buffer_len} must be in [0, max_new_tokens={max_new_tokens}]')
  length = np.asarray(lengths, dtype=np.float64)
  if buffer_len == 0:
    over = (length > max_new_tokens).astype(np.float64)
  else:  # fraction of the buffer used, saturating at 1 from L = max_new_tokens on
    over = np.clip((length - (max_new_tokens - buffer_len)) / buffer_len, 0.0, 1.0)
  return (-penalty_factor * over).astype(np.float32)


def truncation_mask(mask: Any, truncated: Any) -> Any:
  """Zero the mask rows of completions that hit the length limit without EOS: mask [N, T], truncated bool [N].

  DAPO's overlong filtering ([DAPO] §3.4): a truncated completion's reward says little about its quality, so it is
  left out of the loss. Works on numpy and jax arrays alike (only array methods are used) and keeps mask's dtype.
  With 'sequence_mean' aggregation a masked row is also left out of the sequence count (see `aggregate`).
  """
  keep = ~truncated.astype(bool)
  return (mask * keep[:, None]).astype(mask.dtype)
