"""Offline evaluation of a checkpoint: k samples per prompt, graded; mean reward, pass@k, per-grader scores.

  python -m rftjax.evaluate --workdir=runs/tiny [--step=best] --data=valid.jsonl [--samples=k]
      [--temperature=T] [--grader=G.json] [--pass_threshold=1.0] [--tools=TOOLS.json] [--out=FILE.jsonl]

k=1 samples greedily unless --temperature is given; k>1 samples at temperature 1.0 unless given. The grader is the
run's (config.json) unless --grader names another. Every sample is written with its grade to --out (default
`DIR/eval/step<N>_<data stem>.jsonl`), the summary to `<out>.summary.json`; stdout gets a table and, last, the
summary as one JSON line. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import sys

import jax
import numpy as np
from etils import epath

from rftjax import cli
from rftjax import data as data_lib
from rftjax import episodes
from rftjax import errors
from rftjax import graders
from rftjax import inference
from rftjax import loader
from rftjax import multihost
from rftjax import response_format
from rftjax import runfs
from rftjax import sample as sample_cli
from rftjax import tool_server
from rftjax import tools

log = logging.getLogger('rftjax')


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k of Chen et al. 2021 (Codex), eq. 1: 1 - C(n-c, k) / C(n, k), for n samples of which c pass.

  Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the large binomials.
  """
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f'pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}')
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_to_report(n: int) -> list[int]:
  """1, 2, 4, ... up to n, and n itself."""
  ks = [k for k in (2**i for i in range(int(math.log2(n)) + 1)) if k <= n]
  return ks if ks[-1] == n else ks + [n]


def summarize(rewards: np.ndarray, results_flat, threshold: float) -> dict:
  """rewards [P, k] -> mean reward, pass@j for j in ks_to_report(k), graders.summarize(prefix='eval'). The mean and
  std leave out the samples an outage left without a verdict, as eval_reward_mean does; pass@j counts them as misses
  (its estimator wants k samples a prompt)."""
  p, k = rewards.shape
  verdict = np.asarray([not r.metadata.get('discard') for r in results_flat], bool)
  passed = ((rewards >= threshold) & verdict.reshape(p, k)).sum(axis=1)  # a pass against a broken tool: a miss
  counted = rewards.reshape(-1)[verdict]
  out = {
    'num_prompts': int(p),
    'samples_per_prompt': int(k),
    'reward_mean': float(counted.mean()) if counted.size else 0.0,
    'reward_std': float(counted.std()) if counted.size else 0.0,  # of one sample: no measure of the mean's error
    'reward_stderr': graders.reward_stderr(results_flat, k),  # the mean's, over prompts
  }
  for j in ks_to_report(k):
    out[f'pass@{j}'] = float(np.mean([pass_at_k(k, int(c), j) for c in passed]))
  out.update(graders.summarize(results_flat, prefix='eval'))
  return out


def default_out(workdir, step, data_path):
  return epath.Path(workdir) / 'eval' / f'step{step}_{epath.Path(data_path).stem}.jsonl'


def table(summary: dict) -> str:
  rows = [(k, v) for k, v in summary.items() if not k.startswith('eval/errors/') or v]
  width = max(len(k) for k, _ in rows)
  shown = lambda v: f'{v:.4f}' if isinstance(v, float) else json.dumps(v) if isinstance(v, dict) else v  # noqa: E731
  return '\n'.join(f'{k:<{width}}  {shown(v)}' for k, v in rows)


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m rftjax.evaluate', description=__doc__.split('\n')[0])
  sample_cli.add_model_flags(p)
  p.add_argument('--data', required=True, help='JSONL in the training format (messages + grader fields)')
  p.add_argument('--samples', type=int, default=1, help='k: samples per prompt, >= 1')
  p.add_argument('--limit', type=int, default=0, help='only the first N prompts of --data (0: all), as valid_limit')
  p.add_argument(
    '--temperature',
    type=float,
    default=None,
    help="0 = greedy, >= 0 (default: the run's eval_temperature when k is its eval_samples; else 0 for k=1, 1.0)",
  )
  p.add_argument('--top_p', type=float, default=None, help="in (0, 1]; 1 = off (default: the run's, else 1)")
  p.add_argument('--top_k', type=int, default=None, help="0 = off, >= 0 (default: the run's, else 0)")
  p.add_argument(
    '--grader',
    default=None,
    help="grader JSON file, or an OpenAI job file (its response_format too); default: the run's grader and format",
  )
  p.add_argument(
    '--pass_threshold',
    type=float,
    default=None,
    help="a sample passes when its reward >= this (default: the grader's pass_threshold, else 1.0)",
  )
  p.add_argument(
    '--seed',
    type=int,
    default=None,
    help="the sampling rng (with a temperature > 0); default: a run's validation's at that step, else 0",
  )
  p.add_argument('--num_workers', type=int, default=0, help='grading processes (0: one per CPU core)')
  p.add_argument(
    '--allow_unsandboxed',
    action='store_true',
    help="run python/code graders even where they cannot be isolated (default: the run's grading.allow_unsandboxed)",
  )
  p.add_argument(
    '--tools',
    default=None,
    help="a tool run's tools as a JSON file (default: the run's config.tools): a server that has moved, new headers",
  )
  p.add_argument('--out', default=None, help='per-sample JSONL (default: DIR/eval/step<N>_<data stem>.jsonl)')
  p.add_argument('--json', action='store_true', help='stdout: the summary as one JSON object only, without the table')
  args = p.parse_args(argv)
  cli.check_inference_flags(p, args)
  if args.limit < 0:
    p.error(f'--limit={args.limit}: expected a number of prompts >= 0 (0: all)')
  if args.init is not None and not args.out:
    p.error('--init needs --out (there is no run directory to write into)')
  if args.init is not None and args.tools:
    p.error('--tools needs --workdir: a model from --init is evaluated one turn, without tool calls')
  if args.init is not None and not args.grader:
    p.error('--init needs --grader (there is no run config to take it from)')
  return args


