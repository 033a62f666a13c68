"""Before training: how often the initial model already solves each training prompt, and what the run will cost.

  python -m rftjax.preflight --config=configs/smollm2_arith.py --samples=8 --out=preflight/arith [--limit=200]
  python -m rftjax.preflight --config=C [--openai_job=J] [--config.x=y ...] --samples=k --out=DIR
      [--write_filtered=DIR2 --drop=always_solved,never_solved] [--pass_threshold=1.0] [--limit=N]
      [--notime_train_step] [--novalidate]

Loads the run's initial model (`config.init`, or random weights) exactly as `python -m rftjax.train` would, samples
every training prompt (the first `--limit` only, when given) k times with the run's training sampler (temperature,
top_p, top_k, max_new_tokens, stop) in batches of the training shape (batch_size x num_generations rows), grades
every completion with the run's grader, runs the run's step-0 validation pass and times one real GRPO update on a
batch of the training shape. Prints a table and writes to --out:

  pass_rates.jsonl   one line per prompt: source (file:line), item, mean_reward, pass_rate, rewards, completion (the
                     first), completions (all k), grading_errors
  pass_rates.png     histogram of the per-prompt pass rates; the bars at 0 and 1 are the prompts with no signal
  summary.json       the table's numbers, how they were computed, and the run's wall time: measured parts, and
                     their extrapolation to the run's steps and validation passes

A prompt whose k samples all fail (never solved) or all pass (always solved) gives GRPO no signal: every completion
in its group gets the same reward, so every advantage is zero. `--write_filtered=DIR2` writes DIR2/train.jsonl
without the prompts `--drop` names (unmeasured lines are kept) and DIR2/valid.jsonl, a copy of the run's
validation file. Exit status: 0 done; 2 bad input (one `error:` line naming the flag, config key, file and line or
grader field); 3 grading broken (more than grading.max_error_share of the gradings failed; the files are written).
See docs/preflight.md.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import math
import os
import pathlib
import sys
import time

import numpy as np

from rftjax import cli
from rftjax import errors
from rftjax import filtering
from rftjax import runfs

log = logging.getLogger('rftjax')

EXIT_GRADING_FAILED = 3  # as rftjax.train
BAR = '{l_bar}{bar}| {n:.1f}/{total_fmt} prompts [{elapsed}<{remaining}{postfix}]'  # prompts' worth of samples


# ---- per-prompt statistics (pure, no JAX) -----------------------------------------------------------------------
def zero_variance_prob(rewards, g: int) -> float:
  """The chance that G completions of this prompt all get the same reward (GRPO's advantages are then all zero),
  estimated from its k sampled `rewards`.

  With c_v of the k samples at reward value v, the estimate is sum_v C(c_v, G) / C(k, G) when k >= G: the share of
  the G-subsets of the k samples whose rewards all agree, an unbiased estimate of sum_v P(v)^G, which for binary
  rewards with pass probability p is p^G + (1 - p)^G. With k < G it is the plug-in sum_v (c_v / k)^G, biased
  upward (x^G is convex). Rewards are compared after rounding to 9 decimals, so any non-binary grader works."""
  k = len(rewards)
  counts = collections.Counter(round(float(r), 9) for r in rewards).values()
  if k >= g:
    return sum(math.comb(c, g) for c in counts) / math.comb(k, g)
  return sum((c / k) ** g for c in counts)


def prompt_row(example, rewards, completions: list[str], threshold: float, errors_: int) -> dict:
  """One line of pass_rates.jsonl: `completion` is the first of `completions` (all k, in the order of `rewards`)."""
  from rftjax import data as data_lib

  rewards = [float(r) for r in rewards]
  return {
    'source': example.source,
    'item': data_lib.reference(example),
    'mean_reward': sum(rewards) / len(rewards),
    'pass_rate': sum(r >= threshold for r in rewards) / len(rewards),
    'rewards': rewards,
    'completion': completions[0],
    'completions': list(completions),
    'grading_errors': errors_,
  }


def summarize(rows: list[dict], g: int, threshold: float) -> dict:
  """Run-level numbers from the pass_rates.jsonl rows (each with k rewards) for groups of G completions."""
  k = len(rows[0]['rewards'])
  rates = np.asarray([r['pass_rate'] for r in rows], np.float64)
  rewards = np.asarray([r['rewards'] for r in rows], np.float64)
  never, always = int((rates == 0).sum()), int((rates == 1).sum())
  n = len(rows)
  zero = np.asarray([zero_variance_prob(r, g) for r in rewards])
  return {
    'num_prompts': n,
    'samples_per_prompt': k,
    'num_generations': g,
    'pass_threshold': threshold,
    'reward_mean': float(rewards.mean()),
    'pass_rate_mean': float(rates.mean()),
    # over prompts: it carries both the spread between prompts and the sampling noise within each
    'pass_rate_stderr': float(rates.std(ddof=1) / math.sqrt(n)) if n > 1 else None,  # JSON has no NaN
    'binary_rewards': bool(np.isin(rewards, (0.0, 1.0)).all()),
    'never_solved': never,
    'always_solved': always,
    'never_solved_share': never / n,
    'always_solved_share': always / n,
    'zero_variance_share_at_k': float(np.mean([len(set(np.round(r, 9))) == 1 for r in rewards])),
    'zero_variance_share_at_g': float(zero.mean()),
    'zero_variance_share_at_g_stderr': float(zero.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
    'zero_variance_method': (
      f'mean over prompts of sum_v C(c_v, G) / C(k, G) (unbiased for sum_v P(v)^G; binary: p^G + (1-p)^G), G={g}, k={k}'
      if k >= g
      else f'mean over prompts of sum_v (c_v / k)^G (plug-in, biased upward since k={k} < G={g})'
    ),
  }


def evaluations(total_steps: int, eval_interval: int) -> int:
  """Validation passes of a fresh run: step 0, every eval_interval steps, and the last step (trainer.py)."""
  return 1 + sum(1 for s in range(1, total_steps + 1) if s % eval_interval == 0 or s == total_steps)


def estimate(m: dict, run: dict) -> dict:
  """The run's wall time in seconds from this command's measurements `m` (summary.json's timing.measured) and the
  run's shape `run` (timing.run): sampling batches, gradings and updates x total_steps, validation passes x
  evaluations, and start-up (model load, the samplers' compilation and the first update's extra over the second:
  its compilation and first-call costs). Without a measured validation pass its completions are priced at the
  training sampler's cost per completion (greedy decoding at eval_batch_size is usually cheaper)."""
  steps, step_s, grade_s = run['total_steps'], m['train_step_s'], m['grading_s_per_completion']
  valid_pass_s = m['valid_pass_s']
  if valid_pass_s is None:
    valid_pass_s = run['valid_completions'] * (m['sampling_batch_s'] / run['rows'] + grade_s)
  parts = {
    'sampling_s': steps * m['sampling_batch_s'],
    'grading_s': steps * run['rows'] * grade_s,
    'training_s': steps * step_s if step_s is not None else None,
    'validation_s': run['evaluations'] * valid_pass_s,
    'startup_s': m['load_s'] + m['sampler_compile_s'] + (m['train_step_first_s'] - step_s if step_s else 0.0),
  }
  return {**parts, 'total_s': sum(v for v in parts.values() if v is not None)}


def write_histogram(rates, k: int, path: pathlib.Path, title: str) -> None:
  """Prompts per pass rate j/k, one bar per value; the bars at 0 and 1 (no GRPO signal) in red. Atomic."""
  from rftjax import plots

  fig, ax = plots.figure()
  from matplotlib import patches as mpatches  # after figure(): the environment's backend is checked first

  _, _, bars = ax.hist(rates, bins=(np.arange(k + 2) - 0.5) / k, color='tab:blue', edgecolor='white')
  for bar in (bars[0], bars[-1]):
    bar.set_facecolor('tab:red')
  ax.bar_label(bars, labels=[f'{int(b.get_height())}' if b.get_height() else '' for b in bars])
  ax.set_xlim(-0.5 / k - 0.02, 1 + 0.5 / k + 0.02)
  ax.margins(y=0.12)  # room for the count above the tallest bar
  ax.set_xlabel(f'pass rate (share of {k} samples that pass)')
  ax.set_ylabel('prompts')
  ax.set_title(title)
  ax.grid(alpha=0.3)
  signal = mpatches.Patch(color='tab:blue', label='some samples pass, some fail')
  none = mpatches.Patch(color='tab:red', label='never / always solved: no GRPO signal')
  ax.legend(handles=[signal, none], loc='best')
  fig.tight_layout()
  plots.write_png(fig, path)


def _minutes(s) -> str:
  return '-' if s is None else f'{s:.1f} s' if s < 90 else f'{s / 60:.1f} min'


def table(s: dict) -> str:
  """The printed summary: one line per number, what it is and whether it was measured or extrapolated."""
  m, e, t, smp = s['timing']['measured'], s['timing']['estimate'], s['timing']['run'], s['sampling']
  step = (
    f'measured {m["train_step_s"]:.3f} s per update x {t["total_steps"]} steps (extrapolated)'
    if m['train_step_s'] is not None
    else 'not measured (--notime_train_step)'
  )
  once = ' (one batch only)' if m['sampling_first_batch_only'] else ''
  first_extra = m['train_step_first_s'] - m['train_step_s'] if m['train_step_s'] is not None else None
  pm = lambda v: '(one prompt: no standard error)' if v is None else f'+- {v:.4f}'  # noqa: E731
  zero_note = (
    f"{pm(s['zero_variance_share_at_g_stderr'])}: expected share of a step's groups whose rewards all agree"
    if s['samples_per_prompt'] >= s['num_generations']
    else f'plug-in estimate from k={s["samples_per_prompt"]} < G samples: biased upward (1 at k=1)'
  )
  rows = [
    ('mean reward', f'{s["reward_mean"]:.4f}', ''),
    ('mean pass rate', f'{s["pass_rate_mean"]:.4f}', f'{pm(s["pass_rate_stderr"])} standard error over prompts; '
     f'a sample passes at reward >= {s["pass_threshold"]:g}'),
    ('never solved', f'{s["never_solved_share"]:.4f}', f'{s["never_solved"]} prompts: 0 of k samples pass'),
    ('always solved', f'{s["always_solved_share"]:.4f}', f'{s["always_solved"]} prompts: k of k samples pass'),
    (f'zero-variance groups, G={s["num_generations"]}', f'{s["zero_variance_share_at_g"]:.4f}', zero_note),
    ('completion tokens', f'{s["completion_len_mean"]:.1f}', f'mean; {s["truncated_share"]:.1%} hit max_new_tokens'),
    ('grading errors', f'{s["grading_error_share"]:.1%}', 'of the samples'),
    *([('response format valid', f'{s["response_format_valid_share"]:.1%}', 'of the samples: the others score 0 '
        'ungraded')] if 'response_format_valid_share' in s else []),  # fmt: skip
    *([('step-0 validation reward', f'{s["valid_reward_mean_step0"]:.4f}', 'measured: the valid_reward_mean the run '
        f'logs at step 0 ({s["valid_completions_graded"]} completions at eval_temperature {s["eval_temperature"]:g})')]
      if 'valid_reward_mean_step0' in s else []),
    ('run: sampling', _minutes(e['sampling_s']), f'measured {m["sampling_batch_s"]:.3f} s per batch of '
     f'{t["rows"]}{once} x {t["total_steps"]} steps (extrapolated)'),
    ('run: grading', _minutes(e['grading_s']), f'measured {m["grading_s_per_completion"] * 1e3:.2f} ms per '
     "completion x the run's completions (extrapolated)"),
    ('run: training', _minutes(e['training_s']), step),
    ('run: validation', _minutes(e['validation_s']), f'measured {m["valid_pass_s"]:.2f} s per pass of '
     f'{t["valid_completions"]} x {t["evaluations"]} passes (extrapolated)' if m['valid_pass_s'] is not None else
     f'{t["evaluations"]} passes x {t["valid_completions"]} completions at the training sampler\'s cost '
     '(extrapolated; --novalidate)'),
    ('run: start-up', _minutes(e['startup_s']), f'measured: model load {m["load_s"]:.1f} s + samplers\' '
     f'compilation {m["sampler_compile_s"]:.1f} s' + (f' + first update\'s extra {first_extra:.1f} s' if
     first_extra is not None else '')),
    ('run: total', _minutes(e['total_s']), 'without checkpoint saves' + (
     '; dynamic sampling draws more' if t['dynamic_sampling'] else '')),
  ]  # fmt: skip
  head = (
    f'preflight {s["config"]}: {s["num_prompts"]} of {s["num_train_prompts"]} training prompts x '
    f'k={s["samples_per_prompt"]} (temperature {smp["temperature"]:g}, top_p {smp["top_p"]:g}, top_k '
    f'{smp["top_k"]}, {smp["max_new_tokens"]} new tokens); the run: {t["total_steps"]} steps x '
    f'{t["batch_size"]} prompts x G={t["num_generations"]}'
  )
  width = max(len(label) for label, _, _ in rows)
  return '\n'.join([head] + [f'  {label:<{width}}  {value:>10}  {note}'.rstrip() for label, value, note in rows])


# ---- the measurement --------------------------------------------------------------------------------------------
def _sample_and_grade(spec, params, prompts, items, k, tok, grader, pool, mesh, rng, clock, progress: bool):
  """Every prompt k times with the run's training sampler, in batches of the training shape (B prompts x G rows;
  the last one padded by repeating a row), each batch graded after it is sampled (as a training step does). Returns per
  prompt: rewards, completions, grading-error counts; then every GradeResult, the first graded batch (a Rollout),
  sampling seconds per batch (without compilation), grading seconds, completion lengths and truncated flags.

  The sampling is the trainer's own (`rollout.sample`, which `inference.complete` wraps too) at the trainer's
  shape, so its seconds per batch are what a training step's sampling costs; grading does not overlap it, as in a
  training step, and so is timed on its own."""
  import jax
  import tqdm

  from rftjax import inference, rollout

  g = spec.rollout.num_generations
  rows = spec.rollout.prompts * g
  # rows in a training step's order: B prompts x their G samples. Round r holds samples rG.. of every prompt, so
  # (when G divides k) each batch has B distinct prompts: a batch of fewer, like-length rows would decode for fewer
  # steps (the loop ends when every row has stopped) and time faster than training does
  flat = [i for r in range(0, k, g) for i in range(len(prompts)) for _ in range(min(g, k - r))]
  rewards, texts, errs = [[] for _ in prompts], [[] for _ in prompts], [0] * len(prompts)
  results, lengths, truncated, batch_times, grade_s, first_batch = [], [], [], [], 0.0, None
  drawn = progress and cli.redraws_in_place(sys.stderr)  # in a log file: a line every 30 s instead
  lines = inference.progress_log('preflight') if progress and not drawn else lambda done, total: None
  with tqdm.tqdm(
    total=len(prompts),
    unit='prompt',
    desc='preflight',
    file=sys.stderr,
    disable=not drawn,
    dynamic_ncols=True,
    bar_format=BAR,
  ) as bar:  # closed on a Ctrl-C too (a notebook goes on drawing an open one)
    for b, start in enumerate(range(0, len(flat), rows)):
      chunk = flat[start : start + rows]
      padded = chunk + [chunk[-1]] * (rows - len(chunk))  # one shape: one compiled program, as in training
      t0, compiled = time.perf_counter(), clock.total
      r = rollout.sample(
        spec.train_sampler, params, [prompts[i] for i in padded], tok, jax.random.fold_in(rng, b), mesh
      )
      t1 = time.perf_counter()
      graded = pool.grade(grader, r.texts[: len(chunk)], [items[i] for i in chunk])
      grade_s += time.perf_counter() - t1
      batch_times.append(t1 - t0 - (clock.total - compiled))
      if first_batch is None:  # the train-step timing trains on a real batch
        first_batch = r.graded(graded + graded[-1:] * (rows - len(chunk)))
      for j, i in enumerate(chunk):
        rewards[i].append(graded[j].reward)
        errs[i] += bool(graded[j].errors)
        texts[i].append(r.texts[j])
      results += graded
      lengths += [int(x) for x in r.lengths[: len(chunk)]]
      truncated += [bool(x) for x in r.truncated[: len(chunk)]]
      bar.update(len(chunk) / k)  # prompts' worth of samples: a prompt's k samples span the rounds
      lines(int((start + len(chunk)) / k), len(prompts))
      bar.set_postfix({'reward': f'{np.mean([x.reward for x in results]):.3f}'}, refresh=False)
  return rewards, texts, errs, results, first_batch, batch_times, grade_s, lengths, truncated


def _validate(spec, params, valid_set, valid_prompts, tok, grader, pool, mesh, seed: int, clock) -> dict:
  """The run's step-0 validation pass, as trainer.py runs it (`inference.evaluate` with the eval sampler, its batch
  size, eval_samples per prompt and the same rng), timed without its compilation."""
  from rftjax import inference

  k = spec.eval_samples
  prompts = [p for p in valid_prompts for _ in range(k)]
  items = [ex.item for ex in valid_set for _ in range(k)]
  rng = inference.validation_rng(seed, 0)  # the trainer's step-0 validation
  t0, compiled = time.perf_counter(), clock.total
  graded = inference.evaluate(spec.eval_sampler, params, prompts, items, tok, grader, pool, mesh=mesh,
                              batch_size=spec.eval_batch_size, rng=rng,
                              progress=inference.progress_log('validation'))  # fmt: skip
  return {
    'valid_reward_mean': float(np.mean([res.reward for _, res in graded])),
    'num_graded': len(graded),
    'pass_s': time.perf_counter() - t0 - (clock.total - compiled),
  }


def _time_train_step(config, spec, loaded, batch_rollout, mesh) -> tuple[float, float]:
  """(first update's seconds, with compilation; second update's seconds): the trainer's optimizer, state, KL
  reference and `make_update` on one real batch. Donates the loaded params: call it last."""
  import jax
  import jax.numpy as jnp

  from rftjax import lora
  from rftjax import rollout
  from rftjax import train_step as step_lib

  trainable, frozen = lora.split(loaded.params)
  tx = step_lib.make_optimizer(config.optimizer, spec.total_steps, spec.step.num_iterations)
  state = step_lib.init_state(trainable, tx)
  ref_params = (frozen or jax.tree.map(jnp.copy, trainable)) if spec.uses_reference else None
  update = step_lib.make_update(spec.step, tx)
  batch = rollout.make_batch(batch_rollout, spec.rollout, mesh)
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    state, metrics = update(state, batch, frozen, ref_params)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  return times[0], times[1]


def run(config, out, *, samples: int, limit: int = 0, write_filtered=None, drop=filtering.DROPS, pass_threshold=None,
        time_train_step: bool = True, validate: bool = True, explicit=(), config_name: str = '') -> dict:  # fmt: skip
  """Measures and writes everything (module docstring); returns the summary. Bad input raises a UserError before
  the model loads; broken grading raises graders.GradingFailed after the files are written."""
  import jax

  from rftjax import data as data_lib
  from rftjax import graders
  from rftjax import inference
  from rftjax import loader
  from rftjax import metrics as metrics_lib
  from rftjax import response_format
  from rftjax import runspec
  from rftjax import sharding

  load_start = os.getloadavg()
  # ---- the trainer's checks, in its order: nothing slow runs on bad input ----
  train_set = data_lib.load_jsonl(config.data.train, 'config.data.train')
  given, skips = config, runspec.skips_prompts(config)
  # the run's total_steps, batch size, G (OpenAI fields), counted on the prompts that fit when others are skipped
  config = runspec.resolve(config, len(train_set), explicit, quiet=skips)
  valid_set = data_lib.load_jsonl(config.data.valid, 'config.data.valid')[: config.data.valid_limit or None]
  grader_spec = config.grader
  runspec.check_grader(config, train_set + valid_set, explicit)
  threshold = float(pass_threshold if pass_threshold is not None else grader_spec.get('pass_threshold', 1.0))
  filtered_dir = filtering.check_folder(config, write_filtered) if write_filtered else None
  if runfs.is_remote(out):
    raise errors.ConfigError(f'--out={out}: expected a local folder (copy it to a bucket afterwards)')
  cli.check_out(out, folder=True)  # both written after the measurement: a bad place would waste it
  tok = loader.load_tokenizer(config)
  spec = runspec.build(config, tok)
  fmt = response_format.make(config.get('response_format'))  # JSON completions: the schema joins every prompt
  # every line is checked as train checks it (a prompt too long), though only the first --limit are measured
  train_set, prompts = runspec.encode(config, train_set, tok, fmt, 'config.data.train')
  if skips:
    config, spec = runspec.resolve_kept(given, len(train_set), explicit, tok)
  measured, prompts = train_set[: limit or None], prompts[: limit or None]
  valid_set, valid_prompts = runspec.encode(config, valid_set, tok, fmt, 'config.data.valid')
  out = pathlib.Path(out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise runfs.unwritable(out, e, '--out') from None
  g, rows = spec.rollout.num_generations, spec.rollout.prompts * spec.rollout.num_generations
  if samples < g:
    log.warning('--samples=%d < num_generations=%d: the zero-variance share is a plug-in estimate, biased upward',
                samples, g)  # fmt: skip
  if samples % g:  # rows of a batch then hold fewer than G samples of a prompt: no shared prefill, no packing
    log.warning('--samples=%d is not a multiple of num_generations=%d: some batches are not groups of G samples of '
                'one prompt as training\'s are, so sampling_s and training_s time another program (use --samples=%d)',
                samples, g, -(-samples // g) * g)  # fmt: skip

  # ---- model, samples, grades, one timed update ----
  grader = graders.build(grader_spec, judges=inference.local_judges(grader_spec))
  mesh = sharding.make_mesh(config.mesh)
  # tracing, lowering and compiling: a timed call that compiled is priced without them
  clock = metrics_lib.CompileClock(metrics_lib.CompileClock.ALL)
  with jax.set_mesh(mesh), clock, graders.GradingPool.from_config(config.grading, fmt) as pool:
    t0 = time.perf_counter()
    loaded = loader.load(config, mesh=mesh, tokenizer=tok)
    load_s = max(0.0, time.perf_counter() - t0 - clock.total)  # random init compiles: counted as compilation
    params = loaded.params
    rewards, texts, errs, results, batch, batch_times, grade_s, lengths, truncated = _sample_and_grade(
      spec, params, prompts, [ex.item for ex in measured], samples, tok, grader, pool, mesh,
      jax.random.key(config.seed), clock, progress=config.progress,
    )  # fmt: skip
    val = _validate(spec, params, valid_set, valid_prompts, tok, grader, pool, mesh, config.seed, clock) if validate \
      else None  # fmt: skip
    del params
    compile_sampling = clock.total
    step_first, step_s = _time_train_step(config, spec, loaded, batch, mesh) if time_train_step else (0.0, None)
    del loaded

  # ---- numbers and files ----
  rows_out = [prompt_row(ex, r, c, threshold, e) for ex, r, c, e in zip(measured, rewards, texts, errs)]
  # the first batch also pays one-time costs that are not compilation (allocations, the first transfers)
  batch_s = float(np.mean(batch_times[1:])) if len(batch_times) > 1 else batch_times[0]
  n_valid = len(valid_set) * config.eval_samples
  n_evals = evaluations(spec.total_steps, spec.eval_interval)
  s = config.sampling
  summary = {
    'config': config_name,
    'date': datetime.datetime.now().isoformat(timespec='seconds'),
    'train_file': str(config.data.train),
    'num_train_prompts': len(train_set),
    'limit': limit,
    'sampling': dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens),
    **summarize(rows_out, g, threshold),
    'completion_len_mean': float(np.mean(lengths)),
    'truncated_share': float(np.mean(truncated)),
    'grading_error_share': sum(1 for r in results if r.errors) / len(results),
    **({'response_format_valid_share': graders.summarize(results)['train/response_format_valid']} if fmt else {}),
    **(
      {
        'valid_reward_mean_step0': val['valid_reward_mean'],
        'valid_completions_graded': val['num_graded'],
        'eval_temperature': config.eval_temperature,
      }
      if val
      else {}
    ),  # fmt: skip
    'timing': {
      'measured': {
        'load_s': load_s,
        'sampling_batch_s': batch_s,
        'sampling_batches': len(batch_times),
        'sampling_first_batch_only': len(batch_times) == 1,
        'sampling_s_per_completion': batch_s / rows,
        'grading_s_per_completion': grade_s / len(results),
        'train_step_s': step_s,
        'train_step_first_s': step_first if step_s is not None else None,
        'valid_pass_s': val['pass_s'] if val else None,
        'sampler_compile_s': compile_sampling,
        'compile_s': clock.total,
      },
      'run': dict(
        total_steps=spec.total_steps,
        batch_size=config.batch_size,
        num_generations=g,
        rows=rows,
        evaluations=n_evals,
        valid_completions=n_valid,
        dynamic_sampling=config.grpo.dynamic_sampling,
      ),  # fmt: skip
      'what': 'measured here: model load, compilation (tracing, lowering, XLA; compile_s is all of it, '
      "sampler_compile_s the samplers'), seconds per sampling batch of the training shape (without compilation; "
      'the first batch left out when there are more), grading seconds per completion, seconds per GRPO update (the '
      "second of two on one batch; the first one's extra counts as start-up), seconds per validation pass (without "
      "compilation); extrapolated: those x the run's steps and validation passes",
    },
  }
  (out / 'summary.json').unlink(missing_ok=True)  # written last: a stop before it leaves no earlier one beside
  data_lib.write_jsonl(out / 'pass_rates.jsonl', rows_out)  # these files
  write_histogram([r['pass_rate'] for r in rows_out], samples, out / 'pass_rates.png',
                  f'{config_name or config.data.train}: {len(rows_out)} prompts x {samples} samples')  # fmt: skip
  refusal = None  # said once summary.json is written
  if filtered_dir is not None:
    fits = {ex.source for ex in train_set}  # data.skip_long_prompts: the others never train
    entry, refusal = filtering.write(config, rows_out, drop, filtered_dir, samples, out, fits)
    summary.update({'filtered': entry} if entry else {})
  summary['load_average'] = {'start': list(load_start), 'end': list(os.getloadavg())}
  summary['timing']['estimate'] = estimate(summary['timing']['measured'], summary['timing']['run'])
  data_lib.write_atomic(out / 'summary.json', json.dumps(summary, indent=2) + '\n')
  missed = response_format.none_matched(results, 'preflight')
  if missed:  # the run would train on zeros
    log.warning('%s', missed)
  if refusal:
    raise errors.ConfigError(refusal)
  failed = graders.all_failed(results)
  if failed or sum(1 for r in results if r.errors) > config.grading.max_error_share * len(results):
    raise graders.GradingFailed(failed or graders.failure_line(results, config.grading.max_error_share, grader), [])
  if any(r.errors for r in results):  # too few to stop the run, but each one a 0 it trains on: say which
    line = graders.failure_line(results, config.grading.max_error_share, grader)
    log.warning('preflight: %s; they score 0 (every completion is in %s)', line, out / 'pass_rates.jsonl')
  elif results and len({r.reward for r in results}) == 1 and results[0].reward:  # a grader that passes anything?
    log.warning('preflight: every one of the %d completions scored %g: GRPO learns nothing from that. The task is '
                'solved for these prompts, or the grader passes anything: try it on a wrong answer (python -m '
                'rftjax.grade --grader=... --sample=... --item=...)', len(results), results[0].reward)  # fmt: skip
  elif results and not missed and not any(r.reward for r in results):  # a grader that never gives credit
    log.warning('preflight: every one of the %d completions scored 0: GRPO learns nothing from that. Check the '
                'grader on a completion you know is right (python -m rftjax.grade --grader=... --sample=... '
                '--item=...), or pick prompts the model can sometimes solve', len(results))  # fmt: skip
  return summary


# ---- command line -----------------------------------------------------------------------------------------------
def _define(fv) -> None:
  from absl import flags

  cli.define_openai_job(fv)
  flags.DEFINE_integer('samples', 8, 'k: completions sampled per training prompt.', flag_values=fv)
  flags.DEFINE_string('out', None, 'Output folder: pass_rates.jsonl, pass_rates.png, summary.json.', flag_values=fv)
  flags.DEFINE_integer('limit', 0, 'Measure the first N training prompts only (0 = all).', flag_values=fv)
  flags.DEFINE_string('write_filtered', None, 'Folder for train.jsonl / valid.jsonl without --drop.', flag_values=fv)
  flags.DEFINE_list(
    'drop', list(filtering.DROPS), f'With --write_filtered: any of {", ".join(filtering.DROPS)}.', flag_values=fv
  )
  flags.DEFINE_float('pass_threshold', None, "Pass at reward >= this (default: the grader's, else 1).", flag_values=fv)
  flags.DEFINE_boolean('time_train_step', True, 'Time one real GRPO update (--no: skip).', flag_values=fv)
  flags.DEFINE_boolean('validate', True, 'Run the step-0 validation pass, timed (--no: priced).', flag_values=fv)


def _check_flags(fv) -> None:
  if fv.samples < 1:
    raise errors.ConfigError(f'--samples: expected an integer >= 1, found {fv.samples}')
  if fv.limit < 0:
    raise errors.ConfigError(f'--limit: expected an integer >= 0 (0 = every prompt), found {fv.limit}')
  for name in fv.drop:
    if name not in filtering.DROPS:
      raise errors.ConfigError(
        f'--drop: expected names from {", ".join(filtering.DROPS)}, found {name!r}'
        f'{errors.did_you_mean(name, filtering.DROPS)}'
      )
  if not fv.drop:
    raise errors.ConfigError(f'--drop: expected one or both of {", ".join(filtering.DROPS)}, found nothing')


def main(argv=None) -> int:
  argv = sys.argv if argv is None else argv
  cli.setup_logging(0)

  def body() -> int:
    job, fv, argv_ = cli.parse_job_flags(argv, _define, required=('out',), doc=__doc__)
    _check_flags(fv)
    from rftjax import graders  # JAX starts here, after the flags are known to be good

    config_name = next((a.split('=', 1)[1] for a in reversed(argv_[1:]) if a.startswith(('--config=', '-config='))), '')
    config = fv.config
    if job is not None:
      from rftjax import openai_job

      config = openai_job.apply(config, job, cli.override_keys(argv_))
    try:
      summary = run(
        config,
        fv.out,
        samples=fv.samples,
        limit=fv.limit,
        write_filtered=fv.write_filtered,
        drop=tuple(fv.drop),
        pass_threshold=fv.pass_threshold,
        time_train_step=fv.time_train_step,
        validate=fv.validate,
        explicit=cli.override_keys(argv_),
        config_name=config_name,
      )
    except graders.GradingFailed as e:
      print(f'error: grading failed: {e}; the measurements are in {fv.out}', file=sys.stderr)
      return EXIT_GRADING_FAILED
    print(table(summary))
    if 'filtered' in summary:
      print(filtering.said(summary['filtered']), file=sys.stderr)
    print(f'wrote {fv.out}/pass_rates.jsonl, pass_rates.png, summary.json', file=sys.stderr)
    return 0

  return cli.run(body)


if __name__ == '__main__':
  cli.command(main)
