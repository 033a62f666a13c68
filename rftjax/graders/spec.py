"""Building graders from OpenAI-style JSON specs, with error messages that name the field, and `multi`."""

from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Any, Sequence


from rftjax import errors
from rftjax import tools
from rftjax.graders import core
from rftjax.graders import endpoint
from rftjax.graders import formula
from rftjax.graders import model_graders
from rftjax.graders import sandbox_graders
from rftjax.graders import templating
from rftjax.graders import text_graders

log = logging.getLogger('rftjax')

_E = core.GraderConfigError
_STR = (str,)
_NUMBER = (int, float)
# The fields each grader type takes: OpenAI's grader schema (docs/graders.md), then rftjax's own extensions. Anything
# else is an error: a misspelt optional field (`pass_treshold`) would otherwise leave its default silently in force.
# `image_tag` (OpenAI's choice of python grader image) is accepted and ignored: the grader runs on this machine.
_MODEL = ('input', 'model', 'sampling_params', 'base_url', 'api_key_env', 'max_retries')
FIELDS = {
  'string_check': ('type', 'name', 'input', 'reference', 'operation'),
  'text_similarity': ('type', 'name', 'input', 'reference', 'evaluation_metric', 'pass_threshold'),
  'python': ('type', 'name', 'source', 'image_tag', 'timeout_s'),
  'score_model': ('type', 'name', *_MODEL, 'range', 'pass_threshold'),
  'label_model': ('type', 'name', *_MODEL, 'labels', 'passing_labels'),
  'multi': ('type', 'name', 'graders', 'calculate_output'),
  'math': ('type', 'name', 'input', 'reference', 'exact_number', 'timeout_s'),
  'code': ('type', 'name', 'input', 'tests', 'timeout_s', 'test_timeout_s'),
  'endpoint': ('type', 'name', 'url', 'headers', 'rate_limit', 'pass_threshold'),
}
# Where OpenAI's fine-tuning job request keeps its grader: a job file given as a grader file uses that one.
JOB_GRADER = ('method', 'reinforcement', 'grader')


def _field(spec: dict, key: str, types: tuple, where: str, required: bool = True, choices=None) -> Any:
  if key not in spec:
    if required:
      raise _E(f'{where}: missing required field {key!r}; found fields {sorted(spec)}')
    return None
  value = spec[key]
  if not isinstance(value, types) or (types == _NUMBER and isinstance(value, bool)):
    names = ' or '.join(t.__name__ for t in types)
    raise _E(f'{where}.{key}: expected {names}, found {type(value).__name__} {json.dumps(value)[:80]}')
  if choices is not None and value not in choices:
    raise _E(f'{where}.{key}: found {value!r}, expected one of {list(choices)}')
  return value


def _known_fields(spec: dict, where: str) -> None:
  """Every key of `spec` is one its type takes; the first that is not is named, with the closest known one."""
  known = FIELDS[spec['type']]
  for key in spec:
    if key not in known:
      raise _E(
        f'{where}.{key}: unknown field of a {spec["type"]} grader{errors.did_you_mean(str(key), known)}; '
        f'known: {", ".join(known)}'
      )