def check_out(out, label: str, data=None) -> None:
  """Both files evaluate writes (the samples, `<out>.summary.json`) can be written, and neither is --data:
  cli.check_out."""
  cli.check_out(out, label=label, inputs={'--data': data})
  cli.check_out(f'{out}.summary.json', label=f'{label}: its summary {out}.summary.json')


def _say_if_replacing(out, now: dict) -> None:
  """The default --out is named after the step and the data file's stem only: an evaluation of another file of that
  name (valid.jsonl of another folder), or with other samples or temperature, replaces the earlier one; said."""
  try:
    before = json.loads(epath.Path(f'{out}.summary.json').read_text())
  except (OSError, ValueError):
    return
  if not isinstance(before, dict):
    return
  was = before.get('data')
  differ = [k for k in now if k != 'data' and k in before and before[k] != now[k]]
  if isinstance(was, str) and (runfs.is_remote(was) or os.path.isabs(was)) and not cli.same_path(was, now['data']):
    differ.insert(0, 'data')  # (an older summary's relative path says nothing of the folder it was relative to)
  if differ:
    shown = lambda d: ', '.join(f'{k}={d[k]}' for k in differ)  # noqa: E731
    log.warning('%s held the evaluation with %s, which this one with %s replaces; give --out to keep both', out,
                shown(before), shown(now))  # fmt: skip


def _grader_id(spec: dict) -> str:
  """'name (type, 1a2b3c4d)': which grader, its content's hash telling two of one name apart."""
  digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]
  return f'{spec.get("name") or "grader"} ({spec.get("type")}, {digest})'


def _absolute(path: str) -> str:
  return path if runfs.is_remote(path) else os.path.abspath(path)


def _note_other_settings(args, run_config) -> None:
  """A line where these settings will not give the run's logged valid_reward_mean on its own validation file."""
  if run_config is None:
    return
  data = run_config.get('data') or {}
  valid, limit = data.get('valid'), int(data.get('valid_limit') or 0)
  same = isinstance(valid, str) and cli.same_path(valid, args.data)
  if same and limit and args.limit != limit:
    log.info('the run validated on the first %d prompts of %s (config.data.valid_limit): --limit=%d gives its '
             'valid_reward_mean', limit, args.data, limit)  # fmt: skip
  k = int(run_config.get('eval_samples') or 1)
  if same and k != args.samples:
    log.info('the run validated with %d sample%s a prompt at eval_temperature %s: --samples=%d gives its '
             'valid_reward_mean', k, 's' * (k > 1), run_config.get('eval_temperature'), k)  # fmt: skip


def run(args) -> dict:
  if args.out:  # before anything slow; the default (in the run, named after the step) once the step is known
    check_out(args.out, f'--out={args.out}', args.data)
  elif args.workdir:  # its folder before anything slow too: a read-only run found out only after the model loaded
    try:
      cli.check_out(epath.Path(args.workdir) / 'eval', folder=True, label=f'{args.workdir}/eval (the default --out)')
    except errors.ConfigError as e:  # a read-only copy of a run: the results may go elsewhere
      raise errors.ConfigError(f'{e}; give --out=FILE to write the results elsewhere') from None
  run_config = runfs.read_config(args.workdir) if args.workdir else None
  # a run that used the example tool server gets a new one (its own is gone)
  with tool_server.serving_for(run_config) as run_config, contextlib.ExitStack() as stack:
    return _run(args, run_config, stack)


