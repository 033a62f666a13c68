"""Grader files as users write them: fields a grader type does not take, keys given twice, OpenAI job files and
/graders/run bodies as grader files, and the grade CLI's flags."""

import json

import pytest

from test_graders import OUT, multi_spec, run_cli

from rftjax import graders

SIM = {'type': 'text_similarity', 'input': OUT, 'reference': '{{item.ref}}', 'evaluation_metric': 'fuzzy_match'}
PY = {'type': 'python', 'source': 'def grade(sample, item):\n  return 1.0\n'}


@pytest.mark.parametrize(
  'spec, message',
  [
    (
      {**SIM, 'pass_treshold': 0.8},
      'grader.pass_treshold: unknown field of a text_similarity grader; did you mean pass_threshold?; known: type, '
      'name, input, reference, evaluation_metric, pass_threshold',
    ),
    (
      {**PY, 'timeout': 2},
      'grader.timeout: unknown field of a python grader; did you mean timeout_s?; known: type, name, source, '
      'image_tag, timeout_s',
    ),
    (  # the typo is named as such, not as the required field it hides
      {'type': 'string_check', 'input': OUT, 'refrence': 'x', 'operation': 'eq'},
      'grader.refrence: unknown field of a string_check grader; did you mean reference?; known: type, name, input, '
      'reference, operation',
    ),
    (
      {**multi_spec(), 'calculate': 'exact'},
      'multi.calculate: unknown field of a multi grader; did you mean calculate_output?; known: type, name, graders, '
      'calculate_output',
    ),
    (
      {'type': 'multi', 'name': 'combo', 'calculate_output': 'a', 'graders': {'a': {**SIM, 'weight': 2}}},
      'combo.graders.a.weight: unknown field of a text_similarity grader; known: type, name, input, reference, '
      'evaluation_metric, pass_threshold',
    ),
    ({**SIM, 'name': 3}, 'grader.name: expected str, found int 3'),
    (
      {'type': 'score_model', 'input': [{'role': 'user', 'content': 'x'}], 'model': 'm', 'max_retries': -1},
      'grader.max_retries: expected a whole number >= 0, found -1',
    ),
  ],
)
def test_a_field_the_type_does_not_take_is_named_with_the_closest_known_one(spec, message):
  with pytest.raises(graders.GraderConfigError) as e:
    graders.build(spec)
  assert str(e.value) == message


def test_every_field_openai_documents_is_accepted():
  judge = {'input': [{'role': 'user', 'content': 'x'}], 'model': 'm', 'sampling_params': {'temperature': 0}}
  specs = [
    {**SIM, 'name': 'sim', 'pass_threshold': 0.8},
    {**PY, 'name': 'py', 'image_tag': '2025-05-08', 'timeout_s': 3},  # image_tag: accepted, ignored
    {'type': 'score_model', 'name': 'judge', **judge, 'range': [0, 10], 'pass_threshold': 7, 'max_retries': 0},
    {'type': 'label_model', 'name': 'label', **judge, 'labels': ['a', 'b'], 'passing_labels': ['a']},
    {'type': 'multi', 'name': 'm', 'graders': {'s': SIM}, 'calculate_output': 's'},
  ]
  assert [graders.build(s).type for s in specs] == ['text_similarity', 'python', 'score_model', 'label_model', 'multi']
  (r,) = graders.build(specs[0]).grade_batch(['abc'], [{'ref': 'abd'}])
  assert r.metadata == {'passed': False} and r.reward == pytest.approx(2 / 3)  # 0.667 < pass_threshold 0.8


