"""Batched completion and evaluation of a loaded model, on one host or many, and local judges for model graders.

  loaded = loader.load(...)                                                # the model (rftjax/loader.py)
  sampler = inference.make_sampler(loaded, prompts, max_new_tokens=32)     # the static sampling program
  outs = inference.complete(sampler, loaded.params, prompts, tok, mesh=loaded.mesh, batch_size=32)
  rows = inference.evaluate(sampler, params, prompts, items, tok, grader, pool, mesh=mesh, batch_size=64)
  judges = inference.local_judges(grader_spec)                             # for graders.build(spec, judges)

The one batched path for validation in training and for the sample / evaluate CLIs. Shapes are fixed so one
program compiles: every batch has `batch_size` rows (rounded up to the mesh's data x fsdp size and the number of
hosts), the last one repeating a prompt. When the mesh spans several hosts (a pod slice), every host calls with
the same prompts, samples its share of each batch, and gets every prompt's result back (`multihost.gather_objects`).
Batch `i` samples with `fold_in(rng, i)`.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import threading
import time
from collections.abc import Sequence

import jax

from rftjax import data as data_lib
from rftjax import episodes
from rftjax import errors
from rftjax import graders
from rftjax import loader
from rftjax import multihost
from rftjax import response_format
from rftjax import rollout
from rftjax import sampler as sampler_lib
from rftjax import sharding
from rftjax import tools

log = logging.getLogger(__name__)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def make_sampler(
  loaded: loader.Loaded,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  temperature: float = 0.0,
  top_p: float | None = None,
  top_k: int | None = None,
  stop: Sequence[str] | None = None,
  group_size: int = 1,
) -> sampler_lib.Sampler:
  """A sampler for these prompts: left-padded to the run's `data.max_prompt_len` (the shapes its validation ran with)
  or to the longest prompt rounded up to a multiple of 8 (few shapes compile), whichever is longer.
  `stop`: extra stop strings (one token or several) on top of EOS and the turn end; None = the run's
  `sampling.stop`. `top_p` / `top_k` None: the run's `sampling.top_p` / `top_k` (1.0 and 0, off, without a run);
  the KV cache's dtype is always the run's `sampling.cache_dtype`: what its validation sampled with. `group_size`:
  the prompts come as groups of that many copies in consecutive rows, each group prefilled once (as a run's
  validation samples its `eval_samples`: the same program, so the same draws)."""
  run_sampling = loaded.config.get('sampling', {})
  longest = max((len(p) for p in prompts), default=0)
  empty = [i for i, p in enumerate(prompts) if not len(p)]
  if longest == 0 or empty:
    raise errors.ConfigError(
      f'prompt {empty[0] if empty else 0} (0-based) has no tokens; an empty text prompt needs a tokenizer that adds BOS'
    )
  if longest + max_new_tokens > loaded.cfg.max_seq_len:  # time and memory grow with it; the model never saw it
    log.warning(
      'the longest prompt is %d tokens: with %d new tokens that is %d positions, more than the context of %s (%d, '
      'its max_seq_len); expected shorter prompts or fewer new tokens',
      longest, max_new_tokens, longest + max_new_tokens, loaded.cfg.name, loaded.cfg.max_seq_len,
    )  # fmt: skip
  if stop is None:
    stop = tuple(run_sampling.get('stop', ()))
  top_p = float(run_sampling.get('top_p', 1.0)) if top_p is None else top_p
  top_k = int(run_sampling.get('top_k', 0)) if top_k is None else top_k
  try:
    stop_ids, stop_seqs = sampler_lib.stop_tokens(loaded.tokenizer, stop)
  except ValueError as e:
    raise errors.ConfigError(f'--stop: {e}') from None
  return sampler_lib.Sampler(
    loaded.cfg,
    max(_round_up(longest, 8), int(loaded.config.get('data', {}).get('max_prompt_len') or 0)),
    max_new_tokens,
    stop_ids,
    loaded.tokenizer.pad_id,
    sampler_lib.SamplingParams(float(temperature), float(top_p), int(top_k)),
    cache_dtype=run_sampling.get('cache_dtype') or 'float32',
    compute_dtype=loaded.config.get('compute_dtype') or 'float32',
    stop_seqs=stop_seqs,
    group_size=group_size,
  )


def _completion(r: rollout.Rollout, j: int, logprobs: bool = True) -> dict:
  n = int(r.lengths[j])
  return {
    'tokens': [int(t) for t in r.tokens[j, :n]],
    'text': r.texts[j],
    **({'logprobs': [float(x) for x in r.logprobs[j, :n]]} if logprobs else {}),
    'truncated': bool(r.truncated[j]),
    **({'transcript': episodes.record(r.episodes[j])} if r.episodes[j] is not None else {}),
  }


def _batch_rows(mesh, batch_size: int, prompts: int, group: int = 1) -> tuple[int, int]:
  """(rows of each sampling batch over every host, hosts that share them). group: the sampler's group_size (k
  samples of a prompt in consecutive rows): each host's rows hold whole groups, or no group prefills once."""
  hosts = jax.process_count() if multihost.spans_hosts(mesh) else 1
  shards = 1 if mesh is None else mesh.shape['data'] * mesh.shape['fsdp']
  return sharding.sampling_rows(max(1, min(batch_size, prompts)), shards, hosts * group), hosts


