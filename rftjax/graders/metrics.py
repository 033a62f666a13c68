"""Turning a batch of GradeResults into logged scalars, and failing loudly when too many gradings failed."""

from __future__ import annotations

import collections
import re
from typing import Sequence

from rftjax.graders import core


class GradingFailed(RuntimeError):
  """More than the allowed share of a batch failed; `.errors` holds every (index, GradeError)."""

  def __init__(self, message: str, errors: list[tuple[int, core.GradeError]]):
    super().__init__(message)
    self.errors = errors


def reward_stderr(results: Sequence[core.GradeResult], k: int = 1) -> float | None:
  """The standard error of a mean reward over prompts, `results` being k consecutive samples of each: the spread of
  the per-prompt means (over the results with a verdict) over sqrt(prompts). The k samples of one prompt are not k
  independent answers: counted as such, the error of an eval_samples=4 validation read about half its size. None
  with fewer than 2 prompts that have a verdict."""
  means = []
  for start in range(0, len(results), k):
    kept = [r.reward for r in results[start : start + k] if not (r.metadata or {}).get('discard')]
    means += [sum(kept) / len(kept)] if kept else []
  n = len(means)
  if n < 2:
    return None
  mean = sum(means) / n
  return (sum((m - mean) ** 2 for m in means) / (n - 1) / n) ** 0.5


def summarize(results: Sequence[core.GradeResult], prefix: str = 'train') -> dict[str, float]:
  """Scalars for the metrics writer.

  {prefix}_reward_mean, {prefix}/grader/<name> (mean of each multi sub-grader over the results not discarded, as the
  reward's: 0 where it has none, a response-format miss), {prefix}/num_discarded (results an outage of a judge or
  endpoint, the step's grading budget, or a tool's (rollout.Rollout.graded) left without a verdict:
  metadata["discard"]; a 0 there says nothing of the
  completion, so they are left out of those means as they are out of the loss), {prefix}/errors/<category>
  (share of gradings with at least one error of that category, every category present, 0 when none),
  {prefix}/error_rate, {prefix}/grading_latency_s_mean and _max (over results that report a latency: sandbox
  and model graders), {prefix}/num_graded, and with a response format {prefix}/response_format_valid (the share of
  completions that matched it).
  """
  n = len(results)
  kept = [r for r in results if not (r.metadata or {}).get('discard')]
  out: dict[str, float] = {
    f'{prefix}_reward_mean': sum(r.reward for r in kept) / len(kept) if kept else 0.0,
    f'{prefix}/num_graded': float(n),
    f'{prefix}/num_discarded': float(n - len(kept)),
  }
  sub_sum: dict[str, float] = collections.defaultdict(float)
  errors = collections.Counter()
  any_error = 0
  latencies = []
  for r in kept:
    for name, value in r.sub_rewards.items():
      sub_sum[name] += value
  for r in results:
    if r.errors:
      any_error += 1
      for category in {e.category for e in r.errors}:
        errors[category] += 1
    lat = r.metadata.get('latency_s') if r.metadata else None
    if lat is None and r.metadata:
      subs = [m.get('latency_s') for m in r.metadata.values() if isinstance(m, dict) and 'latency_s' in m]
      lat = max(subs) if subs else None
    if lat is not None:
      latencies.append(float(lat))
  for name in {name: None for r in results for name in r.sub_rewards}:  # every host names the same sub-graders
    out[f'{prefix}/grader/{name}'] = sub_sum[name] / len(kept) if kept else 0.0
  for category in core.CATEGORIES:
    out[f'{prefix}/errors/{category}'] = errors[category] / n if n else 0.0
  out[f'{prefix}/error_rate'] = any_error / n if n else 0.0
  checked = [r.metadata['response_format_valid'] for r in results if 'response_format_valid' in (r.metadata or {})]
  if checked:
    out[f'{prefix}/response_format_valid'] = sum(checked) / len(checked)
  if latencies:
    out[f'{prefix}/grading_latency_s_mean'] = sum(latencies) / len(latencies)
    out[f'{prefix}/grading_latency_s_max'] = max(latencies)
  return out


def all_failed(results: Sequence[core.GradeResult]) -> str | None:
  """None, or a one-line account when every grading failed: 'all 16 gradings failed: python_grader_runtime in 16,
  e.g. ZeroDivisionError: division by zero (grader boom, line 2)'. The rewards are zeros that mean nothing, or, for
  a multi grader whose other sub-graders ran, scores that count the failed part as 0: that is said."""
  if not results or not all(r.errors for r in results):
    return None
  ran = any(len(r.sub_rewards) > len(r.errors) for r in results)  # a multi's sub-grader that did not fail
  partial = ' (in part: the rewards count what failed as 0)' if ran else ''
  return f'all {len(results)} gradings failed{partial}: {what_failed(results)}'


def check_failures(results: Sequence[core.GradeResult], max_error_share: float = 0.5, grader=None) -> None:
  """Raises GradingFailed when the share of results with an error exceeds `max_error_share`. Its message is one
  line: the share, the grader, the most common error category and one message of that category."""
  failed = [(i, e) for i, r in enumerate(results) for e in r.errors]
  bad = sum(1 for r in results if r.errors)
  if not results or bad / len(results) <= max_error_share:
    return
  raise GradingFailed(failure_line(results, max_error_share, grader), failed)


def failure_line(results: Sequence[core.GradeResult], max_error_share: float, grader=None) -> str:
  """'12 of 16 gradings failed (75% > grading.max_error_share=50%): grader 'x' (python), python_grader_runtime
  in 12, e.g. ZeroDivisionError: division by zero'."""
  bad = sum(1 for r in results if r.errors)
  who = f'grader {grader.name!r} ({grader.type}), ' if grader is not None else ''
  over = '>' if bad > max_error_share * len(results) else '<='
  return (
    f'{bad} of {len(results)} gradings failed ({bad / len(results):.0%} {over} grading.max_error_share='
    f'{max_error_share:.0%}): {who}{what_failed(results)}'
  )


def what_failed(results: Sequence[core.GradeResult]) -> str:
  """'python_grader_runtime in 12, e.g. ZeroDivisionError: division by zero (also: other in 1)' for results of
  which at least one failed."""
  counts = collections.Counter(e.category for r in results for e in r.errors)
  category, n = counts.most_common(1)[0]
  example = next(e.message for r in results for e in r.errors if e.category == category)
  lines = [ln.strip() for ln in example.strip().splitlines() if ln.strip()] or ['(no message)']
  frames = re.findall(r'File "<grader ([^"]*)>", line (\d+)', example)  # a python grader's own code: where
  at = f' (grader {frames[-1][0]}, line {frames[-1][1]})' if frames else ''
  others = f' (also: {", ".join(f"{c} in {k}" for c, k in counts.most_common()[1:])})' if len(counts) > 1 else ''
  return f'{category} in {n}, e.g. {lines[-1][:300]}{at}{others}'
