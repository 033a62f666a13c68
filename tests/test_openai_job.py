"""OpenAI job files run as they are (`--openai_job`), and `response_format` (docs/openai_jobs.md)."""

import copy
import json
import pathlib

import pytest

from configs import tiny
from rftjax import cli
from rftjax import errors
from rftjax import graders
from rftjax import hparams
from rftjax import openai_job
from rftjax import response_format
from rftjax import resume
from rftjax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = {
  'type': 'json_schema',
  'json_schema': {
    'name': 'digit',
    'schema': {
      'type': 'object',
      'properties': {'answer': {'type': 'string'}},
      'required': ['answer'],
      'additionalProperties': False,
    },
    'strict': True,
  },
}
# as OpenAI's fine-tuning guide writes a reinforcement job, with local paths for the file IDs
JOB = {
  'model': 'tiny',
  'training_file': str(REPO / 'data/tiny/train.jsonl'),
  'validation_file': str(REPO / 'data/tiny/valid.jsonl'),
  'suffix': 'digits',
  'seed': 3,
  'metadata': {'team': 'rl'},
  'method': {
    'type': 'reinforcement',
    'reinforcement': {
      'grader': {
        'type': 'multi',
        'graders': {
          'exact': {
            'type': 'string_check',
            'name': 'exact',
            'input': '{{sample.output_text}}',
            'reference': '{{item.answer}}',
            'operation': 'eq',
          },
          'close': {
            'type': 'text_similarity',
            'name': 'close',
            'input': '{{sample.output_text}}',
            'reference': '{{item.answer}}',
            'evaluation_metric': 'fuzzy_match',
          },
        },
        'calculate_output': '0.8 * exact + 0.2 * close',
      },
      'response_format': SCHEMA,
      'hyperparameters': {
        'n_epochs': 'auto',
        'batch_size': 'auto',
        'learning_rate_multiplier': 'auto',
        'compute_multiplier': 'auto',
        'eval_interval': 'auto',
        'eval_samples': 'auto',
        'reasoning_effort': 'medium',
      },
    },
  },
}


def write_job(tmp_path, body=None, **changes):
  body = copy.deepcopy(JOB if body is None else body)
  for dotted, value in changes.items():
    node = body
    *parents, last = dotted.split('.')
    for part in parents:
      node = node[part]
    if value is None:
      del node[last]
    else:
      node[last] = value
  path = tmp_path / 'job.json'
  path.write_text(json.dumps(body))
  return path


H = 'method.reinforcement.hyperparameters'


@pytest.mark.parametrize(
  'changes, message',
  [
    ({f'{H}.n_epoch': 2}, f'{H}.n_epoch: unknown field; did you mean n_epochs?'),
    ({f'{H}.n_epochs': 'three'}, f"{H}.n_epochs: found 'three', expected a number or 'auto'"),
    ({f'{H}.batch_size': 2.5}, f"{H}.batch_size: found 2.5, expected an integer or 'auto'"),
    ({f'{H}.batch_size': 0}, f'{H}.batch_size: found 0, expected an integer > 0'),
    (
      {f'{H}.reasoning_effort': 'max'},
      f"{H}.reasoning_effort: found 'max', expected one of low, medium, high, 'default' or 'auto'",
    ),
    ({'method.type': 'supervised'}, 'method.type: found \'supervised\', expected "reinforcement"'),
    ({'method.reinforcement.grader': None}, 'method.reinforcement.grader: missing; expected a grader object'),
    ({'training_file': 'file-abc123'}, "training_file: 'file-abc123' is an OpenAI file ID; expected a path"),
    ({'model': 'o4-mini'}, "model: found 'o4-mini', expected an init spec (gguf:PATH, gguf:NAME, hf:DIR) or a config"),
    ({'seed': True}, 'seed: found true, expected an integer or null'),
    ({'seed': -1}, 'seed: found -1, expected an integer in [0, 2147483647] or null'),
    ({'seed': 2**31}, 'seed: found 2147483648, expected an integer in [0, 2147483647] or null'),
    ({'metadata': {f'k{i}': 'v' for i in range(17)}}, "metadata: found '17 keys', expected at most 16 key-value pairs"),
    ({'metadata': {'team': 'x' * 513}}, "metadata.team: found 'xxxxxxxx"),
    (
      {'method.reinforcement.response_format.json_schema.name': 'my digit'},
      "response_format.json_schema.name: found \"my digit\", expected 1-64 of a-z, A-Z, 0-9, '_' and '-'",
    ),
    ({'training_file': ''}, "training_file: found '', expected a path (local or gs://)"),
    ({'validation_file': ' '}, "validation_file: found ' ', expected a path (local or gs://) or null"),
    ({'metadata': {'team': 1}}, 'metadata.team: found 1, expected a string of at most 512 characters'),
    ({'suffix': 'a b'}, "suffix: found 'a b', expected at most 64 letters, digits, - and _"),
    ({'trainig_file': 'x'}, 'trainig_file: unknown field; did you mean training_file?'),
    (
      {'method.reinforcement.response_format': {'type': 'json_schema', 'json_schema': {'name': 'x', 'schema': []}}},
      'method.reinforcement.response_format.json_schema.schema: found [], expected a JSON Schema object',
    ),
    (
      {'method.reinforcement.response_format.json_schema.schema': {'type': 'objekt'}},
      "response_format.json_schema.schema.type: not a valid JSON Schema: 'objekt' is not valid under any of the given",
    ),
  ],
)
def test_a_bad_field_is_named_by_its_json_path(tmp_path, changes, message):
  path = write_job(tmp_path, **changes)
  with pytest.raises(errors.ConfigError) as e:
    openai_job.read(path)
  assert str(e.value).startswith(f'{path}: ') and message in str(e.value), str(e.value)


