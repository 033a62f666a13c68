"""One step's experience on the host: sample G completions per prompt, decode, grade, shape into a device batch.

  rollouts = rollout.Rollouts(cfg, sampler, prompts, items, tok, grader, pool, data_iter, mesh, rng)
  batch, stats, timings = rollouts(params, step)

Everything here is this process's rows only: on a pod slice each host samples, decodes and grades its own slice of
the global batch (multihost.py assembles the device batch and reduces the metrics).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rftjax import episodes as episodes_lib
from rftjax import graders
from rftjax import grpo
from rftjax import multihost
from rftjax import response_format
from rftjax import sampler as sampler_lib
from rftjax import tools as tools_lib
from rftjax import train_step as step_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Rollout:
  """Host-local rows, G consecutive rows per prompt."""

  prompt_tokens: np.ndarray  # [R, P]
  prompt_mask: np.ndarray  # [R, P]
  tokens: np.ndarray  # [R, N]
  mask: np.ndarray  # [R, N] float32
  logprobs: np.ndarray  # [R, N]
  lengths: np.ndarray  # [R]
  truncated: np.ndarray  # [R]
  rewards: np.ndarray  # [R] float32
  results: list  # [R] GradeResult
  texts: list  # [R] str: the completion (an episode's final turn), what graders grade
  discard: np.ndarray  # [R] bool: no loss on this row (a tool or an endpoint grader failed for good)
  episodes: list  # [R] episode transcript dicts (episodes.py), or None per row without tools

  def take(self, rows) -> Rollout:
    pick = lambda x: [x[i] for i in rows] if isinstance(x, list) else x[np.asarray(rows, int)]
    return Rollout(**{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)})

  def take_groups(self, groups: np.ndarray, g: int) -> Rollout:
    return self.take((np.asarray(groups, int)[:, None] * g + np.arange(g)[None]).reshape(-1))

  @staticmethod
  def concat(parts: list[Rollout]) -> Rollout:
    def join(name):
      values = [getattr(p, name) for p in parts]
      return sum(values, []) if isinstance(values[0], list) else np.concatenate(values)

    return Rollout(**{f.name: join(f.name) for f in dataclasses.fields(Rollout)})

  def graded(self, results: list) -> Rollout:
    """With `results` (a GradeResult per row). A row whose tool failed for good is marked metadata["discard"] as a
    judge's outage is: a reward earned against a broken tool stays out of the reward means, as out of the loss."""
    mark = lambda r: dataclasses.replace(r, metadata={**(r.metadata or {}), 'discard': True})
    results = [mark(r) if gone and not r.metadata.get('discard') else r for r, gone in zip(results, self.discard)]
    failed = np.asarray([bool(r.metadata.get('discard')) for r in results], bool)
    rewards = np.asarray([r.reward for r in results], np.float32)
    return dataclasses.replace(self, results=results, rewards=rewards, discard=self.discard | failed)

  @property
  def traces(self) -> list[str] | None:
    """Each row's episode trace id (what tools and endpoint graders saw), or None without episodes."""
    return None if self.episodes[0] is None else [e['trace_id'] for e in self.episodes]


_WIDTHS: dict = {}  # Sampler at full width -> the prompt widths its program was compiled at in this process


def _prompt_width(s, longest: int) -> int:
  """The prompt width `s` samples `longest`-token prompts at: a width compiled before when it pads them at most
  2x (a sampler compile is seconds to minutes: 30 s for SmolLM2 on CPU, so batches whose longest prompt moves
  between buckets would compile each), else `bucket(longest)`. Every host decides alike (longest is every host's)."""
  seen = _WIDTHS.setdefault(s, set())
  width = min((w for w in seen if longest <= w <= 2 * longest), default=bucket(longest, s.max_prompt_len))
  seen.add(width)
  return width


