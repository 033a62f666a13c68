"""OpenAI-style `{{sample.output_text}}` / `{{item.a.b[0]}}` templates, compiled once per grader.

A template is split into literal text and variable paths at build time; rendering only walks the paths.
A path that does not resolve raises `GradingException(invalid_variable)`; `sample.output_json` on a text that
is not JSON raises `GradingException(sample_parse)`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from rftjax import errors
from rftjax.graders import core

_VAR = re.compile(r'\{\{\s*(.*?)\s*\}\}')
_PATH = re.compile(r"^(sample|item)((?:\.[^\W\d][\w\-]*|\[\d+\]|\[\"[^\"]*\"\]|\['[^']*'\])*)$")
_UNCLOSED = re.compile(r'\{\{\s*[^{}]{0,80}')  # '{{item.answer}': an opening pair that no closing pair follows
_SINGLE = re.compile(r'(?<!\{)\{\s*(?:sample|item)\.[^\W\d][^{}]{0,80}\}+')  # '{item.answer}}', '{item.answer}'
_STEP = re.compile(r"\.([^\W\d][\w\-]*)|\[(\d+)\]|\[\"([^\"]*)\"\]|\['([^']*)'\]")


def parse_path(expr: str, field: str) -> tuple[str, tuple[str | int, ...]]:
  m = _PATH.match(expr)
  if not m:
    raise core.GraderConfigError(
      f'{field}: template variable {{{{{expr}}}}} is not a path; expected sample.<field>... or item.<field>... '
      'with .name and [index] steps, e.g. {{item.answers[0]}} (a field named otherwise: {{item["the field"]}})'
    )
  steps: list[str | int] = []
  for name, idx, dq, sq in _STEP.findall(m.group(2)):
    steps.append(int(idx) if idx else (name or dq or sq))
  return m.group(1), tuple(steps)


def lookup(root: str, steps: tuple[str | int, ...], sample: dict, item: dict) -> Any:
  value: Any = sample if root == 'sample' else item
  if root == 'sample' and steps and steps[0] == 'output_json' and value.get('output_json') is None:
    raise core.GradingException(
      core.SAMPLE_PARSE,
      'template uses sample.output_json but the sample text is not '
      f'a JSON object or array: {str(value.get("output_text"))[:200]!r}',
    )
  walked = root
  for step in steps:
    try:
      if isinstance(step, int) and isinstance(value, (list, tuple)):
        value = value[step]
      elif isinstance(step, str) and isinstance(value, dict):
        value = value[step]
      else:
        raise KeyError(step)
    except (KeyError, IndexError):
      raise core.GradingException(
        core.INVALID_VARIABLE,
        f'template variable {{{{{root}{_fmt(steps)}}}}}: {walked} has no '
        f'{"index" if isinstance(step, int) else "key"} {step!r}',
      ) from None
    walked += f'[{step}]' if isinstance(step, int) else f'.{step}'
  return value


def _fmt(steps) -> str:
  return ''.join(f'[{s}]' if isinstance(s, int) else f'.{s}' for s in steps)


def to_text(value: Any) -> str:
  if isinstance(value, str):
    return value
  return json.dumps(value, ensure_ascii=False)


def compile_template(template: Any, field: str) -> Callable[[dict, dict], str]:
  """Returns render(sample, item) -> str. Plain strings without variables render to themselves."""
  if not isinstance(template, str):
    raise core.GraderConfigError(f'{field}: expected a string (template), found {type(template).__name__}')
  parts: list[Any] = []
  pos = 0
  for m in _VAR.finditer(template):
    if m.start() > pos:
      parts.append(template[pos : m.start()])
    root, steps = parse_path(m.group(1), field)
    if root == 'sample' and steps and steps[0] not in core.SAMPLE_FIELDS:  # a typo would fail every grading
      raise core.GraderConfigError(
        f'{field}: template variable {m.group(0)}: the sample has no field {steps[0]!r}; expected one of '
        f'{", ".join(core.SAMPLE_FIELDS)}{errors.did_you_mean(str(steps[0]), core.SAMPLE_FIELDS, "sample.")}'
      )
    parts.append((root, steps))
    pos = m.end()
  if pos < len(template):
    parts.append(template[pos:])
  for text in (p for p in parts if isinstance(p, str)):  # left as literal text, the variable would never match
    bad = _UNCLOSED.search(text) or _SINGLE.search(text)
    if bad:
      raise core.GraderConfigError(
        f'{field}: {bad.group(0)!r} in {template[:200]!r} is not a template variable; expected {{{{sample.<field>}}}} '
        'or {{item.<field>}} with two braces on each side'
      )
  if not parts:
    return lambda sample, item: ''
  if len(parts) == 1 and isinstance(parts[0], str):
    text = parts[0]
    return lambda sample, item: text
  if len(parts) == 1:
    root, steps = parts[0]
    if root == 'sample' and steps == ('output_text',):  # the hot path of string_check
      return lambda sample, item: sample['output_text']
    return lambda sample, item: to_text(lookup(root, steps, sample, item))

  def render(sample: dict, item: dict) -> str:
    return ''.join(p if isinstance(p, str) else to_text(lookup(p[0], p[1], sample, item)) for p in parts)

  return render


def uses_json(template: Any) -> bool:
  return isinstance(template, str) and 'output_json' in template