def test_an_infinite_or_huge_hyperparameter_is_named_by_its_json_path(tmp_path):
  """JSON's 1e400 parses as inf: it passed the check (> 0) and ended in an OverflowError traceback at resolve."""
  at = 'method.reinforcement.hyperparameters'
  for field, text, expected in (
    ('n_epochs', '1e400', 'a number > 0 and finite'),
    ('compute_multiplier', '1e400', 'a number > 0 and finite'),
    ('batch_size', str(2**40), 'an integer up to 2147483647'),
  ):
    path = write_job(tmp_path, **{f'{at}.{field}': 12345})
    path.write_text(path.read_text().replace('12345', text))
    with pytest.raises(errors.ConfigError) as e:
      openai_job.read(path)
    assert str(e.value).startswith(f'{path}: {at}.{field}: found ') and expected in str(e.value), str(e.value)


G = 'method.reinforcement.grader'


@pytest.mark.parametrize(
  'changes, message',
  [
    (
      {f'{G}.graders.exact.refrence': '{{item.answer}}', f'{G}.graders.exact.reference': None},
      f'{G}.graders.exact.refrence: unknown field of a string_check grader; did you mean reference?; known: type, '
      'name, input, reference, operation',
    ),
    (
      {f'{G}.graders.close.pass_treshold': 0.8},
      f'{G}.graders.close.pass_treshold: unknown field of a text_similarity grader; did you mean pass_threshold?',
    ),
    ({f'{G}.graders.exact.operation': 'equals'}, f"{G}.graders.exact.operation: found 'equals', expected one of"),
    ({f'{G}.calculate_output': '0.8 * exact + 0.2 * clos'}, f"{G}.calculate_output: unknown name 'clos' at position"),
    (
      {G: {'type': 'python', 'name': 'py', 'source': 'def grade(sample, item)\n  return 1.0\n'}},
      f"{G}.source: syntax error at line 1, column 24: expected ':'",
    ),
  ],
)
def test_a_bad_grader_field_is_named_by_the_job_file_and_its_json_path(tmp_path, changes, message):
  path = write_job(tmp_path, **changes)
  with pytest.raises(errors.ConfigError) as e:
    openai_job.read(path)
  assert str(e.value).startswith(f'{path}: {message}'), str(e.value)