def _group(sampler) -> int:
  return getattr(getattr(sampler, 'sampler', sampler), 'group_size', 1)  # an episodes.Agent holds its Sampler


def _host_batches(sampler, params, prompts, tok, *, mesh, rng, batch_size: int, items=None):
  """Yields (prompt indices, Rollout of those rows) for this host's share of each fixed-size batch. `items`: the
  prompts' data rows (episodes call only the tools a row offers)."""
  batch, hosts = _batch_rows(mesh, batch_size, len(prompts), _group(sampler))
  per, me = batch // hosts, jax.process_index() if hosts > 1 else 0
  for i, start in enumerate(range(0, len(prompts), batch)):
    rows = list(range(start, min(start + batch, len(prompts))))[me * per : (me + 1) * per]
    filled = rows + [rows[-1] if rows else start] * (per - len(rows))  # same shapes and calls on every host
    mine = None if items is None else [items[k] for k in filled]
    r = rollout.sample(sampler, params, [prompts[k] for k in filled], tok, jax.random.fold_in(rng, i), mesh, mine)
    yield rows, r.take(range(len(rows)))


def _gather(mine: list, mesh) -> list:
  """Every host's rows of a mesh that spans hosts; this host's own of one that does not (a local judge's: each host
  completed all of its prompts, and gathering would hand it the other hosts' completions too)."""
  return multihost.gather_objects(mine) if multihost.spans_hosts(mesh) else mine


def complete(
  sampler: sampler_lib.Sampler,
  params,
  prompts: Sequence[Sequence[int]],
  tok,
  *,
  mesh,
  batch_size: int = 32,
  rng=None,
  progress=None,
) -> list[dict]:
  """Completes every prompt once: [{'tokens': ids through the stop token, 'text': decoded (special tokens dropped),
  'logprobs': per token, 'truncated': hit max_new_tokens without a stop}], in order, on every host.
  `progress(done, total)` is called per batch with this host's count."""
  rng = jax.random.key(0) if rng is None else rng
  mine, done = [], 0
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    for rows, r in _host_batches(sampler, params, prompts, tok, mesh=mesh, rng=rng, batch_size=batch_size):
      mine += [[k, _completion(r, j)] for j, k in enumerate(rows)]
      done += len(rows)
      if progress is not None:
        progress(done, len(prompts))
  return [c for _, c in sorted(_gather(mine, mesh), key=lambda kc: kc[0])]


def evaluate(
  sampler: sampler_lib.Sampler,
  params,
  prompts: Sequence[Sequence[int]],
  items: Sequence[dict],
  tok,
  grader,
  pool,
  *,
  mesh,
  batch_size: int,
  rng=None,
  progress=None,
) -> list[tuple[dict, graders.GradeResult]]:
  """`complete` plus grading: (completion, GradeResult) per prompt, in order, on every host. Each host grades its
  own rows in the pool while its next batch samples. Completions carry no 'logprobs': no caller reads them, and a
  validation of a thousand prompts x 4 samples x 1024 tokens held ~125 MB of Python floats (gathered to each host)."""
  rng = jax.random.key(0) if rng is None else rng
  pending, done = [], 0
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    batches = _host_batches(sampler, params, prompts, tok, mesh=mesh, rng=rng, batch_size=batch_size, items=items)
    for rows, r in batches:
      traces = r.traces
      future = pool.submit(grader, r.texts, [items[k] for k in rows], traces=traces) if rows else None
      pending.append((rows, r, future))
      done += len(rows)
      if progress is not None:
        progress(done, len(prompts))
  mine = []
  for rows, r, future in pending:
    results = r.graded(future.result()).results if future is not None else []  # a tool's outage: no verdict
    mine += [[k, _completion(r, j, logprobs=False), res.to_json()] for j, (k, res) in enumerate(zip(rows, results))]
  everything = sorted(_gather(mine, mesh), key=lambda row: row[0])
  return [(c, graders.GradeResult.from_json(res)) for _, c, res in everything]


