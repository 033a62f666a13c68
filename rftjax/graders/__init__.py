"""Graders: OpenAI-compatible grader specs (plus `math` and `code`), a sandboxed parallel pool, metrics.

  g = graders.build(spec)                      # dict or JSON path; GraderConfigError names the bad field
  with graders.GradingPool(timeout_s=10) as pool:
    results = pool.grade(g, samples, items)    # or pool.submit(...) -> Future; traces= for endpoint graders
  graders.summarize(results, prefix="train"); graders.check_failures(results, max_error_share=0.5)
See docs/graders.md.
"""

from rftjax.graders.core import CATEGORIES
from rftjax.graders.core import GradeError
from rftjax.graders.core import GradeResult
from rftjax.graders.core import Grader
from rftjax.graders.core import GraderConfigError
from rftjax.graders.metrics import GradingFailed
from rftjax.graders.metrics import all_failed
from rftjax.graders.metrics import what_failed
from rftjax.graders.metrics import check_failures
from rftjax.graders.metrics import failure_line
from rftjax.graders.metrics import reward_stderr
from rftjax.graders.metrics import summarize
from rftjax.graders.model_graders import http_judge
from rftjax.graders.pool import GradingPool
from rftjax.graders.pool import check_runnable
from rftjax.graders.pool import check_sandbox
from rftjax.graders.spec import TYPES
from rftjax.graders.spec import build
from rftjax.graders.spec import check_items
from rftjax.graders.spec import ignoring_sample
from rftjax.graders.spec import say_if_ignoring_sample
from rftjax.graders.spec import load
from rftjax.graders.spec import locate
from rftjax.graders.spec import local_models
from rftjax.graders.spec import relative_judges
from rftjax.graders.spec import validate

__all__ = [
  'CATEGORIES',
  'GradeError',
  'GradeResult',
  'Grader',
  'GraderConfigError',
  'GradingFailed',
  'all_failed',
  'what_failed',
  'check_failures',
  'check_runnable',
  'check_sandbox',
  'failure_line',
  'reward_stderr',
  'summarize',
  'http_judge',
  'GradingPool',
  'TYPES',
  'build',
  'check_items',
  'ignoring_sample',
  'say_if_ignoring_sample',
  'load',
  'locate',
  'local_models',
  'relative_judges',
  'validate',
]
