"""An OpenAI fine-tuning job request, run as it is: `python -m rftjax.train --openai_job=job.json --workdir=DIR`.

The file is the body of an OpenAI `fine_tuning.jobs.create` request for reinforcement fine-tuning, unchanged:

  {"model": "gguf:smollm2-135m", "training_file": "train.jsonl", "validation_file": "valid.jsonl",
   "suffix": "arith", "seed": 7, "metadata": {"team": "x"},
   "method": {"type": "reinforcement", "reinforcement": {"grader": {...}, "response_format": {...},
              "hyperparameters": {"n_epochs": "auto", "batch_size": 8, "reasoning_effort": "low", ...}}}}

`model` is an init spec (`gguf:PATH`, `gguf:smollm2-135m`, `hf:DIR`) or the name of a run config in `configs/`
(`"tiny"` -> configs/tiny.py, `"tiny:test"` -> its variant). Files are local or gs:// paths; a relative path is
relative to the job file's folder. Precedence: `--config` gives the defaults (configs/openai_job.py when none is
given and `model` is an init spec), the job overrides them, and an explicit `--config.x=y` overrides both. Every
field is checked before anything slow; a bad one is one line naming its JSON path. docs/openai_jobs.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import logging
import pathlib
from typing import Any


from rftjax import errors
from rftjax import graders
from rftjax import hparams
from rftjax import pretrained
from rftjax import runfs

log = logging.getLogger('rftjax')
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
GENERIC_CONFIG = CONFIGS / 'openai_job.py'
INIT_KINDS = ('gguf:', 'hf:')
_NUMBER = (int, float)
# (expected types, what to say) per field; None allowed where OpenAI allows null
_TOP = {
  'model': ((str,), 'a string: an init spec (gguf:..., hf:DIR) or a config name in configs/'),
  'training_file': ((str,), 'a path (local or gs://)'),
  'validation_file': ((str, type(None)), 'a path (local or gs://) or null'),
  'seed': ((int, type(None)), 'an integer or null'),
  'suffix': ((str, type(None)), 'a string of at most 64 characters or null'),
  'metadata': ((dict, type(None)), 'an object of string values or null'),
  'method': ((dict,), 'an object {"type": "reinforcement", "reinforcement": {...}}'),
  'integrations': ((list, type(None)), 'a list'),
  'hyperparameters': ((dict, type(None)), 'an object (deprecated: put them in method.reinforcement)'),
}
_REINFORCEMENT = {
  'grader': ((dict,), 'a grader object'),
  'hyperparameters': ((dict, type(None)), 'an object'),
  'response_format': ((dict, type(None)), 'an object {"type": "json_schema", "json_schema": {...}} or null'),
}
_HYPER = {  # 'auto' or a value, each
  'n_epochs': (_NUMBER, 'a number'),
  'batch_size': ((int,), 'an integer'),
  'learning_rate_multiplier': (_NUMBER, 'a number'),
  'compute_multiplier': (_NUMBER, 'a number'),
  'eval_interval': ((int,), 'an integer'),
  'eval_samples': ((int,), 'an integer'),
  'reasoning_effort': ((str,), f'one of {", ".join(hparams.REASONING_EFFORT)}'),
}


class JobError(errors.ConfigError):
  """A field of an OpenAI job file; the message is `FILE: json.path: found ..., expected ...`."""


@dataclasses.dataclass(frozen=True)
class Job:
  path: str  # the job file, as given
  body: dict  # the request body, checked

  @property
  def reinforcement(self) -> dict:
    return self.body['method']['reinforcement']

  @property
  def hyperparameters(self) -> dict:
    return self.reinforcement.get('hyperparameters') or {}

  def config_file(self) -> str:
    """The run config that gives the defaults when no --config is given: configs/<model>.py, or the generic one."""
    model = self.body['model']
    if model.startswith(INIT_KINDS):
      return str(GENERIC_CONFIG)
    name, _, variant = model.partition(':')
    return str(CONFIGS / f'{name}.py') + (f':{variant}' if variant else '')

  def file(self, key: str) -> str | None:
    """training_file / validation_file: a relative path is relative to the job file's folder."""
    return runfs.beside(self.path, self.body.get(key))

  def init(self) -> str:
    """A `model` that is a file (gguf:PATH, hf:DIR) with its path relative to the job file's folder, as the data
    files' are; gguf:NAME shorthands as they are."""
    return pretrained.beside(self.path, self.body['model'])

  def grader(self) -> dict:
    """The grader, its local judge models' paths relative to the job file's folder, as the job's model's is."""
    return graders.relative_judges(self.reinforcement['grader'], self.path)