def _run(args, run_config, stack: contextlib.ExitStack) -> dict:
  examples = data_lib.load_jsonl(args.data, '--data')[: args.limit or None]  # bad input fails before anything slow
  _note_other_settings(args, run_config)
  try:
    grader_spec, grader_at = graders.locate(args.grader or (run_config.get('grader') if run_config else None))
  except graders.GraderConfigError as e:  # a grader file the run's config.json names, from another folder?
    raise graders.GraderConfigError(
      f'{e}{"" if args.grader else loader.run_paths_note(args.workdir, e, "--grader")}'
    ) from None
  grading = run_config.grading if run_config else {}
  allow = args.allow_unsandboxed or bool(grading.get('allow_unsandboxed', False))
  graders.check_runnable(graders.build(grader_spec), allow)  # a bad field fails before the model loads
  graders.check_items(grader_spec, [(ex.source, ex.item) for ex in examples])
  graders.say_if_ignoring_sample(grader_spec)
  job, fmt = response_format.of_job(args.grader, grader_at if args.grader else None)  # as grade and training take it
  if not job:
    fmt = response_format.make(run_config.get('response_format') if run_config else None)
  steps = int(run_config.get('max_episode_steps') or 1) if run_config else 1
  if args.tools and steps == 1:
    raise errors.ConfigError(f'--tools={args.tools}: the run calls no tools (its config.max_episode_steps is 1)')
  if steps == 1:
    specs = ()
  else:
    specs = tools.load_tools(args.tools, '--tools') if args.tools else tools.load_tools(run_config.get('tools'))
  if specs:  # other data may offer fewer of the run's tools, but none it lacks
    tools.check_data_tools([(ex.source, ex.item) for ex in examples], specs, every_tool_offered=False)
    tools.check_env(specs, '--tools' if args.tools else 'config.tools')
  ids = []  # encoded once the tokenizer is there, before the weights load: a bad prompt fails first
  data_config = (run_config.get('data') or {}) if run_config else {}
  limit, skip = data_config.get('max_prompt_len'), bool(data_config.get('skip_long_prompts'))

  def encode(config, tok):
    encoded = data_lib.encode_prompts(examples, tok, limit if skip else None, response_format=fmt, skip_long=skip)
    if skip:  # as the run's validation left them out: the same data gives its valid_reward_mean
      examples[:], encoded = data_lib.fitting(examples, encoded, '--data')
    longer = [len(p) for p in encoded if limit and len(p) > limit]
    if longer:
      log.warning(
        "--data: %d prompt%s longer than the run's config.data.max_prompt_len=%d (the longest %d tokens): it "
        'trained on none this long; evaluated all the same', len(longer), ' is' if len(longer) == 1 else 's are',
        limit, max(longer),
      )  # fmt: skip
    ids.extend(encoded)

  loaded = sample_cli.load_from_args(args, before=encode)
  out = epath.Path(args.out) if args.out else default_out(args.workdir, loaded.step, args.data)
  if not args.out:
    check_out(out, f'{out} (the default --out)')
  grader = graders.build(grader_spec, judges=inference.local_judges(grader_spec))
  k = args.samples
  if args.temperature is not None:
    temperature = args.temperature
  elif run_config is not None and k == int(run_config.get('eval_samples') or 1):  # as the run's validation sampled
    temperature = float(run_config.get('eval_temperature') or 0.0)
  else:
    temperature = 0.0 if k == 1 else 1.0
  grader_id = _grader_id(grader_spec)
  if not args.out:
    _say_if_replacing(out, {'data': str(args.data), 'samples_per_prompt': k, 'temperature': temperature,
                            'limit': args.limit, 'grader': grader_id})  # fmt: skip
  max_new = sample_cli.max_new_tokens(args, loaded)
  threshold = args.pass_threshold if args.pass_threshold is not None else float(grader_spec.get('pass_threshold', 1.0))
  ids = [p for p in ids for _ in range(k)]
  items = [ex.item for ex in examples for _ in range(k)]
  sampler = inference.make_sampler(
    loaded, ids, max_new_tokens=max_new, temperature=temperature, top_p=args.top_p, top_k=args.top_k, stop=args.stop,
    group_size=k,  # k copies of each prompt in a row: one prefill each, and the program the run's validation ran
  )  # fmt: skip
  chosen = sampler.params  # the top_p and top_k it samples with: the flags', else the run's
  if steps > 1:  # the run's episodes: the same tools, turns and room for tool outputs (docs/tools.md)
    width = int(run_config.sampling.tool_tokens)
    slots = episodes.context_len(sampler.max_prompt_len, max_new, steps, width)
    client = stack.enter_context(tools.ToolClient(specs, timeout_s=float(run_config.tool_timeout_s))) if specs else None
    sampler = episodes.Agent(dataclasses.replace(sampler, context_len=slots), loaded.tokenizer, client, steps, width)
  if args.seed is None and run_config is not None and loaded.step is not None:
    # the run's validation's key at that step: the same samples at its temperature and batch size, and the same
    # episode trace ids (what a tool or endpoint grader keyed by trace answers by)
    rng = inference.validation_rng(int(run_config.get('seed') or 0), loaded.step)
  else:
    rng = jax.random.key(args.seed or 0)
  # the run's deadline, memory and judge concurrency hold here too; a validation has no step budget
  pool = graders.GradingPool.from_config(grading, fmt, num_workers=args.num_workers or None, budget_s=None,
                                         allow_unsandboxed=allow)  # fmt: skip
  with pool:
    graded = inference.evaluate(
      sampler,
      loaded.params,
      ids,
      items,
      loaded.tokenizer,
      grader,
      pool,
      mesh=loaded.mesh,
      batch_size=sample_cli.batch_size(args, loaded),
      rng=rng,
      progress=cli.progress('sampling'),
    )
  results = [r for _, r in graded]
  transcripts = [o.get('transcript') for o, _ in graded]
  rewards = np.asarray([r.reward for r in results], np.float64).reshape(len(examples), k)
  summary = {
    **({'step': loaded.step} if loaded.step is not None else {}),  # an --init model has no step
    'data': _absolute(args.data),  # from any folder
    'temperature': temperature,
    'pass_threshold': threshold,
    # what was measured, so that the file says it alone: the model, the grader, the sampling
    'model': {'workdir': _absolute(args.workdir)} if args.workdir else {'init': args.init, 'preset': loaded.cfg.name},
    'grader': grader_id,
    'max_new_tokens': max_new,
    'top_p': float(chosen.top_p),
    'top_k': int(chosen.top_k),
    'limit': args.limit,
    'evaluated_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    **summarize(rewards, results, threshold),
    **episodes.metrics(transcripts, tools=sampler.tools),
  }
  rows = [
    inference.graded_row(
      examples[i // k], i % k, o, r, passed=bool(r.reward >= threshold and not r.metadata.get('discard'))
    )
    for i, (o, r) in enumerate(graded)
  ]
  summary_file = out.with_name(out.name + '.summary.json')

  def keep():  # the summary last, and an earlier one gone first: a stop between the two files
    try:  # leaves no new samples beside an old summary
      summary_file.unlink(missing_ok=True)
    except OSError as e:  # a folder of that name: the work is done, its result cannot be kept
      raise errors.OutputError(f'{summary_file}: cannot replace it ({e.strerror or e}); nothing was written') from None
    sample_cli.write_out(out, rows)
    try:
      data_lib.write_text(summary_file, json.dumps(summary, indent=2) + '\n')
    except OSError as e:
      raise errors.OutputError(
        f'{summary_file}: cannot write it ({e.strerror or e}); the samples are in {out}'
      ) from None

  multihost.on_process_0(keep)  # process 0 writes; a failure is every host's (exit 1)
  summary['out'] = str(out)
  failed = graders.all_failed(results)
  if failed:  # a summary of zeros that only mean the grader could not run
    raise graders.GradingFailed(f'{failed}; the samples and the summary are in {out}', [])
  share = float(run_config.get('tools_max_error_share', 0.5)) if steps > 1 else 1.0
  broken = tools.failure_line(episodes.record_calls(transcripts), share)
  if broken:  # rewards earned against tool errors measure the outage, not the model
    raise tools.ToolsFailed(f'{broken}; the samples and the summary are in {out}')
  return summary


def main(argv=None) -> int:
  """Returns the exit status: 0; 1 when every grading failed, too many tool calls did, or --out could not be
  written after the work; 2 for a bad input (argparse errors raise SystemExit(2)); the reason on stderr."""
  args = parse_args(argv)

  def body() -> int:
    try:
      summary = run(args)
    except (graders.GradingFailed, tools.ToolsFailed) as e:
      print(f'error: {e}', file=sys.stderr)
      return 1
    if jax.process_index() == 0:
      if not args.json:  # (a script reads the JSON line: `| jq` wants it alone)
        print(table({k: v for k, v in summary.items() if k != 'out'}))
      print(f'samples written to {summary["out"]}', file=sys.stderr)
      n = int(summary.get('eval/num_graded') or 0)
      failed, out = round(float(summary.get('eval/error_rate') or 0.0) * n), int(summary.get('eval/num_discarded') or 0)
      if failed:  # too few to fail the command; said where a person reads, as grade says it
        fate = 'count as 0 in reward_mean' if not out else f'{out} left without a verdict are out of reward_mean, ' \
          'the others count as 0'  # fmt: skip
        print(f"note: {failed} of {n} gradings failed ({fate}); each one's error is in {summary['out']}",
              file=sys.stderr)  # fmt: skip
      print(json.dumps(summary))
    return 0

  return cli.run(body)


if __name__ == '__main__':
  cli.command(main)
