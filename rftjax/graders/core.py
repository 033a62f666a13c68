"""Results, errors and the grader base class shared by every grader type.

A grading never raises into the trainer: it ends as a `GradeResult` whose `reward` is 0 and whose `errors`
name one of OpenAI's categories. `GraderConfigError` is the one exception users see, at build time.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from rftjax import errors
from rftjax import tools

# OpenAI's reinforcement fine-tuning error categories (the `*_error` metrics of a fine-tuning job), and rftjax's own
# in their pattern: python_grader_timeout, endpoint_grader.
SAMPLE_PARSE = 'sample_parse'
INVALID_VARIABLE = 'invalid_variable'
FORMULA_PARSE = 'formula_parse'
PYTHON_RUNTIME = 'python_grader_runtime'
PYTHON_TIMEOUT = 'python_grader_timeout'
MODEL_PARSE = 'model_grader_parse'
MODEL_SERVER = 'model_grader_server'
OTHER = 'other'
# rftjax's: an `endpoint` grader's server failed or answered something other than a score.
ENDPOINT = 'endpoint_grader'
CATEGORIES = (
  SAMPLE_PARSE,
  INVALID_VARIABLE,
  FORMULA_PARSE,
  PYTHON_RUNTIME,
  PYTHON_TIMEOUT,
  MODEL_PARSE,
  MODEL_SERVER,
  OTHER,
  ENDPOINT,
)


class GraderConfigError(errors.UserError):
  """A grader spec is invalid; the message names the field, what was found and what was expected."""


@dataclasses.dataclass(frozen=True, slots=True)
class GradeError:
  category: str  # one of CATEGORIES
  message: str  # human readable; for runtime errors the traceback of the failure


@dataclasses.dataclass(frozen=True, slots=True)
class GradeResult:
  """One sample's grade.

  `reward` is the grader's own score: string_check, text_similarity, math, code, label_model and python give
  values in [0, 1] (a python score outside it is clamped, with a python_grader_runtime error naming the value);
  score_model gives a value inside its `range` (default [0, 1]); endpoint gives its server's score as it came;
  multi gives the value of `calculate_output`. A failed grading has reward 0. metadata["discard"] is True when the
  grading failed for reasons outside the sample (an endpoint grader's server stayed down, also inside a multi):
  such a rollout is left out of the loss rather than scored 0.
  """

  reward: float
  sub_rewards: dict[str, float] = dataclasses.field(default_factory=dict)
  errors: tuple[GradeError, ...] = ()
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return {
      'reward': self.reward,
      'sub_rewards': dict(self.sub_rewards),
      'errors': [{'category': e.category, 'message': e.message} for e in self.errors],
      'metadata': dict(self.metadata),
    }

  def notes(self) -> dict[str, Any]:
    """The metadata a samples file keeps for whoever reads a grade: what a grader printed (`stdout`), a code
    grader's `failures`, a judge's score or label, ... (a multi's per sub-grader); not timings, nor what has a
    field of its own (`response_format_error`)."""
    drop = ('latency_s', 'response_format_error', 'response_format_valid')
    out = {}
    for k, v in self.metadata.items():
      v = {kk: vv for kk, vv in v.items() if kk not in drop} if isinstance(v, dict) else v
      if k not in drop and v != {}:
        out[k] = v
    return out

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> GradeResult:
    """The inverse of `to_json` (results travel between hosts as JSON)."""
    errs = tuple(GradeError(e['category'], e['message']) for e in d['errors'])
    return cls(d['reward'], dict(d['sub_rewards']), errs, dict(d['metadata']))


def failed(category: str, message: str, **metadata: Any) -> GradeResult:
  return GradeResult(0.0, {}, (GradeError(category, message),), metadata)


class GradingException(Exception):
  """Raised inside a grader to end one grading with a named error category."""

  def __init__(self, category: str, message: str):
    super().__init__(message)
    self.category = category


# How a grader runs: in the calling process (cheap and trusted), in a sandboxed worker process (user code,
# sympy), or on a thread in the calling process (network-bound model judges).
INLINE, SANDBOX, MODEL = 'inline', 'sandbox', 'model'


class Grader:
  """Base class. Subclasses set `type`, `name`, `mode` and implement one of the grading hooks."""

  type: str = ''
  name: str = ''
  mode: str = INLINE
  # MODEL graders only: True when `grade_one` takes a fourth argument, the sample's trace id (the episode's id,
  # shared with its tool calls), which the pool passes on from `GradingPool.grade(..., traces=)`.
  wants_trace: bool = False
  spec: dict[str, Any]

  def grade_batch(self, samples: list[str], items: list[dict]) -> list[GradeResult]:
    """INLINE and MODEL graders: grade in this process (MODEL graders are called per sample on threads)."""
    raise NotImplementedError

  def worker_spec(self) -> dict[str, Any]:
    """SANDBOX graders: the JSON task description a worker process loads once per chunk."""
    raise NotImplementedError

  def __repr__(self) -> str:
    return f'{type(self).__name__}(name={self.name!r}, spec={json.dumps(self.spec)[:200]})'


SAMPLE_FIELDS = ('output_text', 'output_json', 'output_tools', 'choices')


def sample_dict(text: str, parse_json: bool = True) -> dict[str, Any]:
  """The sample a grader sees, as OpenAI's graders see one: `output_text`; `output_json` when the text parses as
  JSON (and `parse_json`: graders whose templates never read it skip the parse); `output_tools`, the text's
  well-formed `<tool_call>` blocks as chat-completions `tool_calls` (`{"id", "type": "function", "function": {"name",
  "arguments": JSON string}}`); `choices`, the one choice `{"index": 0, "message": {"role": "assistant", "content":
  text[, "tool_calls"]}}`. In an episode the text is its last turn (docs/tools.md): calls that were run are in its
  transcript, not here. The text keeps its tool-call blocks (OpenAI's `output_text` would not hold them)."""
  sample: dict[str, Any] = {'output_text': text, 'output_json': None, 'output_tools': []}
  stripped = text.strip()
  if parse_json and stripped[:1] in ('{', '['):
    try:
      sample['output_json'] = errors.loads_untrusted(stripped)
    except ValueError:
      pass
  if '<tool_call>' in text:
    sample['output_tools'] = [
      {'id': f'call_{i}', 'type': 'function', 'function': {'name': c.name, 'arguments': c.arguments}}
      for i, c in enumerate(c for c in tools.parse_calls(text) if c.error is None)
    ]
  message = {'role': 'assistant', 'content': text}
  if sample['output_tools']:
    message['tool_calls'] = sample['output_tools']
  sample['choices'] = [{'index': 0, 'message': message}]
  return sample
