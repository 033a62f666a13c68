"""Graders that run in the sandbox worker: `python` (user code), `math` (sympy) and `code` (model code + tests).

The parent side only renders templates and packs JSON tasks; `sandbox_worker.py` does the grading.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.machinery
import importlib.util
import json
import pathlib
import re
import subprocess
import sys
from typing import Any

from rftjax.graders import core
from rftjax.graders import templating

MAX_SOURCE_BYTES = 256 * 1024  # OpenAI's limit on a python grader's source


def _key(spec: dict) -> str:
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


class _Sandboxed(core.Grader):
  mode = core.SANDBOX

  def sandbox_tasks(self, samples: list[str], items: list[dict]):
    """-> ([(index, args), ...] for the worker, {index: GradeResult} for samples that failed before it)."""
    tasks, early = [], {}
    for i, (text, item) in enumerate(zip(samples, items)):
      try:
        tasks.append((i, self.task_args(text, item)))
      except core.GradingException as e:
        early[i] = core.failed(e.category, str(e))
    return tasks, early

  def task_args(self, text: str, item: dict) -> list:
    raise NotImplementedError


class PythonGrader(_Sandboxed):
  """`source` defines grade(sample, item) -> float; run in a worker with OpenAI's limits."""

  type = 'python'

  def __init__(self, spec: dict[str, Any], name: str, where: str | None = None):
    self.spec, self.name = spec, name
    where = where or name  # errors name the field's place in the spec
    check_source(spec['source'], f'{where}.source')

  def worker_spec(self):
    """Built when asked, as the other graders' are: a multi names its sub-graders (`name`, which tracebacks show)
    after building them."""
    spec = {'kind': 'python', 'source': self.spec['source'], 'name': self.name}
    return {**spec, 'key': _key(spec)}

  def task_args(self, text, item):
    return [core.sample_dict(text), item]  # built here: the worker imports nothing of rftjax


@functools.cache
def _worker_path() -> tuple[str, ...]:
  """Where a sandbox worker imports from: it runs `python -E -s sandbox_worker.py` (docs/graders.md), so the
  environment's own packages and the worker's folder, not this process's current folder, PYTHONPATH or user site."""
  probe = 'import sys, json; print(json.dumps(sys.path[1:]))'  # sys.path[0] is -c's current folder
  try:
    found = subprocess.run([sys.executable, '-E', '-s', '-c', probe], capture_output=True, text=True, timeout=60)
    paths = json.loads(found.stdout)
  except (OSError, subprocess.TimeoutExpired, ValueError):  # cannot tell: this process's path, as before
    paths = sys.path
  return (str(pathlib.Path(__file__).parent), *paths)


def _worker_finds(top: str) -> bool:
  return (top in sys.builtin_module_names or importlib.machinery.FrozenImporter.find_spec(top) is not None
          or importlib.machinery.PathFinder.find_spec(top, list(_worker_path())) is not None)  # fmt: skip


def check_source(source: Any, field: str) -> None:
  if not isinstance(source, str):
    raise core.GraderConfigError(f'{field}: expected Python source code as a string, found {type(source).__name__}')
  if len(source.encode()) > MAX_SOURCE_BYTES:
    raise core.GraderConfigError(
      f'{field}: source is {len(source.encode())} bytes, expected at most {MAX_SOURCE_BYTES}'
    )
  if re.fullmatch(r'\s*[\w./~-]+\.py\s*', source):  # 'grade.py': the file's name, not its code
    raise core.GraderConfigError(
      f'{field}: {source.strip()!r} is a file name; expected the Python source itself (in a config file: '
      "pathlib.Path(__file__).parent.joinpath('grade.py').read_text(); in JSON, the code as one string)"
    )
  try:
    tree = ast.parse(source, filename=field)
  except SyntaxError as e:
    raise core.GraderConfigError(
      f'{field}: syntax error at line {e.lineno}, column {e.offset}: {e.msg}: {(e.text or "").strip()!r}'
    ) from None
  fns = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == 'grade']
  if not fns:
    raise core.GraderConfigError(
      f'{field}: found no top-level `def grade(sample, item)`; expected one that returns a float'
    )
  for node in tree.body:  # unconditional imports: a module missing here fails every grading (pandas, say)
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module]
    for name in names:
      top = name.split('.')[0]
      if _worker_finds(top):
        continue
      spec = importlib.util.find_spec(top)
      if spec is None:
        raise core.GraderConfigError(
          f'{field}: line {node.lineno} imports {name}, which is not installed where rftjax runs; expected a module '
          f'of this Python environment (pip install it there, or import it inside a try)'
        )
      local = spec.origin and spec.origin.endswith('.py') and 'site-packages' not in spec.origin  # a file of yours
      fix = (
        "put its code into the grader source (a config file can join the files: source = helper.read_text() + '\\n' "
        '+ grade.read_text())'
        if local
        else 'pip install it into the environment, or put its code into the grader source'
      )
      raise core.GraderConfigError(
        f'{field}: line {node.lineno} imports {name}, found here at {spec.origin or spec.submodule_search_locations} '
        "but not by graders: their worker sees only the Python environment's own packages (no current folder, "
        f'PYTHONPATH or user site); {fix}'
      )
  args = fns[-1].args
  positional = len(args.posonlyargs) + len(args.args)
  required = positional - len(args.defaults)  # the defaults belong to the last positional ones
  required_kw = sum(d is None for d in args.kw_defaults)  # called as grade(sample, item): none is ever given
  if (positional < 2 and args.vararg is None) or required > 2 or required_kw:
    raise core.GraderConfigError(
      f'{field}: grade({ast.unparse(args)}) at line {fns[-1].lineno} cannot be called as grade(sample, item); '
      'expected grade(sample, item) (more arguments only with defaults)'
    )