def test_a_key_given_twice_in_a_grader_file_is_named_by_its_json_path(tmp_path):
  path = tmp_path / 'g.json'
  path.write_text('{"type": "string_check", "input": "x", "reference": "y", "operation": "eq", "operation": "ne"}')
  with pytest.raises(graders.GraderConfigError) as e:
    graders.build(str(path))
  assert str(e.value) == (
    f'grader file {path}: operation: the key \'operation\' appears twice in one object (first "eq", then "ne"); '
    'expected each key once (a JSON reader keeps only the last, silently)'
  )
  nested = json.dumps(multi_spec()).replace('"operation": "eq"', '"operation": "eq", "operation": "ne"')
  path.write_text(nested)
  with pytest.raises(graders.GraderConfigError, match=r"g\.json: graders\.exact\.operation: the key 'operation'"):
    graders.build(str(path))
  path.write_text('[{"a": 1}, {"b": {"c": [1, {"d": 1, "d": 2}]}}]')
  with pytest.raises(graders.GraderConfigError, match=r"g\.json: \[1\]\.b\.c\[1\]\.d: the key 'd' appears twice"):
    graders.load(str(path))


def test_a_grader_file_may_start_with_a_byte_order_mark_but_must_be_utf8(tmp_path):
  """Windows editors write a BOM; data files accepted it and grader or job files did not."""
  path = tmp_path / 'g.json'
  spec = {'type': 'string_check', 'input': '{{sample.output_text}}', 'reference': 'y', 'operation': 'eq'}
  path.write_bytes(b'\xef\xbb\xbf' + json.dumps(spec).encode())
  assert graders.load(str(path)) == spec
  latin1 = json.dumps(spec).replace('"y"', '"caf\xe9"')
  path.write_bytes(latin1.encode('latin-1'))
  with pytest.raises(graders.GraderConfigError) as e:
    graders.load(str(path))
  offset = latin1.index('caf') + 3
  assert str(e.value).endswith(
    f'g.json: not UTF-8 text: byte 0xe9 at byte offset {offset}; expected UTF-8 (re-save the file as UTF-8)'
  )


def job_body(grader):
  return {
    'model': 'tiny',
    'training_file': 't.jsonl',
    'method': {'type': 'reinforcement', 'reinforcement': {'grader': grader}},
  }


def test_a_job_file_as_grader_uses_its_grader_and_names_its_json_path(tmp_path, capsys):
  from rftjax import grade

  job = tmp_path / 'job.json'
  job.write_text(json.dumps(job_body(multi_spec())))
  spec, at = graders.locate(str(job))
  assert (spec, at) == (multi_spec(), 'method.reinforcement.grader')
  r = run_cli(f'--grader={job}', '--sample=abc', '--item={"ref": "abc"}')
  assert r.returncode == 0 and json.loads(r.stdout)['sub_rewards'] == {'exact': 1.0, 'close': 1.0}, r.stderr
  r = run_cli(f'--grader={job}', '--validate')
  assert json.loads(r.stdout) == {'valid': True, 'type': 'multi', 'name': 'multi', 'grader_at': at}
  typo = multi_spec()
  typo['graders']['exact']['refrence'] = typo['graders']['exact'].pop('reference')
  job.write_text(json.dumps(job_body(typo)))
  r = run_cli(f'--grader={job}', '--validate')
  assert r.returncode == 2 and r.stderr.startswith(
    'error: method.reinforcement.grader.graders.exact.refrence: unknown field of a string_check grader; '
    'did you mean reference?'
  )
  # an {{item...}} the data lacks is named by the same path
  data, samples = tmp_path / 'd.jsonl', tmp_path / 's.jsonl'
  data.write_text('{"answer": "abc"}\n')
  samples.write_text('"abc"\n')
  job.write_text(json.dumps(job_body(multi_spec())))
  with pytest.raises(SystemExit):
    grade.main([f'--grader={job}', f'--data={data}', f'--samples={samples}'])
  assert capsys.readouterr().err.startswith(
    f'error: method.reinforcement.grader.graders.exact.reference uses {{{{item.ref}}}}, but {data}:1 has no such '
  )
  job.write_text(json.dumps({**job_body(None), 'method': {'type': 'reinforcement', 'reinforcement': {}}}))
  with pytest.raises(graders.GraderConfigError) as e:
    graders.build(str(job))
  assert str(e.value) == (
    f"grader file {job}: this looks like an OpenAI fine-tuning job file (it has 'method' or 'training_file'), whose "
    'grader is at method.reinforcement.grader, but method.reinforcement.grader is missing; expected a grader object '
    'there'
  )