def _check_leaf(spec: dict, where: str) -> None:
  kind = spec['type']
  _known_fields(spec, where)
  _field(spec, 'name', _STR, where, required=False)
  if kind == 'string_check':
    _field(spec, 'input', _STR, where)
    _field(spec, 'reference', _STR, where)
    _field(spec, 'operation', _STR, where, choices=text_graders.STRING_OPERATIONS)
  elif kind == 'text_similarity':
    _field(spec, 'input', _STR, where)
    _field(spec, 'reference', _STR, where)
    metric = _field(spec, 'evaluation_metric', _STR, where)
    if metric == 'cosine':
      raise _E(
        f"{where}.evaluation_metric: 'cosine' needs an embedding model, which rftjax does not provide; "
        f'expected one of {list(text_graders.SIMILARITY_METRICS)}'
      )
    _field(spec, 'evaluation_metric', _STR, where, choices=text_graders.SIMILARITY_METRICS)
    _field(spec, 'pass_threshold', _NUMBER, where, required=False)
  elif kind == 'python':
    _field(spec, 'source', _STR, where)
    _field(spec, 'image_tag', _STR, where, required=False)
    _positive(spec, 'timeout_s', where)
  elif kind in ('score_model', 'label_model'):
    _field(spec, 'input', (list,), where)
    _field(spec, 'model', _STR, where)
    _check_sampling_params(_field(spec, 'sampling_params', (dict,), where, required=False), where)
    _field(spec, 'base_url', _STR, where, required=False)
    _field(spec, 'api_key_env', _STR, where, required=False)
    retries = _field(spec, 'max_retries', (int,), where, required=False)
    if retries is not None and (isinstance(retries, bool) or retries < 0):
      raise _E(f'{where}.max_retries: expected a whole number >= 0, found {json.dumps(retries)}')
    if kind == 'score_model':
      rng = _field(spec, 'range', (list,), where, required=False)
      if rng is not None and (
        len(rng) != 2 or not all(isinstance(x, _NUMBER) and not isinstance(x, bool) for x in rng) or not rng[0] < rng[1]
      ):
        raise _E(f'{where}.range: expected [low, high] numbers with low < high, found {json.dumps(rng)}')
      _field(spec, 'pass_threshold', _NUMBER, where, required=False)
    else:
      labels = _field(spec, 'labels', (list,), where)
      passing = _field(spec, 'passing_labels', (list,), where)
      if not labels or not all(isinstance(x, str) for x in labels):
        raise _E(f'{where}.labels: expected a non-empty list of strings, found {json.dumps(labels)[:100]}')
      if not passing or not set(passing) <= set(labels):
        raise _E(
          f'{where}.passing_labels: expected a non-empty subset of labels {labels}, found {json.dumps(passing)[:100]}'
        )
  elif kind == 'math':
    _field(spec, 'input', _STR, where, required=False)
    _field(spec, 'reference', _STR, where)
    _field(spec, 'exact_number', (bool,), where, required=False)
    _positive(spec, 'timeout_s', where)
  elif kind == 'code':
    _field(spec, 'input', _STR, where, required=False)
    _field(spec, 'tests', (list, str), where)
    _positive(spec, 'timeout_s', where)
    _positive(spec, 'test_timeout_s', where)
  elif kind == 'endpoint':
    problem = tools.url_problem(_field(spec, 'url', _STR, where))
    if problem:
      raise _E(f'{where}.url: {problem}')
    headers = _field(spec, 'headers', (dict,), where, required=False)
    problem = tools.headers_problem(headers) if headers is not None else None
    if problem:
      raise _E(f'{where}.headers: {problem}')
    rate = _field(spec, 'rate_limit', _NUMBER, where, required=False)
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
      raise _E(f'{where}.rate_limit: expected a positive number of requests per second, found {rate}')
    _field(spec, 'pass_threshold', _NUMBER, where, required=False)


# OpenAI's five, and the chat API's names for the token limit (which a judge's endpoint is sent)
SAMPLING_PARAMS = ('temperature', 'top_p', 'max_completions_tokens', 'seed', 'reasoning_effort',
                   'max_completion_tokens', 'max_tokens')  # fmt: skip


def _check_sampling_params(params: dict | None, where: str) -> None:
  """OpenAI's sampling_params as a local judge samples with them: a top_p of 0 once kept every token."""
  from rftjax import sampler  # jax: only for a model grader's spec

  if not params:
    return
  for key in params:  # a misspelt key left its default in force (a greedy judge for `temperture`)
    if key not in SAMPLING_PARAMS:
      raise _E(
        f'{where}.sampling_params.{key}: unknown field{errors.did_you_mean(str(key), SAMPLING_PARAMS)}; known: '
        f'{", ".join(SAMPLING_PARAMS)}'
      )
  problem = sampler.params_problem(params.get('temperature', 1.0), params.get('top_p', 1.0), 0)
  if problem:
    field, _, rest = problem.partition(': ')
    raise _E(f'{where}.sampling_params.{field}: {rest}')
  for key in ('max_completions_tokens', 'max_completion_tokens', 'max_tokens', 'seed'):
    value = params.get(key)
    low = 0 if key == 'seed' else 1
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
      raise _E(f'{where}.sampling_params.{key}: expected an integer >= {low}, got {json.dumps(value)}')


def _positive(spec: dict, key: str, where: str) -> None:
  value = _field(spec, key, _NUMBER, where, required=False)
  if value is not None and not (value > 0 and math.isfinite(value)):
    raise _E(f'{where}.{key}: expected a positive number of seconds, found {value}')


_LEAVES = {
  'string_check': text_graders.StringCheck,
  'text_similarity': text_graders.TextSimilarity,
  'python': sandbox_graders.PythonGrader,
  'score_model': model_graders.ScoreModel,
  'label_model': model_graders.LabelModel,
  'math': sandbox_graders.MathGrader,
  'code': sandbox_graders.CodeGrader,
  'endpoint': endpoint.Endpoint,
}
TYPES = tuple(_LEAVES) + ('multi',)