class MathGrader(_Sandboxed):
  """1.0 if the final answer of `input` equals `reference` (see mathgrade.py for the rules), else 0.0."""

  type = 'math'

  def __init__(self, spec: dict[str, Any], name: str, where: str | None = None):
    self.spec, self.name = spec, name
    where = where or name  # errors name the field's place in the spec
    self.render_input = templating.compile_template(spec.get('input', '{{sample.output_text}}'), f'{where}.input')
    self.render_reference = templating.compile_template(spec['reference'], f'{where}.reference')
    self.needs_json = templating.uses_json(spec.get('input')) or templating.uses_json(spec['reference'])

  def worker_spec(self):
    exact = bool(self.spec.get('exact_number'))
    return {'kind': 'math', 'key': 'math_exact' if exact else 'math', 'exact_number': exact}

  def task_args(self, text, item):
    sample = core.sample_dict(text, self.needs_json)
    return [self.render_input(sample, item), self.render_reference(sample, item)]


DEFAULT_TEST_TIMEOUT_S = 5.0  # per test: an endless loop in a completion costs seconds, not the grader's deadline


class CodeGrader(_Sandboxed):
  """Runs the last fenced code block of `input`, then each of `tests` separately; score = fraction passed."""

  type = 'code'

  def __init__(self, spec: dict[str, Any], name: str, where: str | None = None):
    self.spec, self.name = spec, name
    where = where or name  # errors name the field's place in the spec
    self.render_input = templating.compile_template(spec.get('input', '{{sample.output_text}}'), f'{where}.input')
    tests = spec['tests']
    field = f'{where}.tests'
    if isinstance(tests, list):
      if not tests:
        raise core.GraderConfigError(f'{field}: expected a non-empty list of test statements, found []')
      self.render_tests = [templating.compile_template(t, f'{field}[{k}]') for k, t in enumerate(tests)]
      self.tests_path = None
    elif isinstance(tests, str):
      m = templating._VAR.fullmatch(tests.strip())
      self.tests_path = templating.parse_path(m.group(1), field) if m else None
      self.render_tests = templating.compile_template(tests, field)
    else:
      raise core.GraderConfigError(
        f'{field}: expected a list of Python statements or one string of test code, found {type(tests).__name__}'
      )

  def worker_spec(self):
    limit = float(self.spec.get('test_timeout_s', DEFAULT_TEST_TIMEOUT_S))
    return {'kind': 'code', 'key': f'code-{limit:g}', 'test_timeout_s': limit}

  def task_args(self, text, item):
    sample = {'output_text': text}
    if isinstance(self.render_tests, list):
      tests = [r(sample, item) for r in self.render_tests]
    elif self.tests_path is not None:  # "{{item.tests}}": a list in the item stays a list
      tests = templating.lookup(*self.tests_path, sample, item)
      if isinstance(tests, list):
        tests = [templating.to_text(t) for t in tests]
      else:
        tests = templating.to_text(tests)
    else:
      tests = self.render_tests(sample, item)
    return [self.render_input(sample, item), tests]
