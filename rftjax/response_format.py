"""OpenAI's `response_format` for reinforcement fine-tuning: completions that must be JSON matching a schema.

  {"type": "json_schema", "json_schema": {"name": "answer", "schema": {...JSON Schema...}, "strict": true}}

OpenAI enforces the schema while decoding; rftjax samples freely and checks afterwards, which also teaches the
format: the schema and an instruction are appended to each prompt's last user message (`instruct`), every
completion is parsed and validated (`ResponseFormat.validate`, with `jsonschema`), a completion that fails scores 0
without being graded (its reason in `metadata.response_format_error`; it is the model's miss, not a grader error,
so it never stops a run), and the graders see `sample.output_json` only for completions that passed. Metrics:
`{prefix}/response_format_valid`, the share that passed. config: `response_format` (a dict, a JSON file path, or
None); an OpenAI job's `method.reinforcement.response_format`. docs/openai_jobs.md.
"""

from __future__ import annotations

import collections
import datetime
import functools
import json
import re
from typing import Any

import jsonschema

from rftjax import errors

INSTRUCTION = 'Reply with a JSON object only, no other text, that matches this JSON Schema'

# The string formats OpenAI's structured outputs enforce. jsonschema checks "format" only with a checker, and checks
# date-time, time, duration and hostname only with optional packages: those four are checked here.
FORMATS = ('date-time', 'time', 'date', 'duration', 'email', 'hostname', 'ipv4', 'ipv6', 'uuid')
_DURATION = re.compile(r'P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?')
_HOSTNAME = re.compile(r'(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*')
_TIME = r'\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})'


def _format_checker() -> jsonschema.FormatChecker:
  checker = jsonschema.FormatChecker([f for f in FORMATS if f in jsonschema.FormatChecker.checkers])
  for name, pattern in (
    ('date-time', rf'\d{{4}}-\d{{2}}-\d{{2}}[Tt ]{_TIME}'),
    ('time', _TIME),
    ('duration', _DURATION.pattern),
    ('hostname', _HOSTNAME.pattern),
  ):
    checker.checks(name, raises=ValueError)(functools.partial(_matches, re.compile(pattern), name))
  return checker


def _matches(pattern: re.Pattern, name: str, value) -> bool:
  if not isinstance(value, str):
    return True  # "format" constrains strings only
  if not pattern.fullmatch(value):
    return False
  if name == 'date-time':  # the digits must also be a real date and time (no 2026-02-30, no 25:00)
    datetime.datetime.fromisoformat(value.replace('z', 'Z').replace('t', 'T'))
  elif name == 'time':
    datetime.time.fromisoformat(value.upper())
  return True


def _no_constants(name: str):
  raise ValueError(f'{name} is not JSON')  # Python's json reads NaN and Infinity; no JSON parser or schema does


def _fail(where: str, found, expected: str):
  raise errors.ConfigError(f'{where}: found {json.dumps(found)[:80]}, expected {expected}')


def load(spec: Any, where: str = 'config.response_format') -> dict | None:
  """The spec as a dict (from a dict, a ConfigDict or a JSON file path), checked; None when there is none."""
  if spec is None or spec == '' or spec == {}:
    return None
  spec = errors.plain(spec)
  if isinstance(spec, str):
    spec = errors.read_json_file(spec, errors.ConfigError, f'{where}={spec!r}')
  check(spec, where)
  return spec


def check(spec: Any, where: str) -> None:
  """Raises ConfigError naming the field: the OpenAI shape, and a schema that is itself valid JSON Schema."""
  if not isinstance(spec, dict):
    _fail(where, spec, 'an object {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}')
  unknown = set(spec) - {'type', 'json_schema'}
  if unknown:
    raise errors.ConfigError(f'{where}.{sorted(unknown)[0]}: unknown field; known: type, json_schema')
  if spec.get('type') != 'json_schema':
    _fail(f'{where}.type', spec.get('type'), '"json_schema" (the one type reinforcement fine-tuning takes)')
  body = spec.get('json_schema')
  if not isinstance(body, dict):
    _fail(f'{where}.json_schema', body, 'an object with "name" and "schema"')
  unknown = set(body) - {'name', 'schema', 'strict', 'description'}
  if unknown:
    raise errors.ConfigError(
      f'{where}.json_schema.{sorted(unknown)[0]}: unknown field; known: name, schema, strict, description'
    )
  if not isinstance(body.get('name'), str) or not re.fullmatch(r'[A-Za-z0-9_-]{1,64}', body['name']):
    _fail(f'{where}.json_schema.name', body.get('name'), "1-64 of a-z, A-Z, 0-9, '_' and '-' (OpenAI's rule)")
  if not isinstance(body.get('schema'), dict):
    _fail(f'{where}.json_schema.schema', body.get('schema'), 'a JSON Schema object')
  if body.get('strict') is not None and not isinstance(body['strict'], bool):  # the SDKs write null for unset
    _fail(f'{where}.json_schema.strict', body.get('strict'), 'true, false or null')
  if body.get('description') is not None and not isinstance(body['description'], str):
    _fail(f'{where}.json_schema.description', body.get('description'), 'a string')
  try:
    jsonschema.validators.validator_for(body['schema']).check_schema(body['schema'])
  except jsonschema.SchemaError as e:
    path = ''.join(f'[{p}]' if isinstance(p, int) else f'.{p}' for p in e.path)
    raise errors.ConfigError(f'{where}.json_schema.schema{path}: not a valid JSON Schema: {e.message}') from None