_JUDGED = ('score_model', 'label_model')


def _build_leaf(spec: Any, where: str, judges: dict | None) -> core.Grader:
  if not isinstance(spec, dict):
    raise _E(f'{where}: expected a grader object, found {type(spec).__name__}')
  kind = _field(spec, 'type', _STR, where, choices=TYPES)
  if kind == 'multi':
    raise _E(f'{where}.type: a multi grader cannot contain another multi grader; expected one of {list(_LEAVES)}')
  _check_leaf(spec, where)
  if kind in _JUDGED:
    return _LEAVES[kind](spec, spec.get('name') or where, judges, where=where)
  return _LEAVES[kind](spec, spec.get('name') or where, where=where)


class Multi(core.Grader):
  """Sub-graders by name, combined by `calculate_output`. A failed sub-grader counts as 0 in the formula."""

  type = 'multi'

  def __init__(self, spec: dict[str, Any], name: str, judges: dict | None = None, where: str | None = None):
    self.spec, self.name = spec, name
    where = where or name  # the place errors name: the grader's JSON path where the caller knows it
    _known_fields(spec, where)
    _field(spec, 'name', _STR, where, required=False)
    graders = _field(spec, 'graders', (dict,), where)
    if not graders:
      raise _E(f'{where}.graders: expected a non-empty map of name -> grader, found {{}}')
    for sub in graders:
      if sub == 'discard':
        raise _E(f"{where}.graders: the name 'discard' is taken (metadata['discard'] flags a rollout to leave out)")
      if not sub.isidentifier():
        raise _E(
          f'{where}.graders: name {sub!r} cannot be used in calculate_output; expected letters, digits '
          'and underscores, not starting with a digit'
        )
    self.subs = {sub: _build_leaf(s, f'{where}.graders.{sub}', judges) for sub, s in graders.items()}
    for sub, g in self.subs.items():
      g.name = sub
    self.formula = formula.Formula(
      _field(spec, 'calculate_output', _STR, where), set(self.subs), f'{where}.calculate_output'
    )
    # INLINE only when every sub-grader is; otherwise the pool's dispatcher fans the leaves out.
    self.mode = core.INLINE if all(g.mode == core.INLINE for g in self.subs.values()) else core.SANDBOX

  def grade_batch(self, samples, items, traces=None):
    return self.combine(
      [g.grade_batch(samples, items, traces) if g.wants_trace else g.grade_batch(samples, items) for g in self.leaves()]
    )

  def leaves(self) -> list[core.Grader]:
    return list(self.subs.values())

  def linear_weights(self) -> dict[str, float] | None:
    """{sub-grader: weight} when `calculate_output` is a weighted sum (plus a constant), as `0.7 * a + 0.3 * b`;
    None otherwise (also when a function or a power takes a sub-grader's value: `max(b, 5)` is linear only on some
    of b's range, which may reach past 1). Read off the formula at unit vectors, then checked at a few other points."""
    if self.formula.bends():
      return None
    names = list(self.subs)
    f = lambda values: self.formula.evaluate({n: values.get(n, 0.0) for n in names})  # noqa: E731
    try:
      zero = f({})
      weights = {n: f({n: 1.0}) - zero for n in names}
      for k in range(3):
        point = {n: ((j + 1) * 0.37 * (k + 1)) % 1.0 for j, n in enumerate(names)}
        if abs(f(point) - zero - sum(weights[n] * point[n] for n in names)) > 1e-9:
          return None
    except core.GradingException:
      return None
    return weights

  def combine(self, per_leaf: list[list[core.GradeResult]]) -> list[core.GradeResult]:
    names = list(self.subs)
    out = []
    for row in zip(*per_leaf):
      values = {n: r.reward for n, r in zip(names, row)}
      errors = tuple(core.GradeError(e.category, f'{n}: {e.message}') for n, r in zip(names, row) for e in r.errors)
      meta: dict = {n: r.metadata for n, r in zip(names, row) if r.metadata}
      if any(r.metadata.get('discard') for r in row):  # one sub-grader's outage spoils the whole reward
        meta['discard'] = True
      try:
        reward = self.formula.evaluate(values)
      except core.GradingException as e:
        reward, errors = 0.0, errors + (core.GradeError(e.category, str(e)),)
      out.append(core.GradeResult(reward, values, errors, meta))
    return out