def test_a_key_given_twice_in_a_job_file_is_named_by_its_json_path(tmp_path):
  path = tmp_path / 'job.json'
  path.write_text(json.dumps(JOB).replace('"operation": "eq"', '"operation": "eq", "operation": "ne"'))
  with pytest.raises(errors.ConfigError) as e:
    openai_job.read(path)
  assert str(e.value) == (
    f"--openai_job={path}: {G}.graders.exact.operation: the key 'operation' appears twice in one object (first "
    '"eq", then "ne"); expected each key once (a JSON reader keeps only the last, silently)'
  )
  path.write_text(json.dumps(JOB).replace('"model": "tiny"', '"model": "tiny", "model": "smollm2_arith"'))
  with pytest.raises(errors.ConfigError, match=r"job\.json: model: the key 'model' appears twice in one object"):
    openai_job.read(path)


def test_precedence_config_then_job_then_explicit_flags(tmp_path):
  path = write_job(tmp_path, **{f'{H}.batch_size': 8, f'{H}.n_epochs': 0.5, f'{H}.reasoning_effort': 'high'})
  job = openai_job.read(path)
  assert job.config_file() == str(REPO / 'configs' / 'tiny.py')
  applied = openai_job.apply(tiny.get_config(), job)
  resolved = hparams.apply(applied, 2000)
  assert (resolved.batch_size, resolved.total_steps, resolved.seed) == (8, 125, 3)  # ceil(0.5 * 2000 / 8)
  assert resolved.sampling.max_new_tokens == 2  # high: 2 x tiny's 1 token
  assert resolved.grader.type == 'multi' and resolved.response_format.json_schema.name == 'digit'
  assert (resolved.openai.suffix, json.loads(resolved.openai.metadata)) == ('digits', {'team': 'rl'})
  # a key set on the command line beats the job, without the "both decide" error of two config keys
  explicit = {'batch_size', 'seed'}
  config = tiny.get_config().unlock()
  config.batch_size, config.seed = 4, 11
  resolved = hparams.apply(openai_job.apply(config, job, explicit), 2000, explicit)
  assert (resolved.batch_size, resolved.seed, resolved.total_steps) == (4, 11, 250)


def test_nulls_and_the_default_effort_are_the_apis_defaults(tmp_path):
  """The openai package types every hyperparameter as `... | None` and reasoning_effort as default/low/medium/high
  (`report --format=openai` writes 'default' back): each is what 'auto' is."""
  keys = ('batch_size', 'n_epochs', 'learning_rate_multiplier', 'eval_interval', 'compute_multiplier')
  jobs = []
  for name, value, effort in (('null', None, 'default'), ('auto', 'auto', 'auto')):
    body = copy.deepcopy(JOB)
    body['method']['reinforcement']['hyperparameters'] = {**{k: value for k in keys}, 'reasoning_effort': effort}
    (tmp_path / name).mkdir()
    jobs.append(openai_job.read(write_job(tmp_path / name, body)))
  resolved, expected = (hparams.apply(openai_job.apply(tiny.get_config(), j), 2000) for j in jobs)
  assert resolved.sampling.max_new_tokens == 1  # tiny's own budget
  for key in ('batch_size', 'total_steps', 'eval_interval', 'optimizer.learning_rate', 'num_generations'):
    assert hparams._get(resolved, key) == hparams._get(expected, key), key


def test_a_jobs_hyperparameter_is_named_in_its_file_where_it_decides(tmp_path):
  job = openai_job.read(write_job(tmp_path, **{f'{H}.n_epochs': 1}))
  resolved = hparams.apply(openai_job.apply(tiny.get_config(), job), 2000)
  assert hparams.deciding_key(resolved, 'total_steps') == f'{H}.n_epochs in {job.path}'
  assert hparams.deciding_key(resolved, 'seed') == 'config.seed'


def test_a_job_without_validation_file_says_which_file_validates(tmp_path, caplog):
  job = openai_job.read(write_job(tmp_path, validation_file=None))
  with caplog.at_level('INFO', logger='rftjax'):
    applied = openai_job.apply(tiny.get_config(), job)
  assert applied.data.valid == 'data/tiny/valid.jsonl'
  assert (
    f'{job.path} has no validation_file: validating on data/tiny/valid.jsonl (config.data.valid)' in caplog.messages
  )