class ResponseFormat:
  """A checked spec, ready to validate completions."""

  def __init__(self, spec: dict):
    self.spec = spec
    self.name = spec['json_schema']['name']
    self.description = spec['json_schema'].get('description') or ''
    self.schema = spec['json_schema']['schema']
    self._validator = jsonschema.validators.validator_for(self.schema)(self.schema, format_checker=_format_checker())

  def instruction(self) -> str:
    """What joins the prompt: OpenAI says the model reads the format's description to know how to respond."""
    what = f'"{self.name}": {self.description}' if self.description else f'"{self.name}"'
    return f'{INSTRUCTION} ({what}):\n{json.dumps(self.schema, ensure_ascii=False)}'

  def validate(self, text: str) -> str | None:
    """None when `text` is JSON matching the schema, parsed the way graders parse `sample.output_json` (the whole
    text, stripped); else a one-line reason."""
    stripped = text.strip()
    if stripped[:1] not in ('{', '['):  # graders' sample.output_json is only ever an object or an array
      return f'not a JSON object or array: {stripped[:80]!r}'
    try:
      value = errors.loads_untrusted(stripped, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
      return f'not JSON ({e.msg} at line {e.lineno}, column {e.colno}): {stripped[:80]!r}'
    except ValueError as e:
      return f'not JSON ({e}): {stripped[:80]!r}'
    error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
    if error is None:
      return None
    at = '/'.join(str(p) for p in error.absolute_path) or '(top level)'
    return f'does not match the schema {self.name!r} at {at}: {error.message[:200]}'


def make(spec: Any, where: str = 'config') -> ResponseFormat | None:
  """where: the object holding `response_format`, which errors name (a job file's 'method.reinforcement')."""
  spec = load(spec, f'{where}.response_format')
  return None if spec is None else ResponseFormat(spec)


def of_job(grader_file: Any, grader_at: str | None, flag: str = '--grader') -> tuple[bool, ResponseFormat | None]:
  """(whether `grader_file` is an OpenAI job file, its response format or None): a job states its task whole, so
  `rftjax.grade` and `rftjax.evaluate` given one check and ask for its format as training does. `grader_at`: where
  `graders.locate` found the grader in the file."""
  if grader_at != 'method.reinforcement.grader':
    return False, None
  job = errors.read_json_file(grader_file, errors.ConfigError, f'{flag}={grader_file}')
  return True, make(job['method']['reinforcement'].get('response_format'), 'method.reinforcement')


def instruct(messages: list[dict], fmt: ResponseFormat | None) -> list[dict]:
  """The conversation with the schema instruction appended to its last user message (every chat template has one:
  a system message is not, Gemma's has no system role)."""
  if fmt is None:
    return messages
  out = [dict(m) for m in messages]
  last = max(i for i, m in enumerate(out) if m['role'] == 'user')
  out[last]['content'] = f'{out[last]["content"]}\n\n{fmt.instruction()}'
  return out


def none_matched(results: list, where: str) -> str | None:
  """A line saying that none of `results` (GradeResults of a pool with a format) matched it, or None. `where`: whose
  completions ('step 3', 'validation at step 0'). Every completion then scores 0 ungraded and the group advantages
  are all 0: the run learns nothing, neither the format nor the task, and nothing else says so."""
  checked = [r.metadata for r in results if 'response_format_valid' in (r.metadata or {})]
  if not checked or any(m['response_format_valid'] for m in checked):
    return None
  kind = lambda m: re.split(r'[:(]', m['response_format_error'])[0].strip()  # noqa: E731  ('not JSON (...)')
  why = collections.Counter(map(kind, checked)).most_common(1)[0][0]
  example = next(m['response_format_error'] for m in checked if m['response_format_error'].startswith(why))
  return (
    f'{where}: none of the {len(checked)} completions matched config.response_format (most: {why}; e.g. '
    f'{example[:160]}), so each scored 0 ungraded and nothing is learned, the format included. Show the reply '
    'format by example in the prompts (a system or user message), or start from a model that follows JSON '
    'instructions; the samples files have the completions'
  )