def graded_row(example: data_lib.Example, sample: int, completion: dict, result, **more) -> dict:
  """One line of a validation's samples file and of `evaluate --out`: the data row it answers (`source` file:line,
  `item`), which of its k samples (`sample`), the completion (text, token ids, cut off or not) and its grading;
  `more` (evaluate's `passed`) before an episode's transcript, the longest part, last."""
  grade = result.to_json()
  return {
    'source': example.source,
    'item': data_lib.reference(example),
    'sample': sample,
    'completion': completion['text'],
    'tokens': completion['tokens'],
    'truncated': completion['truncated'],
    'reward': grade['reward'],
    'sub_rewards': grade['sub_rewards'],
    'errors': grade['errors'],
    **{k: grade['metadata'][k] for k in ('response_format_error',) if k in grade['metadata']},
    **({'metadata': result.notes()} if result.notes() else {}),
    **more,
    **({'transcript': completion['transcript']} if 'transcript' in completion else {}),
  }


def progress_log(label: str, every_s: float = 30.0):
  """A `progress(done, total)` for `evaluate` that logs '<label>: done/total prompts (Ns)' when `every_s` have
  passed since the pass began or since the last line: a pass over a few thousand prompts takes minutes, and a
  short one says nothing."""
  t0 = last = time.perf_counter()

  def report(done: int, total: int) -> None:
    nonlocal last
    now = time.perf_counter()
    if now - last >= every_s and done < total:
      last = now
      log.info('%s: %d/%d prompts (%.0fs)', label, done, total, now - t0)

  return report


