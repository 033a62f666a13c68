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
  # with group_size > 1, the completions of each part (pack_groups consecutive groups) packed into rows of N - 1
  # tokens (`pack_completions`): completion r's `pack_lengths` tokens from slot pack_start[r] of its part's row
  # pack_row[r]; None: one row each, from slot 0
  pack_row: jax.Array | None = None  # [R] int32
  pack_start: jax.Array | None = None  # [R] int32
  # static (they pick the program): rows come in consecutive groups of this many identical prompts (GRPO's G), each
  # group's prompt computed once in the forward passes, not G times (model.forward_grouped) ...
  group_size: int = flax.struct.field(pytree_node=False, default=1)
  # ... its completions in this many rows per part (0: group_size rows, one per completion) ...
  pack_rows: int = flax.struct.field(pytree_node=False, default=0)
  # ... where a part is this many consecutive groups whose completions may share a row (rollout.make_batch)
  pack_groups: int = flax.struct.field(pytree_node=False, default=1)


def schedule(opt_cfg, total_steps: int, updates_per_step: int = 1):
  """Learning rate of optimizer update number `count` (0-based): linear warmup that reaches the peak at GRPO step
  `warmup`, then constant or cosine decay to 10% of the peak at `total_steps`. The first update already moves
  (lr/warmup, not 0). A GRPO step is `updates_per_step` updates (num_iterations), all at its step's rate."""
  lr, warmup = float(opt_cfg.learning_rate), max(int(opt_cfg.warmup_steps), 1)
  if opt_cfg.schedule not in ('constant', 'cosine'):
    raise ValueError(f"config.optimizer.schedule: expected 'constant' or 'cosine', got {opt_cfg.schedule!r}")
  decay_steps = max(total_steps - warmup, 1)

  def fn(count):
    count = jnp.asarray(jnp.asarray(count) // updates_per_step, jnp.float32)
    ramp = jnp.minimum(1.0, (count + 1.0) / warmup)
    if opt_cfg.schedule == 'constant':
      return lr * ramp
    progress = jnp.clip((count + 1.0 - warmup) / decay_steps, 0.0, 1.0)
    return lr * ramp * (0.1 + 0.9 * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))

  return fn


def make_optimizer(opt_cfg, total_steps: int, updates_per_step: int = 1) -> optax.GradientTransformation:
  """AdamW on `schedule`, after global-norm gradient clipping."""
  return optax.chain(
    optax.clip_by_global_norm(float(opt_cfg.max_grad_norm)),
    optax.adamw(
      schedule(opt_cfg, total_steps, updates_per_step),
      b1=float(opt_cfg.b1),
      b2=float(opt_cfg.b2),
      weight_decay=float(opt_cfg.weight_decay),
      mu_dtype=opt_cfg.get('mu_dtype') or None,
    ),
  )


def _schedule_at(opt_state, count):
  """`opt_state` with its schedule's update counter at `count` (Adam's own counter, its bias correction, stays)."""
  is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
  put = lambda s: s._replace(count=jnp.asarray(count, s.count.dtype)) if is_schedule(s) else s  # noqa: E731
  return jax.tree.map(put, opt_state, is_leaf=is_schedule)


def learning_rate(opt_cfg, step: int, total_steps: int) -> float:
  """The rate used by GRPO step `step` (1-based, as logged; each of its num_iterations updates), for metrics."""
  return float(str(np.float32(schedule(opt_cfg, total_steps)(step - 1))))  # float32's shortest decimal: 1e-04


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


def pack_lengths(mask):
  """[R, N] loss mask -> [R]: the tokens of each completion that a shared-prompt batch's packed rows hold, its
  `loss_extent` but the last (the first token is predicted from the prompt, each later one from the token before
  it, and nothing from the last). Rows are N - 1 wide. numpy or jax, like `loss_extent`."""
  return (loss_extent(mask) - 1).clip(min=0)