def locate(spec: Any) -> tuple[dict, str | None]:
  """(the grader as a plain dict, its JSON path in the file or None for a bare grader). `spec` is a dict, a
  ConfigDict (a run config's inline grader) or a JSON file path; the file may also be the body of OpenAI's
  /graders/run request (`{"grader": {...}}`) or of a fine-tuning job request (`method.reinforcement.grader`)."""
  if spec is None or spec == '':
    raise _E('config.grader is not set: give a grader dict or the path of a grader JSON file')
  spec = errors.plain(spec)
  label, file = 'grader', None
  if isinstance(spec, (str, pathlib.Path)):
    label, file = f'grader file {spec}', spec
    spec = errors.read_json_file(spec, _E, label)  # a local path or gs://; a key given twice is an error
  if not isinstance(spec, dict):
    raise _E(f'{label}: expected a JSON object, found {type(spec).__name__}')
  if 'type' in spec:
    return spec, None
  if isinstance(spec.get('grader'), dict):
    return spec['grader'], 'grader'  # the body of OpenAI's /graders/validate and /graders/run requests
  if 'method' in spec or 'training_file' in spec:  # an OpenAI fine-tuning job request
    node, at = spec, []
    for key in JOB_GRADER:
      node = node.get(key) if isinstance(node, dict) else None
      at.append(key)
      if not isinstance(node, dict):
        found = 'missing' if node is None else f'a {type(node).__name__}, {json.dumps(node)[:60]}'
        raise _E(
          f"{label}: this looks like an OpenAI fine-tuning job file (it has 'method' or 'training_file'), whose "
          f'grader is at {".".join(JOB_GRADER)}, but {".".join(at)} is {found}; expected a grader object there'
        )
    return (node if file is None else relative_judges(node, file)), '.'.join(JOB_GRADER)
  return spec, None


def load(spec: Any) -> dict:
  """The grader as a plain dict: from a dict, a ConfigDict or a JSON file path (see `locate`)."""
  return locate(spec)[0]


def build(spec: Any, judges: dict | None = None, where: str | None = None) -> core.Grader:
  """A grader from a dict or a JSON file path; raises GraderConfigError naming the offending field.

  `judges` maps a model grader's `model` name to a local judge callable (model_graders.Judge); other model
  graders call their OpenAI-compatible endpoint. `where` is the grader's JSON path in the file it came from
  (`method.reinforcement.grader` in a job file), which errors then name; by default `grader` (a multi: its name)."""
  spec, found = locate(spec)
  where = where or found
  kind = _field(spec, 'type', _STR, where or 'grader', choices=TYPES)
  if kind == 'multi':
    return Multi(spec, spec.get('name') or 'multi', judges, where)
  return _build_leaf(spec, where or 'grader', judges)


def local_models(spec: dict) -> list[str]:
  """Model names of the score_model / label_model graders in `spec` that rftjax serves itself: an init spec
  (`gguf:...`, `hf:...`) with no `base_url` of its own. In order, without repeats."""
  names: list[str] = []
  subs = spec.get('graders') if spec.get('type') == 'multi' and isinstance(spec.get('graders'), dict) else {}
  for leaf in [spec, *subs.values()]:
    model = leaf.get('model') if isinstance(leaf, dict) else None
    if model and leaf.get('type') in _JUDGED and isinstance(model, str) and model.startswith(('gguf:', 'hf:')):
      if 'base_url' not in leaf and model not in names:
        names.append(model)
  return names


def relative_judges(spec: dict, file) -> dict:
  """A copy of a job file's grader whose local judge models (gguf:PATH, hf:DIR) have their paths relative to the
  file's folder, as the job's own model and data files have (docs/openai_jobs.md)."""
  from rftjax import pretrained

  spec = json.loads(json.dumps(spec))
  judges = set(local_models(spec))
  subs = spec.get('graders') if spec.get('type') == 'multi' and isinstance(spec.get('graders'), dict) else {}
  for leaf in [spec, *subs.values()]:
    if (
      isinstance(leaf, dict)
      and isinstance(leaf.get('model'), str)
      and leaf['model'] in judges
      and 'base_url' not in leaf
    ):
      leaf['model'] = pretrained.beside(file, leaf['model'])
  return spec


def validate(spec: dict | str | pathlib.Path, where: str | None = None) -> None:
  build(spec, where=where)