def _fail(path, where: str, found, expected: str):
  shown = json.dumps(found) if not isinstance(found, str) else repr(found)
  raise JobError(f'{path}: {where}: found {shown[:80]}, expected {expected}')


def _fields(path, node: dict, known: dict, where: str) -> None:
  for key, value in node.items():
    at = f'{where}.{key}' if where else key
    if key not in known:
      hint = errors.did_you_mean(key, known)
      raise JobError(f'{path}: {at}: unknown field{hint}; known: {", ".join(known)}')
    types, expected = known[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
      _fail(path, at, value, expected)


def read(path: str | pathlib.Path) -> Job:
  """The job file, every field checked (JobError names the JSON path of the first bad one)."""
  body = errors.read_json_file(path, JobError, f'--openai_job={path}')  # a key given twice is an error
  if not isinstance(body, dict):
    _fail(path, '(top level)', body, 'a JSON object: the body of a fine_tuning.jobs.create request')
  _fields(path, body, _TOP, '')
  for key in ('model', 'training_file', 'method'):
    if key not in body:
      raise JobError(f'{path}: {key}: missing; expected {_TOP[key][1]}')
  model = body['model']
  if not model.startswith(INIT_KINDS) and not (CONFIGS / f'{model.partition(":")[0]}.py').is_file():
    known = sorted(p.stem for p in CONFIGS.glob('*.py') if p.stem not in ('common', 'openai_job', '__init__'))
    _fail(
      path, 'model', model, f'an init spec (gguf:PATH, gguf:NAME, hf:DIR) or a config in configs/ ({", ".join(known)})'
    )
  if body.get('hyperparameters'):
    raise JobError(
      f'{path}: hyperparameters: the top-level field is deprecated and does not apply to reinforcement jobs; '
      'expected them in method.reinforcement.hyperparameters'
    )
  method = body['method']
  _fields(path, method, {'type': ((str,), '"reinforcement"'), 'reinforcement': ((dict,), 'an object')}, 'method')
  if method.get('type') != 'reinforcement':
    _fail(path, 'method.type', method.get('type'), '"reinforcement" (rftjax runs reinforcement fine-tuning jobs)')
  if 'reinforcement' not in method or 'grader' not in method['reinforcement']:
    raise JobError(f'{path}: method.reinforcement.grader: missing; expected a grader object')
  _fields(path, method['reinforcement'], _REINFORCEMENT, 'method.reinforcement')
  try:  # here, before the data loads, and named by its place in this file
    graders.validate(method['reinforcement']['grader'], where='method.reinforcement.grader')
  except graders.GraderConfigError as e:
    raise JobError(f'{path}: {e}') from None
  hyper = method['reinforcement'].get('hyperparameters') or {}
  known = {k: ((*types, str, type(None)), f"{what} or 'auto'") for k, (types, what) in _HYPER.items()}
  _fields(path, hyper, known, 'method.reinforcement.hyperparameters')
  for key, value in hyper.items():
    at = f'method.reinforcement.hyperparameters.{key}'
    if value is None:  # the API's null: the default, as 'auto'
      continue
    if key == 'reasoning_effort':
      if value not in (*hparams.REASONING_EFFORT, 'default', 'auto'):
        _fail(path, at, value, f"one of {', '.join(hparams.REASONING_EFFORT)}, 'default' or 'auto'")
    elif isinstance(value, str) and value != 'auto':
      _fail(path, at, value, f"{_HYPER[key][1]} or 'auto'")
    elif isinstance(value, _NUMBER) and not 0 < value < math.inf:  # JSON's 1e400 parses as inf
      _fail(path, at, value, f'{_HYPER[key][1]} > 0 and finite')
    elif isinstance(value, int) and value > hparams.INT_LIMIT:
      _fail(path, at, value, f'{_HYPER[key][1]} up to {hparams.INT_LIMIT}')
  suffix = body.get('suffix')
  if suffix is not None and (len(suffix) > 64 or not suffix.replace('-', '').replace('_', '').isalnum()):
    _fail(path, 'suffix', suffix, 'at most 64 letters, digits, - and _')
  metadata = body.get('metadata') or {}
  if len(metadata) > 16:  # OpenAI's limits: 16 pairs, keys of 64 characters, values of 512
    _fail(path, 'metadata', f'{len(metadata)} keys', 'at most 16 key-value pairs')
  for key, value in metadata.items():
    if len(key) > 64:
      _fail(path, f'metadata.{key[:20]}...', f'a key of {len(key)} characters', 'keys of at most 64 characters')
    if not isinstance(value, str) or len(value) > 512:
      _fail(path, f'metadata.{key}', value, 'a string of at most 512 characters (OpenAI metadata values are strings)')
  seed = body.get('seed')
  if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= 2**31 - 1:
    _fail(path, 'seed', seed, 'an integer in [0, 2147483647] or null')
  for key in ('training_file', 'validation_file'):
    value = body.get(key)
    if isinstance(value, str) and not value.strip():
      _fail(path, key, value, 'a path (local or gs://)' + (' or null' if key == 'validation_file' else ''))
    if isinstance(value, str) and value.startswith('file-') and '/' not in value and '.' not in value:
      raise JobError(
        f'{path}: {key}: {value!r} is an OpenAI file ID; expected a path: download the file '
        f'(client.files.content({value!r})) and give its local or gs:// path'
      )
  if body.get('integrations'):
    log.warning('%s: integrations are not supported and are ignored (rftjax writes TensorBoard files)', path)
  response_format = method['reinforcement'].get('response_format')
  if response_format is not None:
    from rftjax import response_format as response_format_lib

    response_format_lib.check(response_format, f'{path}: method.reinforcement.response_format')
  return Job(str(path), body)


def apply(config, job: Job, explicit=()) -> Any:
  """A copy of `config` with the job's fields in it, except where `explicit` (the keys set on the command line)
  says the user decided."""
  c = config.copy_and_resolve_references()
  explicit = set(explicit)
  body, decided = job.body, []

  def put(key: str, value, source: str) -> None:
    if key in explicit or any(key.startswith(e + '.') for e in explicit):
      decided.append(f'{source} (kept --config.{key})')
      return
    node = c
    *parents, last = key.split('.')
    for part in parents:
      node = node[part]
    with node.ignore_type():
      node[last] = value

  with c.unlocked():
    model = body['model']
    if model.startswith(INIT_KINDS) and job.init() != c.get('init'):
      put('init', job.init(), 'model')
      put('model', '', 'model')  # the architecture is read from the init file
      put('tokenizer', '', 'model')  # and so is its tokenizer
    put('data.train', job.file('training_file'), 'training_file')
    if body.get('validation_file'):
      put('data.valid', job.file('validation_file'), 'validation_file')
      if c.data.get('valid_limit'):  # a demo config's cut of its own validation set: the user's file is whole
        put('data.valid_limit', 0, 'validation_file')
    elif not c.data.valid:
      raise JobError(
        f'{job.path}: validation_file: missing, and the config has no data.valid; expected a path (rftjax keeps '
        'the checkpoints with the best validation reward)'
      )
    else:  # said, since the checkpoints kept are ranked on it
      log.info('%s has no validation_file: validating on %s (config.data.valid)', job.path, c.data.valid)
    if body.get('seed') is not None:
      put('seed', body['seed'], 'seed')
    put('grader', job.grader(), 'method.reinforcement.grader')
    if job.reinforcement.get('response_format') is not None:
      put('response_format', job.reinforcement['response_format'], 'method.reinforcement.response_format')
    put('openai.enabled', True, "the job's 'auto' hyperparameters")  # 'auto' follows rftjax's documented rules
    for field, value in job.hyperparameters.items():
      native = hparams.NATIVE[field]
      if native in explicit:
        decided.append(f'method.reinforcement.hyperparameters.{field} (kept --config.{native})')
        continue
      put(f'openai.{field}', value, f'method.reinforcement.hyperparameters.{field}')
    put('openai.suffix', body.get('suffix') or '', 'suffix')
    put('openai.metadata', json.dumps(body.get('metadata') or {}, sort_keys=True), 'metadata')
    put('openai.job', str(job.path), '--openai_job')
  for note in decided:
    log.info('openai job: %s', note)
  return c