def test_relative_paths_are_relative_to_the_job_file(tmp_path):
  (tmp_path / 'data').mkdir()
  path = write_job(tmp_path, training_file='data/t.jsonl', validation_file='gs://bucket/v.jsonl')
  job = openai_job.read(path)
  assert job.file('training_file') == str(tmp_path / 'data/t.jsonl')
  assert job.file('validation_file') == 'gs://bucket/v.jsonl'
  for model, init in (('gguf:models/m.gguf', f'gguf:{tmp_path}/models/m.gguf'), ('hf:/abs/dir', 'hf:/abs/dir'),
                      ('gguf:smollm2-135m', 'gguf:smollm2-135m')):  # fmt: skip
    assert openai_job.read(write_job(tmp_path, model=model)).init() == init
  # its grader's local judges too (they were relative to the current folder, the job's model to the job file's)
  judged = {'type': 'label_model', 'name': 'judge', 'model': 'gguf:judge.gguf', 'labels': ['a', 'b'],
            'input': [{'role': 'user', 'content': '{{sample.output_text}}'}],
            'passing_labels': ['a']}  # fmt: skip
  grader = {'type': 'multi', 'graders': {'j': judged, 'api': {**judged, 'base_url': 'http://127.0.0.1:1/v1'},
            'short': {**judged, 'model': 'gguf:smollm2-135m'}}, 'calculate_output': 'j'}  # fmt: skip
  path = write_job(tmp_path, **{'method.reinforcement.grader': grader})
  for given in (openai_job.read(path).grader(), graders.load(path)):  # train's, and grade's or evaluate's --grader
    models = {name: leaf['model'] for name, leaf in given['graders'].items()}
    assert models == {'j': f'gguf:{tmp_path}/judge.gguf', 'api': 'gguf:judge.gguf', 'short': 'gguf:smollm2-135m'}
  malformed = write_job(tmp_path, **{'method.reinforcement.grader': {**judged, 'model': ['gguf:judge.gguf']}})
  with pytest.raises(graders.GraderConfigError, match='model'):  # not a TypeError from the judges' lookup
    graders.build(malformed)
  # a job file in a bucket: its neighbours are in the bucket (pathlib would have made gs://b/... gs:/b/...)
  remote = openai_job.Job('gs://b/jobs/job.json', {**JOB, 'training_file': 't.jsonl', 'validation_file': 'v/v.jsonl'})
  assert (remote.file('training_file'), remote.file('validation_file')) == (
    'gs://b/jobs/t.jsonl',
    'gs://b/jobs/v/v.jsonl',
  )


def test_a_jobs_validation_file_is_used_whole(tmp_path):
  """A config that cuts its own validation set (smollm2_arith: data.valid_limit=50) must not cut the job's file,
  whose reward ranks the checkpoints kept; without a validation_file the config's set stays as it was."""
  config = tiny.get_config().unlock()
  config.data.valid_limit = 50
  assert openai_job.apply(config, openai_job.read(write_job(tmp_path))).data.valid_limit == 0
  without = openai_job.read(write_job(tmp_path, validation_file=None))
  assert openai_job.apply(config, without).data.valid_limit == 50


def test_an_init_model_uses_the_generic_config_and_reads_the_architecture(tmp_path):
  job = openai_job.read(write_job(tmp_path, model='gguf:smollm2-135m'))
  assert job.config_file() == str(REPO / 'configs' / 'openai_job.py')
  from configs import openai_job as generic

  applied = openai_job.apply(generic.get_config(), job)
  assert (applied.init, applied.model, applied.tokenizer) == ('gguf:smollm2-135m', '', '')
  # the architecture read from the GGUF header is the smollm2_135m preset's: its base rate
  assert hparams.base_learning_rate('', 'gguf:smollm2-135m') == hparams.BASE_LR['smollm2_135m']