def _variables(node: Any, field: str) -> list[tuple[str, str, str, tuple]]:
  """(field, expression, root, steps) of every template variable in `node`, in order; `field` is `node`'s JSON path.
  A python grader's `source` is code, not a template, and is not searched; a variable that does not parse is left
  to build(), which names it."""
  found: list[tuple[str, str, str, tuple]] = []
  if isinstance(node, dict):
    for key, value in node.items():
      found += _variables(value, f'{field}.{key}') if key != 'source' else []
  elif isinstance(node, list):
    for k, value in enumerate(node):
      found += _variables(value, f'{field}[{k}]')
  elif isinstance(node, str):
    for m in templating._VAR.finditer(node):
      try:
        root, steps = templating.parse_path(m.group(1), field)
      except core.GraderConfigError:
        continue
      found.append((field, m.group(1), root, steps))
  return found


def item_variables(spec: Any, where: str | None = None) -> list[tuple[str, str, tuple]]:
  """Every `{{item...}}` variable of the grader's templates: (field, expression, steps), in spec order; `field` starts
  at `where` (the grader's JSON path, default `grader`)."""
  spec, at = locate(spec)
  return [(field, expr, steps) for field, expr, root, steps in _variables(spec, where or at or 'grader')
          if root == 'item']  # fmt: skip


def ignoring_sample(spec: Any, where: str | None = None) -> list[str]:
  """The graders in `spec` (a multi's sub-graders too) whose templates name no `{{sample.*}}`: they score every
  completion alike (`"input": "{{item.answer}}"` against `"reference": "{{item.answer}}"` passed every one), so
  GRPO learns nothing from them. python and endpoint graders see the sample whatever they do, math and code read
  it when they set no `input`."""
  spec, where = errors.plain(spec), where or 'grader'
  if not isinstance(spec, dict):
    return []
  if spec.get('type') == 'multi':
    subs = spec.get('graders') if isinstance(spec.get('graders'), dict) else {}
    return [x for name, sub in subs.items() for x in ignoring_sample(sub, f'{where}.graders.{name}')]
  kind = spec.get('type')
  if kind not in ('string_check', 'text_similarity', 'math', 'code', 'score_model', 'label_model'):
    return []
  if kind in ('math', 'code') and 'input' not in spec:
    return []
  # {{sample.x}}, {{sample["x"]}} or the whole {{sample}}, parsed as the templates are
  return [] if any(root == 'sample' for _, _, root, _ in _variables(spec, where)) else [where]


def say_if_ignoring_sample(spec: Any, where: str | None = None) -> None:
  for at in ignoring_sample(spec, where):
    log.warning('%s: no {{sample.*}} in its templates, so it scores every completion alike and trains nothing; '
                'expected its input to name the completion, e.g. "{{sample.output_text}}"', at)  # fmt: skip


def check_items(spec: Any, rows: Sequence[tuple[str, dict]], where: str | None = None) -> None:
  """Raises GraderConfigError when a template names an item field that a data line lacks: the variable, the first
  line without it (`rows` are (line, item) pairs, line = 'file:line') and how many lines lack it. Run it before
  anything slow: otherwise every grading of those lines fails with invalid_variable after training started.
  `where`: the grader's JSON path, as in `build`."""
  for field, expr, steps in item_variables(spec, where):
    missing = []
    for line, item in rows:
      try:
        value = templating.lookup('item', steps, {}, item)
      except core.GradingException as e:
        missing.append((line, str(e)))
        continue
      if field.endswith('.reference') and isinstance(value, (list, dict)):  # its JSON text matches no answer
        first = f'{{{{{expr}[0]}}}}' if isinstance(value, list) else f'{{{{{expr}.<key>}}}}'
        raise core.GraderConfigError(
          f'{field} uses {{{{{expr}}}}}, but at {line} it is a JSON {"list" if isinstance(value, list) else "object"} '
          f'({json.dumps(value)[:60]}), which the grader compares as its JSON text; expected text or a number, e.g. '
          f'{first} (open-instruct rows may hold a list of answers)'
        )
    if missing:
      line, why = missing[0]
      file = lambda where: where.rpartition(':')[0]  # noqa: E731 - 'file:line'
      lines = sum(1 for where, _ in rows if file(where) == file(line))
      lacking = sum(1 for where, _ in missing if file(where) == file(line))
      elsewhere = len(missing) - lacking
      more = f' ({lacking} of its {lines} lines lack it' if lacking > 1 else ''
      if elsewhere:
        more += f'{", and" if more else " (and"} {elsewhere} line{"s" * (elsewhere > 1)} of other files'
      more += ')' if more else ''
      raise core.GraderConfigError(
        f'{field} uses {{{{{expr}}}}}, but {line} has no such field: {why.split(": ", 1)[-1]}{more}; '
        'expected every data line to have it'
      )