def test_check_items_names_the_graders_json_path_in_a_job_file(tmp_path):
  job = tmp_path / 'job.json'
  job.write_text(json.dumps(job_body(multi_spec())))
  with pytest.raises(graders.GraderConfigError) as e:
    graders.check_items(str(job), [('d.jsonl:1', {'answer': 'abc'})])
  assert str(e.value).startswith(
    'method.reinforcement.grader.graders.exact.reference uses {{item.ref}}, but d.jsonl:1 has no such field'
  )


def test_a_reference_that_is_a_list_in_the_data_is_named_before_grading():
  """open-instruct rows may hold ground_truth as a list: rendered as JSON text it matched no answer, silently."""
  spec = {'type': 'math', 'input': OUT, 'reference': '{{item.ground_truth}}'}
  with pytest.raises(graders.GraderConfigError) as e:
    graders.check_items(spec, [('d.jsonl:1', {'ground_truth': '27'}), ('d.jsonl:2', {'ground_truth': ['27']})])
  assert str(e.value) == (
    'grader.reference uses {{item.ground_truth}}, but at d.jsonl:2 it is a JSON list (["27"]), which the grader '
    'compares as its JSON text; expected text or a number, e.g. {{item.ground_truth[0]}} (open-instruct rows may '
    'hold a list of answers)'
  )
  graders.check_items({**spec, 'reference': '{{item.ground_truth[0]}}'}, [('d.jsonl:2', {'ground_truth': ['27']})])
  graders.check_items(spec, [('d.jsonl:1', {'ground_truth': 27})])  # a number is its text


@pytest.mark.parametrize(
  'flag, message',
  [
    ('--timeout_s=-1', "argument --timeout_s: found '-1', expected a number > 0"),
    ('--timeout_s=0', "argument --timeout_s: found '0', expected a number > 0"),
    ('--budget_s=0', "argument --budget_s: found '0', expected a number > 0"),
    ('--budget_s=inf', "argument --budget_s: found 'inf', expected a number > 0"),
    ('--num_workers=0', "argument --num_workers: found '0', expected an integer > 0"),
    ('--num_workers=1.5', "argument --num_workers: found '1.5', expected an integer > 0"),
    ('--memory_mb=0', "argument --memory_mb: found '0', expected an integer >= 64"),
    ('--memory_mb=63', "argument --memory_mb: found '63', expected an integer >= 64"),
  ],
)
def test_grade_refuses_deadlines_budgets_and_workers_of_zero_or_less(tmp_path, capsys, flag, message):
  from rftjax import grade

  g = tmp_path / 'g.json'
  g.write_text(json.dumps(SIM))
  with pytest.raises(SystemExit) as e:
    grade.main([f'--grader={g}', '--sample=abc', flag])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.splitlines()[-1] == f'python -m rftjax.grade: error: {message}', err