def validation_rng(seed: int, step: int):
  """The key a run's validation at `step` samples with (the trainer's, preflight's and evaluate's of a run's
  checkpoint): its completions at a temperature, and its episodes' trace ids, come out the same."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 2**31 - 1), step)


class ValidationStopped(Exception):
  """A validation pass ended early because its `stop()` said so (the trainer's SIGTERM or Ctrl-C)."""


class Validation:
  """A training run's validation pass: `evaluate` on the validation prompts (k samples each, repeated by the caller)
  and its records: one line of metrics.jsonl, samples/valid_stepNNNNNN.jsonl with every completion, its reward and
  sub-rewards and the row it answers. `validate(params, step) -> metrics`, sampled with
  `validation_rng(seed, step)`. More failed gradings than
  `max_error_share` raise graders.GradingFailed once the samples file is written and before the metrics line: a
  reward of 0 for every broken grading would rank checkpoints by the grader's errors."""

  def __init__(self, sampler, batch_size: int, prompts, examples, tok, grader, pool, mesh, seed: int, writer, run,
               max_error_share: float = 1.0):  # fmt: skip
    self.sampler, self.batch_size, self.prompts, self.examples, self.tok = sampler, batch_size, prompts, examples, tok
    self.grader, self.pool, self.mesh, self.seed, self.writer, self.run = grader, pool, mesh, seed, writer, run
    self.max_error_share = max_error_share
    self.format_said = False

  def __call__(self, params, step: int, stop=None) -> dict:
    """`stop() -> bool`, asked after each batch but the last (on every host alike: it may be a collective), ends
    the pass early with ValidationStopped: a preemption's notice is shorter than a whole pass may be. Once the last
    batch is sampled the pass is finished and graded, so a stop during a one-batch pass loses nothing."""
    t0 = time.perf_counter()
    k = _group(self.sampler)  # the caller repeated each prompt k times (eval_samples)
    rows = _batch_rows(self.mesh, self.batch_size, len(self.prompts), k)[0]
    batches = -(-len(self.prompts) // rows)
    seen, said = [], progress_log(f'step {step}: validating')

    def between_batches(done, total):
      said(done, total)
      seen.append(done)  # after the last batch nothing is left to sample: the pass finishes (its grading)
      if len(seen) < batches and stop is not None and stop():
        raise ValidationStopped(f'validation at step {step} stopped after {done} of {total} prompts')

    try:
      rows = evaluate(
        self.sampler,
        params,
        self.prompts,
        [e.item for e in self.examples],
        self.tok,
        self.grader,
        self.pool,
        mesh=self.mesh,
        batch_size=self.batch_size,
        rng=validation_rng(self.seed, step),
        progress=between_batches,
      )
    except tools.ToolsFailed as e:  # a reward earned against a broken tool would rank the checkpoint
      raise tools.ToolsFailed(f'validation at step {step}: {e}') from None
    results = [res for _, res in rows]
    m = {
      'step': step,
      **graders.summarize(results, prefix='valid'),
      **episodes.metrics([c.get('transcript') for c, _ in rows], 'valid/', self.sampler.tools),
      'valid_completion_len_mean': sum(len(c['tokens']) for c, _ in rows) / max(len(rows), 1),
      'valid_truncated_frac': sum(c['truncated'] for c, _ in rows) / max(len(rows), 1),  # ran to max_new_tokens
      # over prompts (report's ± and ties): null with fewer than 2
      'valid_reward_stderr': graders.reward_stderr(results, k),
      'valid/num_prompts': len(rows) // k,
      'timing/eval_s': time.perf_counter() - t0,
    }
    samples = pathlib.Path('samples') / f'valid_step{step:06d}.jsonl'
    if jax.process_index() == 0:
      records = [graded_row(ex, i % k, c, res) for i, (ex, (c, res)) in enumerate(zip(self.examples, rows))]
      data_lib.write_jsonl(self.run.local / samples, records)
    if sum(1 for r in results if r.errors) > self.max_error_share * len(results):
      self.run.sync(raise_errors=False)
      line = graders.failure_line(results, self.max_error_share, self.grader)
      raise graders.GradingFailed(f'validation at step {step}: {line} (every completion is in {samples})', [])
    self.writer.write(m)
    n = len(rows) // k
    shown = f'{n} prompt{"s" * (n != 1)}' + (f' x {k} samples' if k > 1 else '')
    log.info('step %d: valid_reward_mean=%.4f (%s, %.1fs)', step, m['valid_reward_mean'], shown, m['timing/eval_s'])
    missed = None if self.format_said else response_format.none_matched(results, f'validation at step {step}')
    if missed:
      self.format_said = True
      log.warning('%s (said once: valid/response_format_valid in metrics.jsonl is the share each time)', missed)
    if any(r.errors for r in results):  # too few to stop the run, but each one scores 0 or is left out
      line = graders.failure_line(results, self.max_error_share, self.grader)
      failed = sum(1 for r in results if r.errors)  # a tool's outage left out too is no grading error: not here
      out = sum(1 for r in results if r.errors and r.metadata.get('discard'))
      others = failed - out  # an outage's 0 says nothing of the checkpoint: out of the mean
      fate = f'{out} left without a verdict (an outage) {"is" if out == 1 else "are"} out of valid_reward_mean'
      fate = 'they score 0' if not out else fate + ('' if not others else f', the {others} other{"s" * (others > 1)}'
                                                    f' score{"s" * (others == 1)} 0')  # fmt: skip
      log.warning('validation at step %d: %s; %s (every completion is in %s)', step, line, fate, samples)
    self.run.sync(raise_errors=False)
    return m


# ---- local judges ----------------------------------------------------------------------------------------------
def make_judge(
  loaded: loader.Loaded, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0
):
  """A judge for model graders (score_model / label_model) answered by `loaded` instead of an API.

  It renders the grader's messages with the tokenizer's chat template (`developer` becomes `system`) and samples
  one completion. The grader's `sampling_params` win over the defaults given here: `temperature`, `top_p`,
  `max_completions_tokens` (or `max_tokens`), `seed`. The default temperature is 0 (greedy), so a judge's score is
  reproducible. Calls from the grading pool's threads are serialised: the accelerator is one. The judge's mesh
  holds this host's devices only, so hosts of a pod slice judge their own rows independently.
  """
  lock = threading.Lock()
  calls = [0]

  def judge(messages: list[dict], sampling_params: dict) -> str:
    sp = dict(sampling_params or {})
    msgs = [{'role': 'system' if m['role'] == 'developer' else m['role'], 'content': m['content']} for m in messages]
    ids = loaded.tokenizer.encode_prompt(msgs)
    new = int(
      sp.get('max_completions_tokens') or sp.get('max_completion_tokens') or sp.get('max_tokens') or max_new_tokens
    )
    sampler = make_sampler(
      loaded,
      [ids],
      max_new_tokens=new,
      temperature=float(sp.get('temperature', temperature)),
      top_p=float(sp.get('top_p', top_p)),
      stop=(),
    )
    with lock:
      calls[0] += 1
      rng = jax.random.key(int(sp.get('seed', seed + calls[0])))
      return complete(sampler, loaded.params, [ids], loaded.tokenizer, mesh=loaded.mesh, batch_size=1, rng=rng)[0][
        'text'
      ]

  return judge


def local_judges(spec: dict, **judge_options) -> dict:
  """{model name: judge} for every model grader in `spec` that names an init spec (`gguf:...`, `hf:...`):
  each model is loaded once, on this host's devices. Pass the result to `graders.build(spec, judges=...)`."""
  judges = {}
  loader.check_judges(spec)  # every one before the first loads
  for name in graders.local_models(spec):
    mesh = sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1}, devices=jax.local_devices())
    loaded = loader.load(loader.model_spec(init=name), mesh=mesh)
    judges[name] = make_judge(loaded, **judge_options)
  return judges