def test_the_job_trains_unchanged_and_a_typo_stops_it_at_start_up(tmp_path, monkeypatch, capsys, caplog):
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  path = write_job(tmp_path)
  workdir = tmp_path / 'run'
  fast = ['--config.total_steps=2', '--config.batch_size=4', '--config.data.max_prompt_len=192']
  argv = ['rftjax.train', f'--openai_job={path}', f'--workdir={workdir}', *fast, '--config.data.valid_limit=8']
  with caplog.at_level('WARNING', logger='rftjax'):
    assert train.main(argv) == 0, capsys.readouterr().err
  # the tiny model answers one digit, never JSON: each pass says once that it learns nothing
  said = [m for m in caplog.messages if 'matched config.response_format' in m]
  assert [m.split(':')[0] for m in said] == ['validation at step 0', 'step 1'], said
  assert said[1].startswith('step 1: none of the 32 completions matched config.response_format (most: not a JSON ')
  config = json.loads((workdir / 'config.json').read_text())
  assert config['openai']['job'] == str(path) and config['openai']['suffix'] == 'digits'
  assert config['seed'] == 3 and config['batch_size'] == 4 and config['grader']['calculate_output']
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train_reward_mean' in r] == [1, 2]
  assert all('train/response_format_valid' in r for r in rows if 'train_reward_mean' in r)
  kept = [json.loads(line) for line in (workdir / 'samples' / 'valid_step000000.jsonl').read_text().splitlines()]
  assert all(r['response_format_error'].startswith('not a JSON object or array') for r in kept)  # 1-token answers
  # the export says what each training prompt ended in, for whoever serves it
  from rftjax import export

  capsys.readouterr()
  assert export.main([f'--workdir={workdir}', f'--out={tmp_path / "hf"}']) == 0
  marker = json.loads((tmp_path / 'hf' / export.MARKER).read_text())['response_format']
  assert marker['spec'] == SCHEMA and marker['instruction'] == response_format.make(SCHEMA).instruction()
  assert f'kept in {export.MARKER}; send it the same way when serving' in capsys.readouterr().err

  typo = write_job(tmp_path, **{f'{H}.n_epochs': None, f'{H}.n_epoch': 'auto'})
  assert train.main(['rftjax.train', f'--openai_job={typo}', f'--workdir={tmp_path / "typo"}']) == 2
  assert capsys.readouterr().err.splitlines() == [
    f'error: {typo}: {H}.n_epoch: unknown field; did you mean n_epochs?; known: n_epochs, batch_size, '
    'learning_rate_multiplier, compute_multiplier, eval_interval, eval_samples, reasoning_effort'
  ]
  assert not (tmp_path / 'typo').exists()


# response_format ----------------------------------------------------------------------------------------------
def test_response_format_takes_what_the_sdks_write_and_shows_the_description():
  """The openai package writes "strict": null for an unset strict; OpenAI's model reads the description."""
  spec = copy.deepcopy(SCHEMA)
  spec['json_schema'].update(strict=None, description='the largest digit, as a string')
  response_format.check(spec, 'job.json: method.reinforcement.response_format')
  assert (
    response_format.make(spec)
    .instruction()
    .startswith(f'{response_format.INSTRUCTION} ("digit": the largest digit, as a string):\n{{"type": "object"')
  )
  assert response_format.make(SCHEMA).instruction().startswith(f'{response_format.INSTRUCTION} ("digit"):\n')


def test_a_schemas_property_order_reaches_the_prompt_through_the_config(tmp_path):
  """ConfigDict sorts keys when it gives them back (to_dict, items): a reasoning-first schema asked the model for
  'answer' first. The job's order stays through the config, its config.json and the report's copy of it."""
  import ml_collections

  from configs import tiny
  from rftjax import graders, report, runfs

  schema = {'type': 'object', 'properties': {'reasoning': {'type': 'string'}, 'answer': {'type': 'string'}},
            'required': ['reasoning', 'answer'], 'additionalProperties': False}  # fmt: skip
  path = write_job(tmp_path, **{'method.reinforcement.response_format.json_schema.schema': schema})
  config = openai_job.apply(tiny.get_config(), openai_job.read(path))
  stored = tmp_path / 'run'
  stored.mkdir()
  (stored / 'config.json').write_text(config.to_json_best_effort(indent=2))
  reread = runfs.read_config(stored)
  for c in (config, reread):
    shown = json.loads(response_format.make(c.response_format).instruction().splitlines()[-1])
    assert list(shown) == list(schema) and list(shown['properties']) == ['reasoning', 'answer']
  kept = report.run_config(stored)['response_format']['json_schema']['schema']
  assert list(kept['properties']) == ['reasoning', 'answer']
  multi = ml_collections.ConfigDict({'type': 'multi', 'graders': {'zeta': {}, 'alpha': {}}, 'calculate_output': 'x'})
  assert list(graders.locate(multi)[0]['graders']) == ['zeta', 'alpha']


