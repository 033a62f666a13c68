"""Train state, optimizer and the jitted GRPO step.

The state is a plain dict pytree {'params', 'opt_state', 'step'}: Orbax saves it as is, and `abstract_state`
gives the restore target with shardings. The optimizer state is created straight into the params' shardings
(`jax.jit(tx.init)` alone would replicate Adam's moments on every device).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rftjax import grpo
from rftjax import lora
from rftjax import model as model_lib


@flax.struct.dataclass
class Batch:
  """One GRPO batch of R = B*G rows; prompts left-padded to P, completions right-padded to N."""

  prompt_tokens: jax.Array  # [R, P] int32
  prompt_mask: jax.Array  # [R, P] bool
  completion_tokens: jax.Array  # [R, N] int32
  completion_mask: jax.Array  # [R, N] float32 (loss mask: 0 on padding and on masked-out completions)
  advantages: jax.Array  # [R] float32
  sampler_logp: jax.Array  # [R, N] float32
  old_logp: jax.Array | None = None  # [R, N] policy logprobs before this batch's first update (num_iterations > 1)
  ref_logp: jax.Array | None = None  # [R, N] reference logprobs (beta > 0)
  # with group_size > 1, each group's completions packed into rows of N tokens (`pack_completions`): completion r
  # from slot pack_start[r] of its group's row pack_row[r]; None: one row each, from slot 0
  pack_row: jax.Array | None = None  # [R] int32
  pack_start: jax.Array | None = None  # [R] int32
  # static (they pick the program): rows come in consecutive groups of this many identical prompts (GRPO's G), each
  # group's prompt computed once in the forward passes, not G times (model.forward_grouped) ...
  group_size: int = flax.struct.field(pytree_node=False, default=1)
  # ... and its completions in this many rows (0: group_size rows, one per completion)
  pack_rows: int = flax.struct.field(pytree_node=False, default=0)


def schedule(opt_cfg, total_steps: int):
  """Learning rate of update number `count` (0-based): linear warmup that reaches the peak at update `warmup`,
  then constant or cosine decay to 10% of the peak. The first update already moves (lr/warmup, not 0)."""
  lr, warmup = float(opt_cfg.learning_rate), max(int(opt_cfg.warmup_steps), 1)
  if opt_cfg.schedule not in ('constant', 'cosine'):
    raise ValueError(f"config.optimizer.schedule: expected 'constant' or 'cosine', got {opt_cfg.schedule!r}")
  decay_steps = max(total_steps - warmup, 1)

  def fn(count):
    count = jnp.asarray(count, jnp.float32)
    ramp = jnp.minimum(1.0, (count + 1.0) / warmup)
    if opt_cfg.schedule == 'constant':
      return lr * ramp
    progress = jnp.clip((count + 1.0 - warmup) / decay_steps, 0.0, 1.0)
    return lr * ramp * (0.1 + 0.9 * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))

  return fn


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW on `schedule`, after global-norm gradient clipping."""
  return optax.chain(
    optax.clip_by_global_norm(float(opt_cfg.max_grad_norm)),
    optax.adamw(
      schedule(opt_cfg, total_steps),
      b1=float(opt_cfg.b1),
      b2=float(opt_cfg.b2),
      weight_decay=float(opt_cfg.weight_decay),
      mu_dtype=opt_cfg.get('mu_dtype') or None,
    ),
  )


def learning_rate(opt_cfg, step: int, total_steps: int) -> float:
  """The rate used by update number `step` (1-based, as logged), for metrics."""
  return float(schedule(opt_cfg, total_steps)(step - 1))