def sample(sampler, params, prompts: list[list[int]], tok, rng, mesh, items=None) -> Rollout:
  """Samples and decodes this host's rows; rewards and results are not filled yet. `sampler`: a
  sampler_lib.Sampler (one completion per row) or an episodes.Agent (multi-turn episodes with tools; `items`, the
  rows' data, say which tools each row may call: without, every configured one). A sampler
  with group_size > 1 prefills each group once when every host's rows come in such groups, and every row on its
  own otherwise."""
  agent = sampler if isinstance(sampler, episodes_lib.Agent) else None
  s = agent.sampler if agent else sampler
  if s.group_size > 1 and multihost.any_host(not sampler_lib.grouped(prompts, s.group_size)):
    s = dataclasses.replace(s, group_size=1)
  p_tokens, p_mask = sampler_lib.pad_prompts(prompts, s.max_prompt_len, s.pad_id)
  # the sampler gets the prompts cut to a bucket of the longest one on any host (as few shapes as make_batch's):
  # padding is masked, so the completions are the same, but short prompts no longer pay for a prefill and a cache
  # as wide as data.max_prompt_len (17x the time of a validation pass of ~9-token prompts at 256). An episode's
  # cache keeps its room for the turns after the prompt.
  (longest,) = multihost.max_over_hosts(max((len(q) for q in prompts), default=1))
  width = _prompt_width(s, longest)
  cut = dict(max_prompt_len=width, context_len=s.context_len and s.context_len - (s.max_prompt_len - width))
  s = dataclasses.replace(s, **cut)
  c_tokens, c_mask = p_tokens[:, p_tokens.shape[1] - width :], p_mask[:, p_mask.shape[1] - width :]
  n = len(prompts)
  if agent:
    offered = None if items is None else [tools_lib.offered(item) for item in items]
    e = dataclasses.replace(agent, sampler=s).run(params, c_tokens, c_mask, rng, mesh, offered)
    fields = (e.tokens, e.mask, e.logprobs, e.lengths, e.truncated)
    return Rollout(p_tokens, p_mask, *fields, np.zeros(n, np.float32), [None] * n, e.texts, e.discard, e.transcripts)
  out = s(params, multihost.to_global(mesh, c_tokens), multihost.to_global(mesh, c_mask), rng)
  tokens, mask, logprobs, lengths, truncated = (
    multihost.local_rows(a) for a in (out.tokens, out.mask, out.logprobs, out.lengths, out.truncated)
  )
  texts = [tok.decode_completion(row[:k], cut) for row, k, cut in zip(tokens, lengths, truncated)]
  rewards, results = np.zeros(n, np.float32), [None] * n
  return Rollout(p_tokens, p_mask, tokens, mask.astype(np.float32), logprobs, lengths, truncated, rewards, results,
                 texts, np.zeros(n, bool), [None] * n)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """What a step's experience looks like (from config; runspec.build fills it)."""

  num_generations: int  # G
  prompts: int  # prompts per step on this host (config.batch_size / processes)
  max_new_tokens: int
  advantage: str = 'grpo'  # grpo.ADVANTAGE_METHODS
  scale_rewards: str | None = 'group'  # None: the advantage method's own default
  overlong_buffer: int = 0  # DAPO soft overlong penalty over the last this-many tokens; 0 = off
  overlong_penalty: float = 1.0
  mask_truncated: bool = False  # DAPO overlong filtering
  dynamic_sampling: bool = False  # DAPO: resample until every group has reward variance
  max_resample_rounds: int = 3
  max_error_share: float = 0.5  # more failed gradings than this in one draw stop the run
  gdpo_weights: tuple[tuple[str, float], ...] = ()  # advantage 'gdpo': (sub-grader, weight) of the multi grader
  microbatches: int = 1  # the train step's (config.train_microbatches): each takes whole parts of packed groups
  key_costs: tuple[float, float] = (0.0, 0.0)  # a key's train-step time and memory against a token's (`key_costs`)