def test_response_format_validates_completions_like_graders_parse_them():
  fmt = response_format.make(SCHEMA)
  assert fmt.validate('  {"answer": "7"}\n') is None
  assert fmt.validate('7') == "not a JSON object or array: '7'"
  assert fmt.validate('{"answer": ') == 'not JSON (Expecting value at line 1, column 11): \'{"answer":\''
  assert fmt.validate('{"answer": 7}') == "does not match the schema 'digit' at answer: 7 is not of type 'string'"
  assert fmt.validate('{"answer": "7", "why": "x"}').startswith("does not match the schema 'digit' at (top level)")
  messages = [{'role': 'system', 'content': 's'}, {'role': 'user', 'content': 'q'}]
  (system, user) = response_format.instruct(messages, fmt)
  assert system == messages[0] and user['content'].startswith('q\n\nReply with a JSON object only')
  assert json.loads(user['content'].split('\n')[-1]) == SCHEMA['json_schema']['schema']
  assert response_format.instruct(messages, None) is messages and messages[1]['content'] == 'q'


@pytest.mark.parametrize(
  'fmt, good, bad',
  [
    ('date-time', '2026-12-07T10:00:00.5-05:00', '2026-02-30T10:00:00Z'),
    ('time', '10:00:00Z', '25:00:00Z'),
    ('date', '2026-12-07', 'yesterday'),
    ('duration', 'P1DT2H', '3 days'),
    ('email', 'a@b.com', 'not an email'),
    ('hostname', 'api.example.com', 'exa mple'),
    ('ipv4', '10.0.0.1', '10.0.0'),
    ('ipv6', '::1', 'xyz'),
    ('uuid', '12345678-1234-5678-1234-567812345678', 'abc'),
  ],
)
def test_response_format_checks_the_string_formats_openai_enforces(fmt, good, bad):
  """OpenAI's structured outputs never produce these; they passed (jsonschema checks "format" only when asked to)."""
  schema = {'type': 'object', 'properties': {'v': {'type': 'string', 'format': fmt}, 'x': {'type': 'number'}}}
  checked = response_format.make({'type': 'json_schema', 'json_schema': {'name': 'f', 'schema': schema}})
  assert checked.validate(json.dumps({'v': good})) is None
  assert checked.validate(json.dumps({'v': bad})) == f"does not match the schema 'f' at v: {bad!r} is not a {fmt!r}"
  assert checked.validate('{"x": NaN}') == 'not JSON (NaN is not JSON): \'{"x": NaN}\''


def test_the_pool_grades_only_completions_that_match_the_format():
  g = graders.build(
    {'type': 'string_check', 'input': '{{sample.output_json.answer}}', 'reference': '{{item.a}}', 'operation': 'eq'}
  )
  with graders.GradingPool(num_workers=1, response_format=response_format.make(SCHEMA)) as pool:
    res = pool.grade(g, ['{"answer": "7"}', '{"answer": "8"}', 'seven', '{"answer": 7}'], [{'a': '7'}] * 4)
  assert [r.reward for r in res] == [1.0, 0.0, 0.0, 0.0]
  assert [r.metadata['response_format_valid'] for r in res] == [True, True, False, False]
  assert not any(r.errors for r in res)  # a format miss is the model's, not the grader's: it never stops a run
  assert res[2].metadata['response_format_error'] == "not a JSON object or array: 'seven'"
  assert graders.summarize(res, 'train')['train/response_format_valid'] == 0.5