def pack_completions(lengths: np.ndarray, group: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Host side: the completions of each run of `group` consecutive ones (`lengths` [R] tokens each,
  `pack_lengths`: a GRPO group, or a part of several groups) packed into rows of `width` tokens, first fit in
  decreasing length. Returns (pack_row [R], pack_start [R], rows: the most any run needs).

  Rows of the completion width keep attention as cheap as one row per completion, while the MLPs and the
  [rows, width, vocabulary] logits stop computing on padding: completions averaging half the longest fill about
  half the rows."""
  lengths = np.asarray(lengths, np.int64)
  row, start, rows = np.zeros(lengths.size, np.int32), np.zeros(lengths.size, np.int32), 1
  for first in range(0, lengths.size, group):
    filled: list[int] = []
    for i in first + np.argsort(-lengths[first : first + group], kind='stable'):
      c = next((c for c, used in enumerate(filled) if used + lengths[i] <= width), len(filled))
      if c == len(filled):
        filled.append(0)
      row[i], start[i], filled[c] = c, filled[c], filled[c] + lengths[i]
    rows = max(rows, len(filled))
  return row, start, rows


def _packing(batch: Batch):
  """A shared-prompt batch's packed completion rows [Q*C, W], W = N - 1, C rows for each of its Q parts of
  `pack_groups` groups: (tokens, segments, offsets, owners) for model.forward_grouped (segments: the completion
  within its part, -1 on padding; owners: the prompt within its part), the tokens each position predicts (0 where
  none), and `unpack`, which takes per-token values of the first tokens ([B, G], or [B, 1] for all of a group) and
  of the rows to the batch's [R, N] (0 on the tokens `loss_extent` leaves out)."""
  (r, n), g = batch.completion_tokens.shape, batch.group_size
  m = g * batch.pack_groups  # completions per part
  q, c, w = r // m, batch.pack_rows or m, n - 1
  row = jnp.tile(jnp.arange(m), q) if batch.pack_row is None else batch.pack_row
  start = jnp.zeros(r, jnp.int32) if batch.pack_start is None else batch.pack_start
  extent = loss_extent(batch.completion_mask)
  valid = jnp.arange(w) < pack_lengths(batch.completion_mask)[:, None]
  slot = (row * w + start)[:, None] + jnp.arange(w)  # [R, W]: where each completion token sits in its part's rows
  to = jnp.where(valid, slot, c * w).reshape(q, m * w)  # c * w: nowhere (dropped)

  def place(values, fill):  # [R, W] values per completion token -> [Q*C, W] at their slots, `fill` elsewhere
    values = jnp.broadcast_to(values, (r, w)).reshape(q, m * w)
    rows = jax.vmap(lambda at, v: jnp.full(c * w, fill, v.dtype).at[at].set(v, mode='drop'))(to, values)
    return rows.reshape(q * c, w)

  segments = place((jnp.arange(r) % m)[:, None], -1)
  offsets, real = place(jnp.arange(w)[None], 0), segments >= 0
  source = (jnp.maximum(segments, 0) * n + offsets).reshape(q, c * w)
  take = lambda k: jnp.take_along_axis(batch.completion_tokens.reshape(q, m * n), source + k, axis=1)  # noqa: E731
  tokens, targets = (jnp.where(real, take(k).reshape(q * c, w), 0) for k in (0, 1))  # a token, the one it predicts
  index = jnp.minimum(slot, max(c * w - 1, 0)).reshape(q, m * w)

  def unpack(first, rest):
    first = jnp.where(extent > 0, jnp.broadcast_to(first, (r // g, g)).reshape(r), 0)
    rest = jnp.take_along_axis(rest.reshape(q, c * w), index, axis=1).reshape(r, w) if w else rest.reshape(r, 0)
    return jnp.concatenate([first[:, None], jnp.where(valid, rest, 0)], axis=1)

  return (tokens, segments, offsets, jnp.maximum(segments, 0) // g), targets, unpack


# [rows, positions, vocabulary] float32 logits built at once over the whole batch (1 GiB): past it the train step and
# the logprob passes compute a part's logits a chunk of positions at a time (`completion_stats`)
LOGIT_CHUNK_ELEMENTS = 2**28


def logit_chunk(rows: int, width: int, vocab: int) -> int:
  """Positions per chunk of a [rows, width, vocab] part's logits: all of them within LOGIT_CHUNK_ELEMENTS, else as
  many as fit (at least one). rftjax.plan counts the same chunk."""
  return max(1, min(width, LOGIT_CHUNK_ELEMENTS // max(rows * vocab, 1)))


def completion_hidden(params, cfg: model_lib.TransformerConfig, batch: Batch, *, dtype=jnp.float32, remat=False):
  """The final hidden states [..., T, D] whose logits predict the completion tokens, from one forward over prompt
  + completion, as a list of (hidden, the tokens they predict [..., T]) and `unpack`, which takes one per-token
  array per part to the batch's [R, N]. Rows: one part, [R, N]. A shared-prompt batch: each group's last prompt
  position [B, 1] (one prediction for G targets [B, G]) and its packed rows [Q*C, N - 1]."""
  if batch.group_size > 1:
    g = batch.group_size
    first = lambda x: x.reshape(-1, g, *x.shape[1:])[:, 0]  # noqa: E731  (a reshape: no gather across shards)
    inputs, targets, unpack = _packing(batch)
    prompts, rest = model_lib.forward_grouped(
      params, cfg, first(batch.prompt_tokens), first(batch.prompt_mask), *inputs,
      part=batch.pack_groups, dtype=dtype, remat=remat,
    )  # fmt: skip
    firsts = batch.completion_tokens[:, 0].reshape(-1, g)
    return [(prompts[:, -1:], firsts), (rest, targets)], lambda values: unpack(*values)
  p = batch.prompt_tokens.shape[1]
  tokens = jnp.concatenate([batch.prompt_tokens, batch.completion_tokens], axis=1)[:, :-1]
  key_mask = jnp.concatenate([batch.prompt_mask, batch.completion_mask > 0], axis=1)[:, :-1]
  # completion tokens after a stop are padding; keep them visible to nothing but give them sane positions
  key_mask = key_mask | (jnp.arange(tokens.shape[1]) >= p)[None] & batch.prompt_mask[:, -1:]
  positions = jnp.maximum(jnp.cumsum(key_mask, axis=1) - 1, 0).astype(jnp.int32)
  hidden, _ = model_lib.forward(params, cfg, tokens, positions, key_mask, dtype=dtype, remat=remat, return_hidden=True)
  return [(hidden[:, p - 1 :], batch.completion_tokens)], lambda values: values[0]


def completion_stats(params, cfg, batch: Batch, *, temperature=1.0, entropy: bool = True, entropy_grad=True, **kw):
  """(log pi(completion token), entropy of its distribution) [R, N] float32 at `temperature` (entropy None when not
  asked for; without entropy_grad it carries no gradient). A part whose logits exceed LOGIT_CHUNK_ELEMENTS has them
  computed `logit_chunk` positions at a time, each chunk's again in the backward pass, so that its [rows, T, V]
  logits, their softmax and their gradient never exist whole: on Gemma 3's 262k vocabulary they are most of the
  train step's memory (docs/scaling.md)."""
  parts, unpack = completion_hidden(params, cfg, batch, **kw)

  def stats(h, t):
    logits = model_lib.unembed(params, cfg, h, temperature)
    if not entropy:
      return grpo.token_logprobs(logits, t), None
    return grpo.token_logprobs(logits, t), grpo.entropy_from_logits(
      logits if entropy_grad else jax.lax.stop_gradient(logits)
    )

  def chunked(h, t):
    rows, width = h.shape[:2]
    chunk = logit_chunk(rows, width, cfg.vocab_size)
    if chunk >= width:
      return stats(h, t)
    k = -(-width // chunk)

    def split(x):  # [rows, width, ...] -> [k, rows, chunk, ...], the last chunk padded
      x = jnp.pad(x, [(0, 0), (0, k * chunk - width)] + [(0, 0)] * (x.ndim - 2))
      return jnp.moveaxis(x.reshape(rows, k, chunk, *x.shape[2:]), 1, 0)

    out = jax.lax.map(jax.checkpoint(lambda ht: stats(*ht), prevent_cse=False), (split(h), split(t)))
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(rows, k * chunk)[:, :width], out)

  logp, ent = zip(*(chunked(h, t) for h, t in parts))
  return unpack(list(logp)), (unpack(list(ent)) if entropy else None)


def token_logprobs(params, cfg, batch: Batch, temperature: float, **kw):
  """log pi(completion token) [R, N] at the sampling temperature."""
  return completion_stats(params, cfg, batch, temperature=temperature, entropy=False, **kw)[0]


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
  """Returns `step(state, batch, frozen=None, iteration=None) -> (state, metrics)`, jitted (one program per placement
  of the state, whose outputs keep its shardings), donating the state; `step.lower(...)` as a jitted function's.

  `state['params']` are the trainable params; `frozen` the rest of the model (a LoRA run's base weights, see
  lora.split), which get no gradient and no optimizer state and are not donated. `state['step']` counts GRPO steps
  (a resume starts there): it moves after the last (`iteration` num_iterations - 1, the default) of a batch's
  updates (a traced int: one program for all). The learning rate is the schedule's at `state['step']`, whatever
  updates ran before (a resume with another num_iterations, skipped updates). A batch with no completion token to
  train on (dynamic sampling found no group with signal, every row masked) leaves params and optimizer state as they
  were: AdamW would still move them by its momentum and weight decay. So does an update with a NaN or inf in it
  (metric `nonfinite_update` 1; the trainer then stops the run)."""
  temperature = step_cfg.temperature or 1.0  # greedy sampling still trains the temperature-1 policy

  def loss_fn(trainable, frozen, batch: Batch, denominator=None):
    params = lora.join(trainable, frozen)
    dtype = jnp.dtype(step_cfg.compute_dtype)
    # the entropy is always logged; it carries a gradient only when it is part of the loss
    logp, entropy = completion_stats(
      params,
      step_cfg.model,
      batch,
      temperature=temperature,
      entropy_grad=bool(step_cfg.loss.entropy_coef),
      dtype=dtype,
      remat=step_cfg.remat,
    )
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
    gradient. Microbatch j takes parts of packed groups (rows without shared prompts) j, j+k, j+2k, ... so every
    device's shard feeds every microbatch and every part stays whole."""
    k = step_cfg.microbatches
    den = grpo.aggregate_denominator(batch.completion_mask, step_cfg.loss.aggregation, step_cfg.loss.max_tokens)
    u = batch.group_size * batch.pack_groups  # rows per part
    g = batch.group_size if batch.prompt_tokens.shape[0] % (u * k) == 0 else 1
    u = u if g > 1 else 1

    def chunks(x):  # [R, ...] -> [k, R/k, ...]
      x = jnp.swapaxes(x.reshape(x.shape[0] // (k * u), k, u, *x.shape[1:]), 0, 1)
      return x.reshape(k, -1, *x.shape[3:])

    split = jax.tree.map(lambda x: None if x is None else chunks(x), batch.replace(group_size=g))

    def body(grads, micro):
      (_, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, micro, den)
      tokens = jnp.sum(micro.completion_mask > 0).astype(jnp.float32)
      return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g), (metrics, tokens)

    # summed in float32 whatever the params' dtype (a bfloat16 sum rounds each microbatch's share away)
    zeros = jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)
    grads, (metrics, tokens) = jax.lax.scan(body, zeros, split)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    for key, values in metrics.items():
      if key in ('loss', 'pg_loss'):  # each microbatch's is a part of the total (the whole batch's denominator)
        metrics[key] = values.sum()
      else:  # token means: weighted by each microbatch's tokens (one of masked rows only has NaN)
        counted = jnp.where(jnp.isnan(values), 0.0, tokens)
        metrics[key] = jnp.sum(jnp.where(counted > 0, values, 0.0) * counted) / jnp.sum(counted)
    return (metrics['loss'], metrics), grads

  def step(state, batch: Batch, frozen=None, iteration=None):
    mu = step_cfg.num_iterations
    iteration = mu - 1 if iteration is None else iteration
    if step_cfg.microbatches > 1:
      (loss, metrics), grads = accumulated(state['params'], frozen, batch)
    else:
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'], frozen, batch)
    opt_state = _schedule_at(state['opt_state'], state['step'] * mu + iteration)
    updates, new_opt_state = tx.update(grads, opt_state, state['params'])
    # a NaN or inf anywhere in the update (a diverged loss, optimizer.b1 = 1) is not applied: saved weights stay finite
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates)]))
    trains = jnp.any(batch.completion_mask > 0) & finite
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(trains, n, o), new, old)  # noqa: E731
    params = keep(optax.apply_updates(state['params'], updates), state['params'])
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), nonfinite_update=(~finite).astype(jnp.float32))
    advance = jnp.asarray(iteration == mu - 1, state['step'].dtype)
    return {'params': params, 'opt_state': keep(new_opt_state, opt_state), 'step': state['step'] + advance}, metrics

  # The new state keeps the old one's shardings: left to XLA, full fine-tuning on an fsdp mesh got its norm scales
  # (and their Adam moments) back sharded over fsdp, and the second call compiled the step a second time.
  programs = {}

  def jitted(state):
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state)):  # inside a trace: no placement to keep
      return programs.setdefault(None, jax.jit(step, donate_argnums=0))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    key = (jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings)))
    if key not in programs:
      programs[key] = jax.jit(step, donate_argnums=0, out_shardings=(shardings, None))
    return programs[key]

  def call(state, batch: Batch, frozen=None, iteration=None):
    return jitted(state)(state, batch, frozen, iteration)

  call.lower = lambda state, *args: jitted(state).lower(state, *args)  # state: arrays or ShapeDtypeStructs
  return call


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
    for i in range(step_cfg.num_iterations):
      state, metrics = train_step(state, batch, frozen, i)
    return state, metrics

  return update