def test_grade_reads_the_completions_rftjax_sample_writes(tmp_path, capsys):
  from rftjax import grade

  g = tmp_path / 'g.json'
  g.write_text(json.dumps({'type': 'string_check', 'input': OUT, 'reference': '{{item.ref}}', 'operation': 'eq'}))
  # rftjax.sample's lines: the prompt line's fields, then source, completion, tokens, logprobs, truncated
  rows = [
    {'messages': [{'role': 'user', 'content': 'q'}], 'ref': ref, 'source': f'p.jsonl:{k + 1}', 'completion': out,
     'tokens': [1], 'logprobs': [-0.1], 'truncated': False}
    for k, (ref, out) in enumerate([('4', '4'), ('5', '6'), ('7', '7'), ('8', '8')])
  ]  # fmt: skip
  out = tmp_path / 'out.jsonl'
  out.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  assert grade.main([f'--grader={g}', f'--data={out}', f'--samples={out}']) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary['grade_reward_mean'] == 0.75 and summary['grade/num_graded'] == 4.0
  out.write_text('{"text": "4"}\n')
  with pytest.raises(SystemExit):
    grade.main([f'--grader={g}', f'--data={out}', f'--samples={out}'])
  assert capsys.readouterr().err == (
    f"error: {out}:1: expected a JSON string or an object with a string 'output_text' or 'completion' or 'sample' "
    '(the output of rftjax.sample and rftjax.evaluate has "completion"), found {"text": "4"}\n'
  )


def test_a_graders_run_body_grades_its_own_sample_and_item(tmp_path):
  body = tmp_path / 'run.json'
  body.write_text(json.dumps({'grader': multi_spec(), 'model_sample': 'abc', 'item': {'ref': 'abc'}}))
  r = run_cli(f'--grader={body}')  # OpenAI's /graders/run request as it is
  assert r.returncode == 0 and json.loads(r.stdout)['sub_rewards'] == {'exact': 1.0, 'close': 1.0}, r.stderr
  r = run_cli(f'--grader={body}', '--sample=xyz')  # a flag wins over the body
  assert r.returncode == 0 and json.loads(r.stdout)['sub_rewards']['exact'] == 0.0, r.stderr
  r = run_cli(f'--grader={body}', '--validate', '--sample=abc')
  assert r.returncode == 2 and r.stderr == (
    'error: --validate only checks the grader: drop --sample, --sample_file, --data and --samples\n'
  )
  r = run_cli(f'--grader={body}', '--sample=abc', f'--sample_file={body}')
  assert r.returncode == 2 and r.stderr == 'error: give one of --sample or --sample_file\n'


def test_grade_says_when_every_grading_failed_in_part(tmp_path, capsys):
  from rftjax import grade

  g, data, samples = tmp_path / 'multi.json', tmp_path / 'd.jsonl', tmp_path / 's.jsonl'
  g.write_text(json.dumps({'type': 'multi', 'calculate_output': '0.5 * ok + 0.5 * boom', 'graders': {
    'ok': {'type': 'string_check', 'name': 'ok', 'input': OUT, 'reference': '{{item.answer}}', 'operation': 'eq'},
    'boom': {'type': 'python', 'name': 'boom', 'source': 'def grade(s, i):\n  return 1 / 0\n'},
  }}))  # fmt: skip
  data.write_text('{"answer": "4"}\n{"answer": "5"}\n')
  samples.write_text('"4"\n"4"\n')
  assert grade.main([f'--grader={g}', f'--data={data}', f'--samples={samples}']) == 1
  captured = capsys.readouterr()
  assert json.loads(captured.out)['grade_reward_mean'] == 0.25  # the string_check's half, for the first sample
  assert captured.err == (
    'error: all 2 gradings failed (in part: the rewards count what failed as 0): python_grader_runtime in 2, e.g. '
    'ZeroDivisionError: division by zero (grader boom, line 2)\n'
  )
  data.write_text('{"answer": "5"}\n{"answer": "5"}\n')  # the string_check ran, and its 0s are scores
  assert grade.main([f'--grader={g}', f'--data={data}', f'--samples={samples}']) == 1
  assert capsys.readouterr().err.startswith('error: all 2 gradings failed (in part: the rewards count what failed')
  boom = tmp_path / 'boom.json'  # nothing but what failed: zeros that mean nothing
  boom.write_text(json.dumps(json.loads(g.read_text())['graders']['boom']))
  assert grade.main([f'--grader={boom}', f'--data={data}', f'--samples={samples}']) == 1
  assert capsys.readouterr().err.startswith('error: all 2 gradings failed: python_grader_runtime in 2, e.g.')