def test_a_sub_graders_mean_counts_a_format_miss_as_zero_like_the_reward_mean():
  """`train/grader/<name>` (and events.jsonl's `scores.graders[]`) average over the completions the reward mean
  averages over: a format miss scores 0 in both. It was left out of the sub-graders' means, which rose while the
  reward fell as a run broke the format more often."""
  check = {
    'type': 'string_check',
    'input': '{{sample.output_json.answer}}',
    'reference': '{{item.a}}',
    'operation': 'eq',
  }
  g = graders.build({'type': 'multi', 'graders': {'x': check, 'y': check}, 'calculate_output': '0.5 * x + 0.5 * y'})
  with graders.GradingPool(num_workers=1, response_format=response_format.make(SCHEMA)) as pool:
    res = pool.grade(g, ['{"answer": "7"}', 'seven', 'seven', '{"answer": "8"}'], [{'a': '7'}] * 4)
  s = graders.summarize(res, 'train')
  assert s['train_reward_mean'] == s['train/grader/x'] == s['train/grader/y'] == 0.25
  assert s['train/response_format_valid'] == 0.5
  # a step none of whose completions passed keeps each sub-grader's name, at 0 (it had none: a gap in each curve)
  with graders.GradingPool(num_workers=1, response_format=response_format.make(SCHEMA)) as pool:
    res = pool.grade(g, ['seven', 'eight'], [{'a': '7'}] * 2)
  assert res[0].sub_rewards == {'x': 0.0, 'y': 0.0}
  assert {k: v for k, v in graders.summarize(res, 'train').items() if '/grader/' in k} == {
    'train/grader/x': 0.0, 'train/grader/y': 0.0
  }  # fmt: skip


def test_grade_with_a_job_file_checks_its_response_format_as_training_does(tmp_path, capsys):
  from rftjax import grade

  g = {'type': 'string_check', 'input': '{{sample.output_json.answer}}', 'reference': '{{item.a}}', 'operation': 'eq'}
  path = write_job(tmp_path, **{'method.reinforcement.grader': g})
  for sample, reward, why in (('{"answer": "8"}', 1.0, None), ('{"answer": 8}', 0.0, 'answer: 8 is not of type')):
    assert grade.main([f'--grader={path}', f'--sample={sample}', '--item={"a": "8"}']) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['reward'] == reward and out['errors'] == []
    assert why is None or why in out['metadata']['response_format_error'], out


def test_a_data_line_without_a_graded_field_is_named_by_the_jobs_grader_path(tmp_path, monkeypatch, capsys):
  """The grader came from the job file: the error names its field there, and counts the lines of the file at fault."""
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(cli, 'setup_logging', lambda verbosity=0: None)
  valid = tmp_path / 'valid.jsonl'
  row = {'messages': [{'role': 'user', 'content': 'Largest digit: 1 2 3 4'}]}
  valid.write_text('\n'.join(json.dumps(r) for r in [{**row, 'answer': '4'}, row, row]) + '\n')
  path = write_job(tmp_path, validation_file=str(valid))
  assert train.main(['rftjax.train', f'--openai_job={path}', f'--workdir={tmp_path / "run"}']) == 2
  assert capsys.readouterr().err.splitlines() == [
    'error: method.reinforcement.grader.graders.exact.reference uses {{item.answer}}, but '  # the file's first
    f"{valid}:2 has no such field: item has no key 'answer' (2 of its 3 lines lack it); expected every data line "
    'to have it'
  ]


def test_a_resume_with_another_n_epochs_lists_the_field_not_the_resolved_record(tmp_path):
  """config.openai.resolved is a JSON string of every resolved value: it made the warning a wall of escapes."""

  runs = [hparams.apply(openai_job.apply(tiny.get_config(), openai_job.read(write_job(tmp_path, **{
    f'{H}.n_epochs': n}))), 2000) for n in (1, 2)]  # fmt: skip
  previous = json.loads(runs[0].to_json_best_effort())
  assert resume.check(runs[1], previous, tmp_path) == (['eval_interval 7 -> 13', 'openai.n_epochs 1 -> 2'], [])
  del previous['data']['skip_long_prompts']  # a run started before rftjax had the setting (off by default)
  assert resume.check(runs[0], previous, tmp_path) == ([], [])


def test_a_shape_the_jobs_hyperparameters_decided_is_refused_naming_them(tmp_path):
  from rftjax import runspec

  path = write_job(tmp_path, **{f'{H}.batch_size': 3, f'{H}.compute_multiplier': 1.1})  # 3 x 9 = 27 rows
  resolved = hparams.apply(openai_job.apply(tiny.get_config(), openai_job.read(path)), 2000)
  with pytest.raises(errors.ConfigError) as e:
    runspec.check(resolved, devices=8, inputs=False)
  assert str(e.value) == (
    f'{H}.batch_size in {path} x {H}.compute_multiplier in {path} = 3 x 9 = 27 rows: expected a multiple of the mesh '
    'data x fsdp = 8, which splits them'
  )