def bucket_sizes(limit: int, parts: int = 4) -> list[int]:
  """`parts` lengths spread evenly up to `limit`, each a multiple of 8 (or `limit`)."""
  ceil = lambda a, b: -(-a // b)
  return sorted({min(limit, ceil(ceil(limit * k, parts), 8) * 8) for k in range(1, parts + 1)})


def bucket(n: int, limit: int, parts: int = 4) -> int:
  """The smallest of `bucket_sizes(limit, parts)` that holds n."""
  return next((s for s in bucket_sizes(limit, parts) if s >= n), limit)


def packed_rows(rows: int, g: int) -> int:
  """A packing's rows per group, or per part of groups (train_step.pack_completions: `g` completions), rounded up
  to a multiple of g/4, so that at most 4 row counts compile."""
  step = -(-g // 4)
  return min(g, -(-rows // step) * step)


def key_costs(cfg) -> tuple[float, float]:
  """A key's cost in the train step against a token's, (time, memory), for `make_batch`'s choice of parts. Time:
  each query head reads a key in two products (4 x H FLOPs a layer), counted twice for the masked softmax's
  elementwise work around them, against about 2 FLOPs per weight for a token's products (layers and
  unembedding). Memory: a layer keeps one attention probability per key and query head, against what it keeps
  per token (as rftjax.plan counts it: 4 x D, the queries', keys' and values' forms, 3 x F)."""
  d, f, n, k, h, _, layers = cfg.dims()
  forms = 4 + (1 if cfg.qk_norm else 0)
  return 8 * n * h * layers / (2 * cfg.num_params()), n / (4 * d + forms * (n + k) * h + 3 * f)


def part_sizes(cfg: RolloutConfig, mesh, prompt_len: int) -> list[int]:
  """Groups per part that `make_batch` may pack together: 1, and the largest power of two that divides this host's
  groups, leaves every data shard of every microbatch whole parts (groups split across shards stay apart) and,
  at full prompt and completion width, adds at most a quarter to a token's estimated cost (`key_costs`). Only the
  two, so that a run compiles at most twice the train step shapes it would with each group apart: measured on
  CPU, each new shape cost more compile time than the sizes in between saved (docs/benchmarks.md)."""
  shards = 1 if mesh is None else mesh.shape.get('data', 1) * mesh.shape.get('fsdp', 1)
  per_shard, rest = divmod(cfg.prompts * jax.process_count(), shards * cfg.microbatches)
  cost = lambda a: 1 + cfg.key_costs[0] * (a * prompt_len + cfg.max_new_tokens)  # noqa: E731
  size = 1
  while not rest and per_shard % (2 * size) == 0 and cfg.prompts % (2 * size) == 0 and cost(2 * size) <= 1.25 * cost(1):
    size *= 2
  return sorted({1, size})


class Shape(NamedTuple):
  """A train-step batch shape (what compiles): prompt and completion widths, groups per part and packed rows per
  part (0: one row per completion, groups not packed)."""

  prompt: int
  width: int
  part: int
  rows: int


class ShapePicker:
  """Which shape each step's batch takes (`make_batch`): the cheapest for it, unless a shape this run has compiled
  already holds it (wider, more rows) for less extra training time than a compile costs.

  Each new train-step shape compiles the update and the reference pass (6-9 s for SmolLM2 on a 2-core CPU, about a
  step's training; minutes for large models on TPUs), while a batch in a compiled wider shape only computes on more
  padding. The rule is the ski rental's: the padding a step pays by reusing a shape (its extra cost, in seconds at
  the last step's measured rate) adds up until it reaches what the last new shape took to compile; then the
  cheapest shape is compiled and the sum starts again. So a run never pays more than twice what the best of
  compiling at once or always reusing would have cost, and a shape a run keeps needing gets compiled. Every host
  holds the same history and measurements (`observe` takes them averaged over hosts), so all pick the same shape.
  """

  def __init__(self):
    self.seen: dict[Shape, None] = {}
    self.padding_s = 0.0  # extra training seconds reusing shapes cost since the last compile
    self.compile_s: float | None = None  # what the last new shape took to compile
    self.unit_s: float | None = None  # training seconds per unit of make_batch's cost, at the last step
    self._last: tuple[Shape, float, bool] | None = None

  def pick(self, best: Shape, holds, cost) -> Shape:
    """`best` (the batch's cheapest shape) or a compiled one that `holds` it; cost: a shape's training cost."""
    choice = best
    reusable = [s for s in self.seen if holds(s)]
    if best not in self.seen and reusable and self.compile_s is not None and self.unit_s is not None:
      reuse = min(reusable, key=cost)
      extra_s = (cost(reuse) - cost(best)) * self.unit_s
      if self.padding_s + extra_s < self.compile_s:
        choice, self.padding_s = reuse, self.padding_s + extra_s
    new = choice not in self.seen
    if new:
      self.seen[choice], self.padding_s = None, 0.0
    self._last = (choice, cost(choice), new)
    return choice

  def state(self) -> dict:
    """What a checkpoint keeps (`restore`): a resumed run picks as the run would have gone on picking. Without it
    the history started empty, and a shape loaded from the compilation cache (~1 s) set the price of a compile, so
    the next new shape compiled for real (23 s on the tiny model) where the run had reused one."""
    return {'seen': [list(s) for s in self.seen], 'padding_s': self.padding_s, 'compile_s': self.compile_s,
            'unit_s': self.unit_s}  # fmt: skip

  def restore(self, state: dict | None) -> None:
    """Back to `state()`; None (a checkpoint from before it was kept): as new."""
    if state is not None:
      self.seen = {Shape(*map(int, s)): None for s in state['seen']}
      self.padding_s, self.compile_s, self.unit_s = state['padding_s'], state['compile_s'], state['unit_s']
      self._last = None

  def observe(self, training_s: float, compile_s: float) -> None:
    """The step's update after `pick`: its seconds without compiling, and the seconds it spent compiling."""
    if self._last is None:
      return
    _, units, new = self._last
    if new:
      self.compile_s = compile_s
    self.unit_s = max(training_s, 0.0) / units


def make_batch(r: Rollout, cfg: RolloutConfig, mesh, shapes: ShapePicker | None = None) -> step_lib.Batch:
  """The global device batch: advantages from the (overlong-shaped) rewards, the loss mask (truncations masked
  out when configured).

  Columns that are padding in every row of the global batch are cut: completions to the longest completion and
  prompts (left-padded) to the longest prompt, each rounded up to a `bucket` so that only a few shapes compile
  (at most 4 completion x 2 prompt lengths, x 4 row counts per part size with shared prompts). When each group
  shares one prompt, its completions are packed into as few rows of that width as hold them
  (`train_step.pack_completions`), with other groups' when that costs less: a part of A groups shares its rows,
  and each row reads the A prompts' keys (a token attends to its own prompt's). A is picked where rows x (1 + key
  time x keys) is least, among the `part_sizes` whose rows x (1 + key memory x keys) is no more than one row per
  completion's (what rftjax.plan counts; `key_costs`). Padding is masked, so the loss is the same; the train
  step and the old/reference logprob passes just stop computing on it. With `shapes`, a batch may take a wider
  shape that this run has compiled already instead of compiling its own (`ShapePicker`)."""
  rewards = r.rewards.astype(np.float32)
  # a discarded row, or a group dynamic sampling kept only to fill the batch (keep_signal: no token in the loss),
  # takes no part in its group's (or the batch's) mean and std: it moves no advantage
  counted = ~r.discard & r.mask.any(axis=1)
  keep = None if counted.all() else counted
  # this host holds its own rows: batch-wide moments pool every host's (one host: the array's own, as computed)
  moments = multihost.pooled_moments if jax.process_count() > 1 else None
  if cfg.overlong_buffer > 0:
    rewards = rewards + grpo.overlong_penalty(r.lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)
  if cfg.advantage == 'gdpo':  # each sub-grader normalised in its group on its own (a missing one counts 0)
    names, weights = zip(*cfg.gdpo_weights)
    advantages = grpo.gdpo_advantages(
      jnp.asarray(_sub_rewards(r, names)), jnp.asarray(weights), cfg.num_generations, keep=keep, batch_moments=moments
    )
  else:
    advantages = grpo.compute_advantages(
      jnp.asarray(rewards), cfg.num_generations, method=cfg.advantage, scale=cfg.scale_rewards, keep=keep,
      batch_moments=moments,
    )  # fmt: skip
  mask = grpo.truncation_mask(r.mask, r.truncated) if cfg.mask_truncated else r.mask
  mask = np.where(r.discard[:, None], 0.0, mask).astype(np.float32)
  n, p, g = r.tokens.shape[1], r.prompt_tokens.shape[1], cfg.num_generations
  # groups share one prompt when tokens and padding agree; one host whose groups do not makes it a per-row batch
  apart = g > 1 and not sampler_lib.grouped(np.concatenate([r.prompt_tokens, r.prompt_mask], axis=1).tolist(), g)
  # this host's packing at each completion width the batch may be cut to (rows one token narrower); the rows each
  # needs ride in the same collective as the maxima that pick the width (a width shorter than a completion here
  # is never picked)
  keys = [(w, a) for w in bucket_sizes(n) for a in part_sizes(cfg, mesh, p)]
  packings = [step_lib.pack_completions(step_lib.pack_lengths(mask), a * g, w - 1) for w, a in keys]
  longest, longest_prompt, any_apart, *rows = multihost.max_over_hosts(
    r.lengths.max(initial=1), r.prompt_mask.sum(axis=1).max(initial=1), apart,
    *(packed_rows(packing[2], a * g) for packing, (_, a) in zip(packings, keys)),
  )  # fmt: skip
  need_n, need_p = bucket(longest, n), bucket(longest_prompt, p, parts=2)
  put = lambda x: multihost.to_global(mesh, np.ascontiguousarray(x))
  shared = not any_apart and g > 1
  needed = dict(zip(keys, rows))  # (width, part size) -> packed rows per part
  key_time, key_memory = cfg.key_costs

  def cost(s: Shape) -> float:
    """A step's train-step work in tokens, each weighted by 1 + key time x the keys it reads (one scale for
    shared and per-row batches: `ShapePicker` measures its seconds per unit on either)."""
    if not shared:
      return cfg.prompts * g * (s.prompt + s.width) * (1 + key_time * (s.prompt + s.width))
    completions = s.rows / s.part * (s.width - 1) * (1 + key_time * (s.part * s.prompt + s.width - 1))
    return cfg.prompts * (s.prompt * (1 + key_time * s.prompt) + completions)

  # each part size's rows per part at the needed widths; of those that fit the memory counted, the cheapest
  fits = [
    Shape(need_p, need_n, a, c if shared else 0)
    for (w, a), c in needed.items()
    if w == need_n and (a == 1 or shared)
    and c * (1 + key_memory * (a * need_p + w - 1)) <= a * g * (1 + key_memory * (need_p + w - 1))
  ]  # fmt: skip
  best = min(fits, key=lambda s: (cost(s), s.part))

  def holds(s: Shape) -> bool:  # a shape compiled before, wide enough for this batch
    rows_needed = needed.get((s.width, s.part), s.rows + 1) if shared else 0
    return s.prompt >= need_p and s.width >= need_n and (s.rows > 0) == shared and s.rows >= rows_needed

  shape = best if shapes is None else shapes.pick(best, holds, cost)
  p, n = shape.prompt, shape.width
  pack_row, pack_start, _ = packings[keys.index((n, shape.part))]
  return step_lib.Batch(
    prompt_tokens=put(r.prompt_tokens[:, -p:]),
    prompt_mask=put(r.prompt_mask[:, -p:]),
    completion_tokens=put(r.tokens[:, :n]),
    completion_mask=put(mask[:, :n]),
    advantages=put(np.asarray(advantages, np.float32)),
    sampler_logp=put(r.logprobs[:, :n]),
    pack_row=put(pack_row) if shared else None,
    pack_start=put(pack_start) if shared else None,
    group_size=g if shared else 1,
    pack_rows=shape.rows,
    pack_groups=shape.part,
  )


def _sub_rewards(r: Rollout, names) -> np.ndarray:
  """[B, K] float32: each row's reward from the multi grader's sub-graders `names` (a missing one counts 0)."""
  return np.asarray([[res.sub_rewards.get(n, 0.0) for n in names] for res in r.results], np.float32).reshape(
    -1, len(names)
  )


def signal_rewards(r: Rollout, gdpo_weights=()) -> np.ndarray:
  """What a group's signal (dynamic sampling, zero_std_group_frac) is read from: the rewards [B], or under GDPO
  the weighted sub-graders' [B, K]: GDPO normalises each alone, so a group whose totals tie may still train."""
  names = [n for n, w in gdpo_weights if w]
  return _sub_rewards(r, names) if names else r.rewards


def rollout_metrics(r: Rollout, g: int, prefix: str = 'train', tools: tuple = (), gdpo_weights=()) -> dict[str, float]:
  m = graders.summarize(r.results, prefix=prefix)
  keep = grpo.dynamic_sampling_keep(signal_rewards(r, gdpo_weights), g)
  verdict = np.asarray([not res.metadata.get('discard') for res in r.results], bool)  # the mean's rows (summarize)
  m.update(episodes_lib.metrics([episodes_lib.record(e) for e in r.episodes], tools=tools))
  m.update(
    {
      'discarded_frac': float(r.discard.mean()),
      f'{prefix}_reward_std': float(r.rewards[verdict].std()) if verdict.any() else 0.0,
      'zero_std_group_frac': float(1.0 - keep.mean()),
      'completion_len_mean': float(r.lengths.mean()),
      'completion_len_max': float(r.lengths.max()),
      'truncated_frac': float(r.truncated.mean()),
    }
  )
  return m


def keep_signal(parts: list[Rollout], prompts: int, g: int, gdpo_weights=()) -> tuple[Rollout, int]:
  """DAPO dynamic sampling: from the rounds drawn so far, the groups whose rewards differ (in draw order; under
  GDPO, whose sub-rewards do: `signal_rewards`), then as many zero-variance groups as it takes to fill `prompts`
  groups, with their loss mask zeroed so shapes stay fixed and nothing without signal is trained on. Returns
  (rollout, rows with signal)."""
  keeps = [grpo.dynamic_sampling_keep(signal_rewards(p, gdpo_weights), g) for p in parts]
  kept = [p.take_groups(np.flatnonzero(k), g) for p, k in zip(parts, keeps)]
  dropped = [p.take_groups(np.flatnonzero(~k), g) for p, k in zip(parts, keeps)]
  out = Rollout.concat(kept + dropped).take_groups(np.arange(prompts), g)
  n_signal = min(sum(len(k.rewards) for k in kept), prompts * g)
  out.mask = out.mask.copy()
  out.mask[n_signal:] = 0.0
  return out, n_signal


class RolloutStopped(Exception):
  """A step's dynamic sampling ended early because its `stop()` said so (the trainer's SIGTERM or Ctrl-C)."""


class Rollouts:
  """Draws one step's experience: `prompts` fresh prompts x G completions per draw, this host's rows.

  Without dynamic sampling a step is one draw. With it, draws continue (up to `max_resample_rounds` extra, every
  host taking the same number) until enough groups have reward variance (`keep_signal`). A draw whose gradings
  fail more often than `max_error_share` stops the run (graders.GradingFailed).
  """

  def __init__(
    self,
    cfg: RolloutConfig,
    sampler: sampler_lib.Sampler,
    prompts: list[list[int]],
    items: list[dict],
    tok,
    grader,
    pool,
    data_iter,
    mesh,
    rng,
  ):
    self.cfg, self.sampler, self.prompts, self.items = cfg, sampler, prompts, items
    self.tok, self.grader, self.pool, self.data_iter, self.mesh, self.rng = tok, grader, pool, data_iter, mesh, rng
    self.shapes = ShapePicker()  # the trainer reports each update to it (`ShapePicker.observe`)
    self.failures_said = False  # gradings that failed under max_error_share: said once, then in the metrics
    self.truncation_said = False  # grpo.mask_truncated masked a whole step: said once, then truncated_frac says it
    self.format_said = False  # no completion of a step matched the response format: said once, then the metrics

  def draw(self, params, rng) -> tuple[Rollout, float, float]:
    """The next `prompts` prompts x G: (graded rollout, sampling seconds, grading seconds)."""
    g = self.cfg.num_generations
    idx = self.data_iter.next()
    t0 = time.perf_counter()
    items = [self.items[i] for i in idx for _ in range(g)]
    r = sample(self.sampler, params, [self.prompts[i] for i in idx for _ in range(g)], self.tok, rng, self.mesh, items)
    t1 = time.perf_counter()
    r = r.graded(self.pool.grade(self.grader, r.texts, items, traces=r.traces))
    bad = sum(1 for x in r.results if x.errors) > self.cfg.max_error_share * len(r.results)
    if multihost.any_host(bad):  # every host stops together, so none waits for the others in a collective
      line = (
        graders.failure_line(r.results, self.cfg.max_error_share, self.grader)
        if bad
        else 'gradings failed on another host (its log has the details)'
      )
      raise graders.GradingFailed(line, [(i, e) for i, x in enumerate(r.results) for e in x.errors])
    return r, t1 - t0, time.perf_counter() - t1

  def __call__(self, params, step: int, stop=None) -> tuple[step_lib.Batch, dict[str, float], dict[str, float]]:
    """(device batch, this host's rollout metrics, {'sampling_s', 'grading_s'}) for training step `step`. `stop()`,
    asked before each extra dynamic-sampling draw (on every host alike: it may be a collective), ends the step with
    RolloutStopped instead: a preemption's notice may be shorter than the draws left."""
    cfg, g = self.cfg, self.cfg.num_generations
    rng = jax.random.fold_in(self.rng, step)
    parts, sampling_s, grading_s = [], 0.0, 0.0
    for attempt in range(1 + (cfg.max_resample_rounds if cfg.dynamic_sampling else 0)):
      r, dt_sample, dt_grade = self.draw(params, jax.random.fold_in(rng, attempt))
      parts.append(r)
      sampling_s, grading_s = sampling_s + dt_sample, grading_s + dt_grade
      if not cfg.dynamic_sampling:
        break
      rolled, n_signal = keep_signal(parts, cfg.prompts, g, cfg.gdpo_weights)
      if not multihost.any_host(n_signal < cfg.prompts * g):
        break
      if stop is not None and attempt < cfg.max_resample_rounds and stop():
        raise RolloutStopped(f'step {step + 1}: stopped after {attempt + 1} dynamic-sampling draws')
    at = {'step': step + 1}  # the warnings' events.jsonl step: the one they name, whose record is not written yet
    if not cfg.dynamic_sampling:
      rolled = parts[0]
    elif n_signal < cfg.prompts * g:  # this host's share; the masked groups train nothing (metrics: zero_std_*)
      log.warning(
        'step %d: dynamic sampling found %d of %d groups with reward variance after %d draws '
        '(grpo.max_resample_rounds=%d); the other %d train nothing this step',
        step + 1, n_signal // g, cfg.prompts, len(parts), cfg.max_resample_rounds, cfg.prompts - n_signal // g,
        extra=at,
      )  # fmt: skip
    results = [x for p in parts for x in p.results]
    if cfg.mask_truncated and not self.truncation_said and rolled.truncated.all():
      self.truncation_said = True
      log.warning(
        'step %d: every completion reached sampling.max_new_tokens=%d without a stop token, and grpo.mask_truncated '
        'masks such completions out of the loss: the step trains nothing; raise sampling.max_new_tokens (said once; '
        'truncated_frac in metrics.jsonl counts them at every step)',
        step + 1, cfg.max_new_tokens, extra=at,
      )  # fmt: skip
    if not self.failures_said and any(x.errors for x in results):
      self.failures_said = True
      log.warning(
        'step %d: %s; they score 0 (said once: train/error_rate and train/errors/<category> in metrics.jsonl count '
        'them at every step)',
        step + 1,  # the step this rollout trains, as metrics.jsonl numbers it
        graders.failure_line(results, cfg.max_error_share, self.grader),
        extra=at,
      )
    missed = None if self.format_said else response_format.none_matched(results, f'step {step + 1}')
    if missed:
      self.format_said = True
      log.warning('%s (said once: train/response_format_valid in metrics.jsonl is the share at every step)', missed,
                  extra=at)  # fmt: skip
    stats = {**rollout_metrics(rolled, g, tools=self.sampler.tools, gdpo_weights=cfg.gdpo_weights),
             'sampling_rounds': len(parts)}  # fmt: skip
    batch = make_batch(rolled, cfg, self.mesh, self.shapes)
    return batch, stats, {'sampling_s': sampling_s, 'grading_s': grading_s}