def _replicated(params):
  first = jax.tree.leaves(params)[0].sharding
  if isinstance(first, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(first.mesh, jax.sharding.PartitionSpec())
  return first


def _opt_shardings(tx, params):
  """Optimizer-state shardings that follow the params (moments) and replicate scalars (counts)."""
  abstract = jax.eval_shape(tx.init, params)
  param_shardings = jax.tree.map(lambda p: p.sharding, params)
  non_param = jax.tree.map(lambda _: _replicated(params), abstract)
  return optax.tree_map_params(tx, lambda _, s: s, non_param, param_shardings, transform_non_params=lambda s: s)


def init_state(params, tx) -> dict:
  opt_state = jax.jit(tx.init, out_shardings=_opt_shardings(tx, params))(params)
  # committed like the step's outputs, or the second call of the step would compile a second program
  step = jax.device_put(jnp.zeros((), jnp.int32), _replicated(params))
  return {'params': params, 'opt_state': opt_state, 'step': step}


def abstract_state(state) -> Any:
  """ShapeDtypeStructs carrying the live state's shardings: the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def loss_extent(mask):
  """[R, N] loss mask -> [R]: each row's tokens up to its last one in the loss (numpy or jax). The train step
  computes only these: later tokens change no loss term (they are masked and nothing before them sees them)."""
  return ((mask > 0) * np.arange(1, mask.shape[-1] + 1)).max(axis=-1)


def pack_completions(extents: np.ndarray, group: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Host side: each group's completions (`extents` [R] tokens each, `loss_extent`) packed into rows of `width`
  tokens, first fit in decreasing length. Returns (pack_row [R], pack_start [R], rows: the most any group needs).

  Rows of the completion width keep attention as cheap as one row per completion, while the MLPs and the
  [rows, width, vocabulary] logits stop computing on padding: completions averaging half the longest fill about
  half the rows."""
  extents = np.asarray(extents, np.int64)
  row, start, rows = np.zeros(extents.size, np.int32), np.zeros(extents.size, np.int32), 1
  for first in range(0, extents.size, group):
    filled: list[int] = []
    for i in first + np.argsort(-extents[first : first + group], kind='stable'):
      c = next((c for c, used in enumerate(filled) if used + extents[i] <= width), len(filled))
      if c == len(filled):
        filled.append(0)
      row[i], start[i], filled[c] = c, filled[c], filled[c] + extents[i]
    rows = max(rows, len(filled))
  return row, start, rows


def _packing(batch: Batch):
  """The packed completion rows of a shared-prompt batch: (tokens, segments, offsets) [B*C, N] for
  model.forward_grouped, and `unpack`, which takes a per-token [B*C, N] array to the rows' [R, N] (0 on the tokens
  `loss_extent` leaves out)."""
  (r, n), g = batch.completion_tokens.shape, batch.group_size
  b, c = r // g, batch.pack_rows or g
  row = jnp.tile(jnp.arange(g), b) if batch.pack_row is None else batch.pack_row
  start = jnp.zeros(r, jnp.int32) if batch.pack_start is None else batch.pack_start
  length = loss_extent(batch.completion_mask)
  row, start, length = (x.reshape(b, 1, 1, g) for x in (row, start, length))
  slot = jnp.arange(n)[None, None, :, None]
  # inside[b, c, j, i]: slot j of the group's row c holds a token of its completion i
  inside = (row == jnp.arange(c)[None, :, None, None]) & (start <= slot) & (slot < start + length)
  real = inside.any(axis=-1)
  segments = jnp.where(real, jnp.sum(jnp.where(inside, jnp.arange(g), 0), axis=-1), -1)
  offsets = jnp.where(real, jnp.arange(n)[None, None] - jnp.sum(jnp.where(inside, start, 0), axis=-1), 0)
  source = (jnp.maximum(segments, 0) * n + offsets).reshape(b, c * n)
  tokens = jnp.take_along_axis(batch.completion_tokens.reshape(b, g * n), source, axis=1).reshape(b * c, n)
  tokens = jnp.where(real.reshape(b * c, n), tokens, 0)
  index = (row * n + start).reshape(b, g, 1) + jnp.arange(n)  # [b, g, n]: each completion token's packed slot
  valid = (jnp.arange(n) < length.reshape(b, g, 1)).reshape(r, n)

  def unpack(x):
    got = jnp.take_along_axis(x.reshape(b, c * n), jnp.minimum(index, c * n - 1).reshape(b, g * n), axis=1)
    return jnp.where(valid, got.reshape(r, n), 0)

  return tokens, segments.reshape(b * c, n), offsets.reshape(b * c, n), unpack


def completion_logits(
  params, cfg: model_lib.TransformerConfig, batch: Batch, *, temperature=1.0, dtype=jnp.float32, remat: bool = False
):
  """Logits / temperature [.., V] float32 that predict the completion tokens, from one forward over prompt +
  completion. Returns (logits, the tokens they predict [..], `unpack`: a per-token array in their layout to the
  batch's [R, N]). Rows: [R, N] (unpack is the identity); a shared-prompt batch: its packed rows [B*C, N]."""
  if batch.group_size > 1:
    g = batch.group_size
    first = lambda x: x.reshape(-1, g, *x.shape[1:])[:, 0]  # noqa: E731  (a reshape: no gather across shards)
    tokens, segments, offsets, unpack = _packing(batch)
    prompts, rest = model_lib.forward_grouped(
      params, cfg, first(batch.prompt_tokens), first(batch.prompt_mask), tokens, segments, offsets,
      dtype=dtype, remat=remat,
    )  # fmt: skip
    # a completion's first token is predicted from its prompt's last position, the others from the token before
    last = jnp.repeat(prompts[:, -1:], tokens.shape[0] // prompts.shape[0], axis=0)
    before = jnp.concatenate([last, rest[:, :-1]], axis=1)
    hidden = jnp.where((offsets == 0)[..., None], last, before)
    return model_lib.unembed(params, cfg, hidden, temperature), tokens, unpack
  p = batch.prompt_tokens.shape[1]
  tokens = jnp.concatenate([batch.prompt_tokens, batch.completion_tokens], axis=1)[:, :-1]
  key_mask = jnp.concatenate([batch.prompt_mask, batch.completion_mask > 0], axis=1)[:, :-1]
  # completion tokens after a stop are padding; keep them visible to nothing but give them sane positions
  key_mask = key_mask | (jnp.arange(tokens.shape[1]) >= p)[None] & batch.prompt_mask[:, -1:]
  positions = jnp.maximum(jnp.cumsum(key_mask, axis=1) - 1, 0).astype(jnp.int32)
  hidden, _ = model_lib.forward(params, cfg, tokens, positions, key_mask, dtype=dtype, remat=remat, return_hidden=True)
  logits = model_lib.unembed(params, cfg, hidden[:, p - 1 :], temperature)
  return logits, batch.completion_tokens, lambda x: x


def token_logprobs(params, cfg, batch: Batch, temperature: float, **kw):
  """log pi(completion token) [R, N] at the sampling temperature."""
  logits, targets, unpack = completion_logits(params, cfg, batch, temperature=temperature, **kw)
  return unpack(grpo.token_logprobs(logits, targets))


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static parts of the train step (hashable: it keys the jit cache)."""

  model: model_lib.TransformerConfig
  loss: grpo.LossConfig
  temperature: float = 1.0
  compute_dtype: str = 'float32'
  remat: bool = False
  microbatches: int = 1  # gradient accumulation: the batch's rows in this many sequential chunks
  num_iterations: int = 1  # mu: updates per sampled batch (GRPO's inner loop)


@functools.partial(jax.jit, static_argnums=0)
def policy_logprobs(step_cfg: StepConfig, params, batch: Batch):
  """Logprobs of the sampled completions under `params` (old policy or reference), no gradient."""
  return token_logprobs(
    params, step_cfg.model, batch, step_cfg.temperature or 1.0, dtype=jnp.dtype(step_cfg.compute_dtype)
  )


def make_train_step(step_cfg: StepConfig, tx: optax.GradientTransformation):
  """Returns `step(state, batch, frozen=None) -> (state, metrics)`, jitted, donating the state.

  `state['params']` are the trainable params; `frozen` the rest of the model (a LoRA run's base weights, see
  lora.split), which get no gradient and no optimizer state and are not donated."""
  temperature = step_cfg.temperature or 1.0  # greedy sampling still trains the temperature-1 policy

  def loss_fn(trainable, frozen, batch: Batch, denominator=None):
    params = lora.join(trainable, frozen)
    dtype = jnp.dtype(step_cfg.compute_dtype)
    logits, targets, unpack = completion_logits(
      params, step_cfg.model, batch, temperature=temperature, dtype=dtype, remat=step_cfg.remat
    )
    logp = unpack(grpo.token_logprobs(logits, targets))
    # the entropy is always logged; it carries a gradient only when it is part of the loss
    entropy = unpack(grpo.entropy_from_logits(logits if step_cfg.loss.entropy_coef else jax.lax.stop_gradient(logits)))
    return grpo.policy_loss(
      logp,
      batch.old_logp,
      batch.advantages,
      batch.completion_mask,
      config=step_cfg.loss,
      ref_logp=batch.ref_logp,
      sampler_logp=batch.sampler_logp,
      entropy=entropy,
      loss_denominator=denominator,
    )

  def accumulated(params, frozen, batch: Batch):
    """Sum of microbatch gradients, each normalised by the whole batch's denominator: equal to the full-batch
    gradient. Microbatch j takes groups (rows without shared prompts) j, j+k, j+2k, ... so every device's shard
    feeds every microbatch and every group stays whole."""
    k = step_cfg.microbatches
    den = grpo.aggregate_denominator(batch.completion_mask, step_cfg.loss.aggregation, step_cfg.loss.max_tokens)
    g = batch.group_size if batch.prompt_tokens.shape[0] % (batch.group_size * k) == 0 else 1

    def chunks(x):  # [R, ...] -> [k, R/k, ...]
      x = jnp.swapaxes(x.reshape(x.shape[0] // (k * g), k, g, *x.shape[1:]), 0, 1)
      return x.reshape(k, -1, *x.shape[3:])

    split = jax.tree.map(lambda x: None if x is None else chunks(x), batch.replace(group_size=g))

    def body(grads, micro):
      (_, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, micro, den)
      return jax.tree.map(jnp.add, grads, g), metrics

    grads, metrics = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), split)
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics['loss'] = metrics['loss'] * k  # each microbatch loss is a part of the total: sum, not mean
    return (metrics['loss'], metrics), grads

  def step(state, batch: Batch, frozen=None):
    if step_cfg.microbatches > 1:
      (loss, metrics), grads = accumulated(state['params'], frozen, batch)
    else:
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'], frozen, batch)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    return {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1}, metrics

  return jax.jit(step, donate_argnums=0)


def make_update(step_cfg: StepConfig, tx: optax.GradientTransformation):
  """Returns `update(state, batch, frozen, ref_params) -> (state, metrics)`: one sampled batch's whole GRPO update.

  With `num_iterations` (mu) > 1 the policy before the first update is the "old" policy of the clipped ratio, so
  its logprobs are computed once up front ([GRPO] Algorithm 1); with `ref_params` (beta > 0) so are the reference
  model's (a LoRA run's reference is its frozen base: the same weights without adapters, no second copy). Then mu
  jitted train steps run on the same batch. Metrics are those of the last step.
  """
  train_step = make_train_step(step_cfg, tx)

  def update(state, batch: Batch, frozen=None, ref_params=None):
    if step_cfg.num_iterations > 1:
      batch = batch.replace(old_logp=policy_logprobs(step_cfg, lora.join(state['params'], frozen), batch))
    if ref_params is not None:
      batch = batch.replace(ref_logp=policy_logprobs(step_cfg, ref_params, batch))
    for _ in range(step_cfg.num_iterations):
      state, metrics = train_step(state, batch, frozen)
    return state, metrics

  return update
