"""In-process graders, templates, formulas, config errors, metrics, model judges (stub server) and the CLI."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

import local_http

from rftjax import graders
from rftjax.graders import core
from rftjax.graders import formula
from rftjax.graders import text_graders

OUT = '{{sample.output_text}}'


def sc(op, reference='{{item.ref}}', input_=OUT):
  return graders.build({'type': 'string_check', 'name': 's', 'input': input_, 'reference': reference, 'operation': op})


def rewards(g, samples, items):
  return [r.reward for r in g.grade_batch(samples, items)]


# string_check ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  'op,sample,ref,expected',
  [
    ('eq', 'Paris', 'Paris', 1.0),
    ('eq', 'paris', 'Paris', 0.0),
    ('eq', 'Paris ', 'Paris', 0.0),
    ('ne', 'Paris', 'Paris', 0.0),
    ('ne', 'paris', 'Paris', 1.0),
    ('like', 'The capital is Paris.', 'Paris', 1.0),
    ('like', 'the capital is paris.', 'Paris', 0.0),
    ('like', 'Par', 'Paris', 0.0),  # reference in input, not the reverse
    ('ilike', 'the capital is PARIS.', 'Paris', 1.0),
    ('ilike', 'Lyon', 'Paris', 0.0),
    ('like', 'anything', '', 1.0),  # the empty string is a substring of every string
  ],
)
def test_string_check(op, sample, ref, expected):
  assert rewards(sc(op), [sample], [{'ref': ref}]) == [expected]


def test_string_check_templates_nested_and_errors():
  g = sc('eq', reference='{{item.answers[1].text}}')
  assert rewards(g, ['b', 'a'], [{'answers': [{'text': 'a'}, {'text': 'b'}]}] * 2) == [1.0, 0.0]
  missing = g.grade_batch(['b'], [{'answers': [{'text': 'a'}]}])[0]
  assert missing.reward == 0.0 and missing.errors[0].category == 'invalid_variable'
  assert 'answers' in missing.errors[0].message
  j = sc('eq', reference='yes', input_='{{sample.output_json.ok}}')
  assert rewards(j, ['{"ok": "yes"}'], [{}]) == [1.0]
  bad = j.grade_batch(['not json'], [{}])[0]
  assert bad.errors[0].category == 'sample_parse'
  mixed = sc('eq', reference='{{ item.a }}-{{item.b}}')
  assert rewards(mixed, ['1-x'], [{'a': 1, 'b': 'x'}]) == [1.0]


# text_similarity -------------------------------------------------------------------------------------------------
def ts(metric, threshold=None):
  spec = {'type': 'text_similarity', 'input': OUT, 'reference': '{{item.ref}}', 'evaluation_metric': metric}
  if threshold is not None:
    spec['pass_threshold'] = threshold
  return graders.build(spec)


def test_text_similarity_hand_computed():
  # Indel similarity: "abc" vs "abd" needs 2 edits over 6 characters.
  assert rewards(ts('fuzzy_match'), ['abc'], [{'ref': 'abd'}])[0] == pytest.approx(4 / 6)
  # ROUGE-1 "the cat sat" vs "the cat": P = 2/3, R = 1, F = 0.8.
  assert rewards(ts('rouge_1'), ['the cat sat'], [{'ref': 'the cat'}])[0] == pytest.approx(0.8)
  # ROUGE-2: bigrams {the cat, cat sat} vs {the cat}: P = 1/2, R = 1, F = 2/3.
  assert rewards(ts('rouge_2'), ['the cat sat'], [{'ref': 'the cat'}])[0] == pytest.approx(2 / 3)
  for metric in text_graders.SIMILARITY_METRICS:
    same = 'the quick brown fox jumps over the lazy dog today'
    assert rewards(ts(metric), [same], [{'ref': same}])[0] == pytest.approx(1.0, abs=2e-3), metric
  r = ts('rouge_1', threshold=0.9).grade_batch(['the cat sat'], [{'ref': 'the cat'}])[0]
  assert r.metadata['passed'] is False and r.reward == pytest.approx(0.8)


def test_text_similarity_matches_libraries():
  import sacrebleu
  from nltk.translate import gleu_score, meteor_score
  from rapidfuzz import fuzz
  from rouge_score import rouge_scorer

  hyp, ref = 'the cat is on the mat today', 'there is a cat on the mat'
  got = {m: rewards(ts(m), [hyp], [{'ref': ref}])[0] for m in text_graders.SIMILARITY_METRICS}
  assert got['fuzzy_match'] == pytest.approx(fuzz.ratio(hyp, ref) / 100)
  assert got['bleu'] == pytest.approx(sacrebleu.sentence_bleu(hyp, [ref]).score / 100)
  assert got['gleu'] == pytest.approx(gleu_score.sentence_gleu([ref.split()], hyp.split()))
  scorer = rouge_scorer.RougeScorer(['rouge3', 'rougeL'])
  assert got['rouge_3'] == pytest.approx(scorer.score(ref, hyp)['rouge3'].fmeasure)
  assert got['rouge_l'] == pytest.approx(scorer.score(ref, hyp)['rougeL'].fmeasure)
  # METEOR without the WordNet corpus: exact + stem matches only.
  assert got['meteor'] == pytest.approx(
    meteor_score.meteor_score([ref.split()], hyp.split(), wordnet=text_graders._NoSynonyms())
  )
  assert 0.0 < got['meteor'] < 1.0


def test_text_similarity_reads_every_script():
  """rouge-score's tokenizer kept only [a-z0-9]: an exact answer in Chinese or Russian scored 0, and 'Москва, 2024'
  matched 'Киев, 2024' on its digits (1.0, passed); bleu took a Chinese sentence (no spaces) for one word. On ASCII
  text the tokens are the libraries' own (test_text_similarity_matches_libraries)."""
  from rouge_score import tokenize

  for metric in text_graders.SIMILARITY_METRICS:
    for same in (
      '我喜欢吃苹果和香蕉',
      'Москва — столица России и самый большой город страны',
      'القاهرة هي عاصمة مصر وأكبر مدنها من حيث عدد السكان',
    ):
      assert rewards(ts(metric), [same], [{'ref': same}])[0] == pytest.approx(1.0, abs=0.06), (metric, same)
  # ROUGE-L by hand: the common subsequence of one word in two; 东京 vs 北京: 2 of 3 characters
  assert rewards(ts('rouge_l'), ['Москва, 2024'], [{'ref': 'Киев, 2024'}])[0] == pytest.approx(0.5)
  assert rewards(ts('rouge_1'), ['东京 2020'], [{'ref': '北京 2020'}])[0] == pytest.approx(2 / 3)
  # bleu with each ideograph a word: 4 of 6 unigrams, 3 of 5 bigrams, 2 of 4, 1 of 3: (4/6*3/5*2/4*1/3)^(1/4)
  bleu = rewards(ts('bleu'), ['我喜欢吃苹果'], [{'ref': '我喜欢吃香蕉'}])[0]
  assert bleu == pytest.approx((4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
  ascii_text = "It's 3.5 km -- the cat_sat, on THE mat!"
  assert text_graders._RougeWords().tokenize(ascii_text) == tokenize.tokenize(ascii_text, None)
  # vowel signs are part of their word: 'मैं' (I) is not 'में' (in), nor 'ไม่' (not) 'ไม้' (wood)
  assert rewards(ts('rouge_1'), ['मैं', 'ไม่'], [{'ref': 'में'}, {'ref': 'ไม้'}]) == [0.0, 0.0]
  # ASCII text keeps sacrebleu's 13a, escapes and padding included ('zh' only where there are ideographs)
  import sacrebleu

  for hyp, ref in (('The answer is 3.', 'The answer is 3'), ('A &amp; B', 'A & B'), ('5,000', '5,000.')):
    assert rewards(ts('bleu'), [hyp], [{'ref': ref}])[0] == pytest.approx(
      sacrebleu.sentence_bleu(hyp, [ref]).score / 100
    )


def test_meteor_without_wordnet_says_so_when_built(monkeypatch, caplog):
  import nltk

  def absent(name):
    raise LookupError(name)

  monkeypatch.setattr(nltk.data, 'find', absent)
  text_graders._wordnet.cache_clear()
  try:
    with caplog.at_level('WARNING', logger='rftjax.graders.text_graders'):
      ts('meteor')
    assert [m for m in caplog.messages if "'meteor': nltk's WordNet corpus is not installed" in m], caplog.messages
    assert isinstance(text_graders._wordnet(), text_graders._NoSynonyms)
  finally:
    text_graders._wordnet.cache_clear()


# formula and multi -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  'text,expected',
  [
    ('1 + 2 * 3', 7.0),
    ('(1 + 2) * 3', 9.0),
    ('2 ^ 3 ^ 2', 512.0),
    ('-2 ^ 2', -4.0),
    ('2 * 3 ^ 2', 18.0),
    ('10 - 4 - 3', 3.0),
    ('12 / 3 / 2', 2.0),
    ('a + b * c', 1 + 0.5 * 4),
    ('min(a, b, c) + max(a, b)', 1.5),
    ('abs(-a) + floor(2.7) + ceil(2.1)', 6.0),
    ('exp(0) + sqrt(c) + log(1)', 3.0),
    ('2^-1', 0.5),
    ('0.5 * a + 0.5 * b', 0.75),
    ('-(a - c)', 3.0),
    ('1e-1 * c', 0.4),
    ('+a', 1.0),
  ],
)
def test_formula(text, expected):
  assert formula.Formula(text, {'a', 'b', 'c'}).evaluate({'a': 1.0, 'b': 0.5, 'c': 4.0}) == pytest.approx(expected)


@pytest.mark.parametrize(
  'text,needle',
  [
    ('a +', 'end of formula'),
    ('a * (b', "')'"),
    ('d + 1', "unknown name 'd'"),
    ('a $ b', "'$'"),
    ('min(a)', 'at least 2'),
    ('sqrt(a, b)', 'exactly 1'),
    ("__import__('os')", 'unexpected character'),
    ('', 'non-empty'),
    ('a b', "unexpected 'b'"),
  ],
)
def test_formula_errors(text, needle):
  with pytest.raises(graders.GraderConfigError, match='calculate_output') as e:
    formula.Formula(text, {'a', 'b'})
  assert needle in str(e.value)


def test_formula_runtime_errors():
  f = formula.Formula('a / b + log(b)', {'a', 'b'})
  with pytest.raises(Exception) as e:
    f.evaluate({'a': 1.0, 'b': 0.0})
  assert e.value.category == 'formula_parse'


def multi_spec():
  return {
    'type': 'multi',
    'graders': {
      'exact': {'type': 'string_check', 'input': OUT, 'reference': '{{item.ref}}', 'operation': 'eq'},
      'close': {
        'type': 'text_similarity',
        'input': OUT,
        'reference': '{{item.ref}}',
        'evaluation_metric': 'fuzzy_match',
      },
    },
    'calculate_output': '0.5 * exact + 0.5 * close ^ 2',
  }


def test_field_and_sub_grader_names_in_any_script():
  """{{item.答案}} failed at build ('is not a path'), and a multi sub-grader named réponse passed the name check, then
  its calculate_output failed on 'é'."""
  g = graders.build({'type': 'string_check', 'input': OUT, 'reference': '{{item.答案}}', 'operation': 'eq'})
  assert [r.reward for r in g.grade_batch(['四', '五'], [{'答案': '四'}] * 2)] == [1.0, 0.0]
  eq = lambda ref: {'type': 'string_check', 'input': OUT, 'reference': ref, 'operation': 'eq'}  # noqa: E731
  m = graders.build({'type': 'multi', 'graders': {'réponse': eq('{{item.réponse}}'), '正確': eq('x')},
                     'calculate_output': '0.25 * réponse + 0.75 * 正確'})  # fmt: skip
  assert [r.reward for r in m.grade_batch(['a', 'x'], [{'réponse': 'a'}] * 2)] == [0.25, 0.75]
  with pytest.raises(graders.GraderConfigError, match=r'\{item\.答案\}'):
    graders.build({'type': 'string_check', 'input': OUT, 'reference': '{item.答案}', 'operation': 'eq'})
  # Devanagari's vowel signs are combining marks, which \w lacks: the name is one name all the same; a field name
  # a .name step cannot spell is reached by brackets, as the error says
  hi = graders.build({'type': 'multi', 'graders': {'उत्तर': eq('{{item["उत्तर"]}}'), 'x': eq('x')},
                      'calculate_output': '0.5 * उत्तर + 0.5 * x'})  # fmt: skip
  assert [r.reward for r in hi.grade_batch(['a', 'x'], [{'उत्तर': 'a'}] * 2)] == [0.5, 0.5]
  with pytest.raises(graders.GraderConfigError, match=r'\(a field named otherwise: \{\{item\["the field"\]\}\}\)$'):
    graders.build(eq('{{item.उत्तर}}'))


def test_multi_inline():
  g = graders.build(multi_spec())
  r = g.grade_batch(['abc', 'abd'], [{'ref': 'abc'}] * 2)
  assert r[0].reward == pytest.approx(1.0) and r[0].sub_rewards == {'exact': 1.0, 'close': 1.0}
  assert r[1].reward == pytest.approx(0.5 * (4 / 6) ** 2)
  bad = g.grade_batch(['abc'], [{}])[0]  # both sub-graders miss item.ref
  assert bad.reward == 0.0 and {e.category for e in bad.errors} == {'invalid_variable'}
  assert bad.errors[0].message.startswith('exact:')


# config errors ---------------------------------------------------------------------------------------------------
def test_a_python_grader_importing_a_module_only_this_process_sees_is_refused(tmp_path, monkeypatch):
  """A helper beside the grader (current folder, PYTHONPATH) passed the build check and then failed every grading
  with ModuleNotFoundError: the sandbox worker runs `python -E -s`, which sees neither."""
  (tmp_path / 'helper_mod.py').write_text('ANSWER = 1\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  source = 'import json\nimport helper_mod\ndef grade(s, i):\n  return helper_mod.ANSWER\n'
  with pytest.raises(graders.GraderConfigError) as e:
    graders.build({'type': 'python', 'source': source})
  assert str(e.value) == (
    f'grader.source: line 2 imports helper_mod, found here at {tmp_path / "helper_mod.py"} but not by graders: their '
    "worker sees only the Python environment's own packages (no current folder, PYTHONPATH or user site); put its "
    "code into the grader source (a config file can join the files: source = helper.read_text() + '\\n' + "
    'grade.read_text())'
  )
  graders.build({'type': 'python', 'source': 'import sympy, math, sys\ndef grade(s, i):\n  return 1\n'})


@pytest.mark.parametrize(
  'spec,needle',
  [
    (
      {'type': 'string_check', 'input': OUT, 'reference': 'x', 'operation': 'like2'},
      "grader.operation: found 'like2', expected one of ['eq', 'ne', 'like', 'ilike']",
    ),
    ({'type': 'string_check', 'input': OUT, 'operation': 'eq'}, "missing required field 'reference'"),
    (
      {'type': 'string_check', 'input': 3, 'reference': 'x', 'operation': 'eq'},
      'grader.input: expected str, found int',
    ),
    ({'type': 'nope'}, "grader.type: found 'nope'"),
    ({'type': 'string_check', 'input': '{{output_text}}', 'reference': 'x', 'operation': 'eq'}, 'not a path'),
    ({'type': 'text_similarity', 'input': OUT, 'reference': 'x', 'evaluation_metric': 'cosine'}, 'embedding'),
    ({'type': 'text_similarity', 'input': OUT, 'reference': 'x', 'evaluation_metric': 'rouge_6'}, 'rouge_6'),
    ({'type': 'python', 'source': 'def grade(sample, item):\n  return 1 +\n'}, 'syntax error at line 2'),
    ({'type': 'python', 'source': 'def score(sample, item):\n  return 1\n'}, 'no top-level `def grade'),
    ({'type': 'python', 'source': './grade_digit.py'}, "grader.source: './grade_digit.py' is a file name; expected"),
    ({'type': 'python', 'source': 'def grade(sample):\n  return 1\n'}, 'expected grade(sample, item)'),
    (
      {'type': 'python', 'source': 'def grade(sample, item,\n          extra):\n  return 1\n'},
      'grader.source: grade(sample, item, extra) at line 1 cannot be called as grade(sample, item)',
    ),
    ({'type': 'python', 'source': 'def grade(sample, item, *, k):\n  return 1\n'}, 'grade(sample, item, *, k) at'),
    (
      {'type': 'python', 'source': 'import json\nfrom no_such_module.sub import x\ndef grade(s, i):\n  return 1\n'},
      'grader.source: line 2 imports no_such_module.sub, which is not installed where rftjax runs',
    ),
    (
      {'type': 'string_check', 'input': '{{sample.output}}', 'reference': 'x', 'operation': 'eq'},
      "grader.input: template variable {{sample.output}}: the sample has no field 'output'; expected one of "
      'output_text, output_json, output_tools, choices; did you mean sample.output_text?',
    ),
    (
      {'type': 'string_check', 'input': OUT, 'reference': 'is {{item.answer}', 'operation': 'eq'},
      "grader.reference: '{{item.answer' in 'is {{item.answer}' is not a template variable; expected "
      '{{sample.<field>}} or {{item.<field>}} with two braces on each side',
    ),
    (
      {'type': 'string_check', 'input': OUT, 'reference': '{item.answer}}', 'operation': 'eq'},
      "grader.reference: '{item.answer}}' in '{item.answer}}' is not a template variable",
    ),
    ({'type': 'python', 'source': 'def grade(s, i): return 1', 'timeout_s': -1}, 'positive number'),
    (
      {'type': 'score_model', 'input': [{'role': 'user', 'content': 'x'}], 'model': 'm', 'range': [1, 0]},
      'grader.range: expected [low, high]',
    ),
    (
      {
        'type': 'label_model',
        'input': [{'role': 'user', 'content': 'x'}],
        'model': 'm',
        'labels': ['a'],
        'passing_labels': ['b'],
      },
      'passing_labels: expected a non-empty subset',
    ),
    (
      {
        'type': 'label_model',
        'input': [{'role': 'robot', 'content': 'x'}],
        'model': 'm',
        'labels': ['a'],
        'passing_labels': ['a'],
      },
      'grader.input[0].role',
    ),
    (
      {
        'type': 'multi',
        'graders': {'a-b': {'type': 'string_check', 'input': OUT, 'reference': 'x', 'operation': 'eq'}},
        'calculate_output': '1',
      },
      "'a-b'",
    ),
    (
      {
        'type': 'multi',
        'graders': {'a': {'type': 'string_check', 'input': OUT, 'reference': 'x', 'operation': 'eq'}},
        'calculate_output': 'a + b',
      },
      "unknown name 'b'",
    ),
    (
      {
        'type': 'multi',
        'graders': {'a': {'type': 'string_check', 'input': OUT, 'reference': 'x', 'operation': 'xx'}},
        'calculate_output': 'a',
      },
      'multi.graders.a.operation',
    ),
    ({'type': 'code', 'input': OUT, 'tests': []}, 'non-empty list'),
    ({'type': 'math', 'input': OUT}, "missing required field 'reference'"),
    # a local judge's sampling values: top_p 0 kept every token (full random sampling), -1 was greedy, 0 tokens 256
    *(
      (
        {'type': 'score_model', 'input': [], 'model': 'm', 'range': [0, 1], 'sampling_params': params},
        f'grader.sampling_params.{said}',
      )
      for params, said in (
        ({'top_p': 0}, 'top_p: expected a number in (0, 1] (1 = off), got 0'),
        ({'temperature': -1}, 'temperature: expected 0 (greedy) or a number >= 1e-05, got -1'),
        ({'temperature': 1e-38}, 'temperature: expected 0 (greedy) or a number >= 1e-05, got 1e-38'),
        ({'max_completions_tokens': 0}, 'max_completions_tokens: expected an integer >= 1, got 0'),
        ({'seed': 'x'}, 'seed: expected an integer >= 0, got "x"'),
        ({'temperture': 0.2}, 'temperture: unknown field; did you mean temperature?; known: temperature, top_p, '),
      )
    ),
    # a judge reads text: an image part was dropped, and the judge scored without it
    (
      {
        'type': 'label_model',
        'model': 'm',
        'labels': ['a'],
        'passing_labels': ['a'],
        'input': [
          {
            'role': 'user',
            'content': [{'type': 'input_text', 'text': 'Is it a cat?'}, {'type': 'input_image', 'image_url': 'x'}],
          }
        ],
      },
      'grader.input[0].content[1].type: found "input_image", expected one of input_text, output_text, text: the judge '
      'reads text only',
    ),  # fmt: skip
  ],
)
def test_config_errors(spec, needle):
  with pytest.raises(graders.GraderConfigError) as e:
    graders.validate(spec)
  assert needle in str(e.value)


def test_templates_keep_braces_that_are_not_variables_and_read_output_tools():
  spec = {'type': 'string_check', 'input': '{"a": {"b": {{item.n}}}} {sample} {{sample.output_tools}}',
          'reference': '{"a": {"b": 4}} {sample} []', 'operation': 'eq'}  # fmt: skip
  assert rewards(graders.build(spec), ['x'], [{'n': 4}]) == [1.0]


CALLING = (
  'Looking it up.\n<tool_call>\n{"name": "get_acceptors", "arguments": {"smiles": "CCO", "n": 2}}\n</tool_call>\n'
  '<tool_call>{"name": 5}</tool_call>'  # not a call a host could run: left out, as it is of tool_calls
)


def test_output_tools_and_choices_are_shaped_as_openai_graders_read_them():
  """OpenAI's graders guide reads a function call as {{sample.output_tools[0].function.name}}; before, output_tools
  was always [] and that template failed on every sample (invalid_variable)."""
  by_name = {'type': 'string_check', 'name': 'fn', 'input': '{{sample.output_tools[0].function.name}}',
             'reference': '{{item.fn}}', 'operation': 'eq'}  # fmt: skip
  assert rewards(graders.build(by_name), [CALLING], [{'fn': 'get_acceptors'}]) == [1.0]
  no_call = graders.build(by_name).grade_batch(['CCO has one acceptor.'], [{'fn': 'get_acceptors'}])[0]
  assert no_call.reward == 0.0 and no_call.errors[0].category == 'invalid_variable'
  args = {'type': 'string_check', 'name': 'args', 'operation': 'eq', 'reference': '{"smiles": "CCO", "n": 2}',
          'input': '{{sample.choices[0].message.tool_calls[0].function.arguments}}'}  # fmt: skip
  assert rewards(graders.build(args), [CALLING], [{}]) == [1.0]  # a JSON string, as the API carries it
  content = {'type': 'string_check', 'name': 'c', 'input': '{{sample.choices[0].message.content}}',
             'reference': '{{item.text}}', 'operation': 'eq'}  # fmt: skip
  assert rewards(graders.build(content), [CALLING, 'plain'], [{'text': CALLING}, {'text': 'plain'}]) == [1.0, 1.0]
  with pytest.raises(graders.GraderConfigError, match='output_text, output_json, output_tools, choices'):
    graders.build({**content, 'input': '{{sample.output_audio}}'})


def test_build_from_file(tmp_path):
  path = tmp_path / 'g.json'
  path.write_text(json.dumps({'grader': {'type': 'string_check', 'input': OUT, 'reference': 'a', 'operation': 'eq'}}))
  assert graders.build(str(path)).type == 'string_check'
  path.write_text('{bad json')
  with pytest.raises(graders.GraderConfigError, match='line 1, column 2'):
    graders.build(str(path))


# metrics ---------------------------------------------------------------------------------------------------------
def test_summarize_and_check_failures():
  g = graders.build(multi_spec())
  results = g.grade_batch(['abc', 'abd', 'x', 'abc'], [{'ref': 'abc'}] * 3 + [{}])
  s = graders.summarize(results, prefix='train')
  assert s['train_reward_mean'] == pytest.approx(sum(r.reward for r in results) / 4)
  assert s['train/grader/exact'] == pytest.approx(0.25)
  assert s['train/errors/invalid_variable'] == pytest.approx(0.25)
  assert s['train/errors/python_grader_timeout'] == 0.0 and s['train/error_rate'] == pytest.approx(0.25)
  assert set(f'train/errors/{c}' for c in graders.CATEGORIES) <= set(s)
  graders.check_failures(results, max_error_share=0.25)
  with pytest.raises(graders.GradingFailed, match=r'1 of 4 gradings failed') as e:
    graders.check_failures(results, max_error_share=0.2)
  assert 'item' in str(e.value) and len(e.value.errors) == 2


def test_results_an_outage_left_without_a_verdict_are_out_of_the_means():
  """A judge down for 2 of 8 validation answers scored them 0: the checkpoint's valid_reward_mean fell by a quarter
  for nothing the model did, and could lose its rank. Out of the mean (as out of the loss), counted apart."""
  from rftjax import metrics

  ok = [graders.GradeResult(r, {'a': r}, ()) for r in (1.0, 1.0, 0.5, 0.0, 1.0, 0.5)]
  down = [core.failed(core.MODEL_SERVER, 'HTTP 503 (4 attempts)', discard=True)] * 2
  s = graders.summarize(ok[:3] + down[:1] + ok[3:] + down[1:], prefix='valid')
  assert s['valid_reward_mean'] == pytest.approx(4.0 / 6) and s['valid/grader/a'] == pytest.approx(4.0 / 6)
  assert (s['valid/num_graded'], s['valid/num_discarded']) == (8.0, 2.0)
  assert s['valid/error_rate'] == pytest.approx(0.25) and s['valid/errors/model_grader_server'] == pytest.approx(0.25)
  assert metrics.num_verdicts(s) == 6.0 and metrics.num_verdicts({'valid/num_graded': 8}) == 8.0  # older lines
  assert metrics.num_verdicts({'step': 3}) is None
  every = graders.summarize(down, prefix='valid')
  assert every['valid_reward_mean'] == 0.0 and every['valid/num_discarded'] == 2.0
  # a host whose every result was discarded still names its sub-graders: hosts' metric keys must match to combine
  multi_down = graders.GradeResult(0.0, {'a': 0.0}, (), {'discard': True})
  assert graders.summarize([multi_down], prefix='train')['train/grader/a'] == 0.0


# model graders ---------------------------------------------------------------------------------------------------
class _Judge(local_http.Handler):
  replies: dict = {}
  seen: list = []

  def do_POST(self):
    body = self.json_body()
    _Judge.seen.append((body, self.headers.get('Authorization')))
    key = body['messages'][-1]['content']
    status, content = _Judge.replies.get(key, (200, '0.5'))
    if isinstance(status, list):  # one status per attempt: [429, 200] is busy once, then answers
      status = status.pop(0) if len(status) > 1 else status[0]
    if status in (302, 429):
      self.send_response(status)
      self.send_header('Location' if status == 302 else 'Retry-After', content)
      self.send_header('Content-Length', '0')
      self.end_headers()
      return
    self.send(status, json.dumps({'choices': [{'message': {'role': 'assistant', 'content': content}}]}))

  def do_GET(self):
    _Judge.seen.append(('GET ' + self.path, self.headers.get('Authorization')))
    self.send(200, json.dumps({'choices': [{'message': {'role': 'assistant', 'content': '1'}}]}))


@pytest.fixture(scope='module')
def judge_url():
  with local_http.serving(_Judge, '/v1') as url:
    yield url


def model_spec(kind, url, **extra):
  spec = {
    'type': kind,
    'name': kind,
    'model': 'judge-1',
    'base_url': url,
    'api_key_env': 'RFTJAX_TEST_KEY',
    'max_retries': 0,
    'sampling_params': {'temperature': 0.0, 'max_completions_tokens': 16},
    'input': [
      {'role': 'system', 'content': 'Grade the answer to {{item.q}}.'},
      {'role': 'user', 'content': {'type': 'input_text', 'text': '{{sample.output_text}}'}},
    ],
  }
  spec.update(extra)
  return spec


def test_score_model_http(judge_url, monkeypatch):
  monkeypatch.setenv('RFTJAX_TEST_KEY', 'sk-test')
  _Judge.replies.update(
    {
      'a7': (200, '7'),
      'a15': (200, '15'),
      'aneg': (200, '-3'),
      'ajson': (200, '{"result": 2.5}'),
      'atext': (200, 'Score: 4.5'),
      'abad': (200, 'excellent!'),
      'a500': (500, 'oops'),
    }
  )
  g = graders.build(model_spec('score_model', judge_url, range=[0, 10], pass_threshold=5))
  with graders.GradingPool(num_workers=1, timeout_s=5) as pool:
    res = pool.grade(g, ['a7', 'a15', 'aneg', 'ajson', 'atext', 'abad', 'a500'], [{'q': '2+2'}] * 7)
  assert [r.reward for r in res] == [7.0, 10.0, 0.0, 2.5, 4.5, 0.0, 0.0]
  assert res[0].metadata['passed'] is True and res[1].metadata['clamped'] is True
  # off the scale is clamped and counted (a judge on another scale, or a number out of prose), not silent
  assert [e.category for r in res[1:3] for e in r.errors] == ['model_grader_parse'] * 2
  assert res[1].errors[0].message == "judge answered 15, outside the range [0, 10], scored 10: '15'"
  assert not res[0].errors and not res[3].errors and not res[4].errors
  assert res[5].errors[0].category == 'model_grader_parse'
  assert res[6].errors[0].category == 'model_grader_server' and 'HTTP 500' in res[6].errors[0].message
  body, auth = _Judge.seen[0]
  assert auth == 'Bearer sk-test' and body['model'] == 'judge-1' and body['max_completion_tokens'] == 16
  assert body['messages'][0] == {'role': 'system', 'content': 'Grade the answer to 2+2.'}


def test_label_model_http_and_unreachable(judge_url):
  """A label in prose is not a verdict: "Not correct." and "The answer is not correct." passed as `correct` (the
  one label they name); only the last line, alone or after "Verdict:" and the like, counts."""
  replies = ['correct', 'Incorrect.', '{"result": "correct"}', 'maybe', 'Not correct.', 'The answer is not correct.']
  replies += ['This is wrong; the correct answer is 12.', 'It adds up.\nVerdict: **correct**', 'Checked.\nIncorrect']
  _Judge.replies.update({f'l{k}': (200, text) for k, text in enumerate(replies)})
  g = graders.build(model_spec('label_model', judge_url, labels=['correct', 'incorrect'], passing_labels=['correct']))
  res = g.grade_batch([f'l{k}' for k in range(len(replies))], [{'q': 'x'}] * len(replies))
  assert [r.reward for r in res] == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
  assert [r.metadata.get('label') for r in res] == ['correct', 'incorrect', 'correct', None, None, None, None,
                                                   'correct', 'incorrect']  # fmt: skip
  assert [k for k, r in enumerate(res) if r.errors] == [3, 4, 5, 6]
  assert {r.errors[0].category for r in res if r.errors} == {'model_grader_parse'}
  dead = graders.build(model_spec('label_model', 'http://127.0.0.1:9/v1', labels=['a'], passing_labels=['a']))
  assert dead.grade_batch(['x'], [{'q': 'x'}])[0].errors[0].category == 'model_grader_server'
  missing = g.grade_batch(['l1'], [{}])[0]
  assert missing.errors[0].category == 'invalid_variable'


def test_label_model_reads_the_punctuation_of_any_script(judge_url):
  """'正确。', '「正确」', '“Correct”' and 'Verdict：Correct' were model_grader_parse errors (which can stop a run)."""
  zh = graders.build(model_spec('label_model', judge_url, labels=['正确', '错误'], passing_labels=['正确']))
  assert [zh.parse(a)[1]['label'] for a in ('正确。', '「正确」', '『错误』。', '结论：\n错误')] == [
    '正确',
    '正确',
    '错误',
    '错误',
  ]
  en = graders.build(model_spec('label_model', judge_url, labels=['Correct', 'Wrong'], passing_labels=['Correct']))
  assert [en.parse(a)[0] for a in ('“Correct”', '«Wrong».', 'Verdict：Correct', 'It adds up.\nVerdict＝Wrong')] == [
    1.0, 0.0, 1.0, 0.0
  ]  # fmt: skip
  with pytest.raises(core.GradingException, match='judge answer is not one of the labels'):
    zh.parse('不正确。')  # a label inside another word is still no verdict


def test_a_judge_server_outage_is_discarded_and_its_redirect_not_followed(judge_url, monkeypatch):
  """The HTTP judge followed a 302 (its API key went to the other server, whose reply was scored), ignored
  Retry-After (0.2 s and 0.4 s pauses against a 2 s rate limit: the run stopped), and trained on a persistent 503 as
  a reward of 0. It now goes through the endpoint grader's HTTP path: a 3xx is the answer, a busy server's
  Retry-After is honoured, and an outage that outlasts the retries is discarded from the loss."""
  monkeypatch.setenv('RFTJAX_TEST_KEY', 'sk-secret')
  seen = len(_Judge.seen)
  _Judge.replies.update({'moved': (302, f'{judge_url}/collect'), 'busy': ([429, 200], '1'), 'down': (503, 'x')})
  g = graders.build(model_spec('score_model', judge_url, max_retries=1))
  t0 = time.monotonic()
  moved, busy, down = g.grade_batch(['moved', 'busy', 'down'], [{'q': 'x'}] * 3)
  assert not any(str(body).startswith('GET') for body, _ in _Judge.seen[seen:])  # nothing went to /collect
  assert moved.errors[0].message.startswith('HTTP 302 from') and 'discard' not in moved.metadata
  assert busy.reward == 1.0 and not busy.errors  # its answer, '1', after the 429
  assert down.errors[0].category == 'model_grader_server' and down.metadata['discard'] is True
  assert 'HTTP 503' in down.errors[0].message and '(2 attempts)' in down.errors[0].message
  assert time.monotonic() - t0 > 1.4  # the busy reply's Retry-After of 1 s, then 0.5 s before the 503's retry


def test_an_unset_api_key_env_stops_the_command_before_anything_slow(judge_url, monkeypatch):
  monkeypatch.delenv('RFTJAX_TEST_KEY', raising=False)
  monkeypatch.delenv('OPENAI_API_KEY', raising=False)
  g = graders.build({'type': 'multi', 'calculate_output': 'j', 'graders': {'j': model_spec('score_model', judge_url)}})
  with pytest.raises(graders.GraderConfigError) as e:
    graders.check_runnable(g)
  assert str(e.value) == (
    f"grader 'j' (score_model) sends {judge_url} a key from the environment variable RFTJAX_TEST_KEY, which is "
    'not set; export RFTJAX_TEST_KEY=... before the command'
  )
  openai = {'type': 'label_model', 'model': 'gpt-4o-mini', 'input': [{'role': 'user', 'content': 'x'}],
            'labels': ['a'], 'passing_labels': ['a']}  # fmt: skip
  with pytest.raises(graders.GraderConfigError, match='sends the OpenAI API a key from .* OPENAI_API_KEY'):
    graders.check_runnable(graders.build(openai))
  no_auth = model_spec('score_model', judge_url)
  del no_auth['api_key_env']  # a local server without auth: no key wanted
  graders.check_runnable(graders.build(no_auth))
  graders.check_runnable(graders.build({**openai, 'model': 'gguf:smollm2-135m'}))  # rftjax serves it itself
  monkeypatch.setenv('RFTJAX_TEST_KEY', 'sk-x')
  graders.check_runnable(g)


def test_local_judges_are_passed_to_build(monkeypatch):
  monkeypatch.setenv('OPENAI_API_KEY', '')
  monkeypatch.setattr('rftjax.graders.model_graders.DEFAULT_BASE_URL', 'http://127.0.0.1:9/v1')
  calls = []

  def judge(messages, sampling_params):
    calls.append((messages, sampling_params))
    return '0.25' if 'short' in messages[-1]['content'] else 'not a number'

  spec = model_spec('score_model', '', model='local-tiny')
  del spec['base_url']
  g = graders.build(spec, judges={'local-tiny': judge})
  res = g.grade_batch(['short', 'long'], [{'q': 'x'}] * 2)
  assert res[0].reward == 0.25 and res[1].errors[0].category == 'model_grader_parse'
  assert calls[0][1] == {'temperature': 0.0, 'max_completions_tokens': 16}
  unjudged = graders.build(spec).grade_batch(['short'], [{'q': 'x'}])[0]  # no judge given: the API, unreachable
  assert unjudged.errors[0].category == 'model_grader_server' and len(calls) == 2
  # content parts are joined; a text part without text adds nothing
  parts = [{'type': 'input_text'}, {'type': 'input_text', 'text': 'Grade '}, {'text': '{{sample.output_text}}'}]
  spec['input'] = [{'role': 'user', 'content': parts}]
  graders.build(spec, judges={'local-tiny': judge}).grade_batch(['short'], [{}])
  assert calls[-1][0] == [{'role': 'user', 'content': 'Grade short'}]


def test_multi_with_a_model_judge_through_the_pool():
  judges = {'local-yesno': lambda messages, params: 'pass' if '42' in messages[0]['content'] else 'fail'}
  g = graders.build(
    {
      'type': 'multi',
      'calculate_output': '(judge + exact) / 2',
      'graders': {
        'judge': {
          'type': 'label_model',
          'model': 'local-yesno',
          'labels': ['pass', 'fail'],
          'passing_labels': ['pass'],
          'input': [{'role': 'user', 'content': '{{sample.output_text}}'}],
        },
        'exact': {'type': 'string_check', 'input': '{{sample.output_text}}', 'reference': '42', 'operation': 'like'},
      },
    },
    judges=judges,
  )
  with graders.GradingPool(num_workers=1, timeout_s=5) as pool:
    res = pool.submit(g, ['it is 42', 'it is 41'], [{}, {}]).result(timeout=30)
  assert [r.reward for r in res] == [1.0, 0.0] and res[0].sub_rewards == {'judge': 1.0, 'exact': 1.0}


def test_text_nested_a_thousand_deep_is_one_sample_not_a_crash():
  """A collapsed policy repeating '[' wrote JSON too deep for Python's reader: RecursionError stopped the step."""
  deep, ok = '[' * 1000, '[' * 100 + ']' * 100
  assert core.sample_dict(deep)['output_json'] is None
  assert core.sample_dict(ok)['output_json'] is not None  # 100 deep is still JSON
  assert core.sample_dict('[' * 101 + ']' * 101)['output_json'] is None
  g = graders.build(
    {'type': 'python', 'source': 'def grade(sample, item):\n  return float(sample["output_json"] is None)'}
  )
  calls = '<tool_call>{"name": "f", "arguments": ' + deep
  with graders.GradingPool(num_workers=1, timeout_s=20) as pool:
    res = pool.submit(g, ['ok', deep, calls, ok], [{}] * 4).result(timeout=60)
  assert [r.reward for r in res] == [1.0, 1.0, 1.0, 0.0] and not any(r.errors for r in res)


# CLI -------------------------------------------------------------------------------------------------------------
def run_cli(*args):
  root = pathlib.Path(__file__).resolve().parents[1]
  return subprocess.run(
    [sys.executable, '-m', 'rftjax.grade', *args], capture_output=True, text=True, timeout=60, cwd=root
  )


def test_python_graders_run_under_a_users_lower_hard_limits(tmp_path):
  """The worker set its own limits (256 open files, 2 GB, 1 GB files) as hard limits; under a user's lower ones
  (ulimit -n 64) that was refused, and every grading failed with 'worker process exited with code 1'."""
  grader = tmp_path / 'g.json'
  grader.write_text(json.dumps({'type': 'python', 'source': 'def grade(s, i):\n  return 1.0\n'}))
  root = pathlib.Path(__file__).resolve().parents[1]
  cmd = f'ulimit -n 64 && ulimit -f 500000 && {sys.executable} -m rftjax.grade --grader={grader} --sample=x'
  done = subprocess.run(['bash', '-c', cmd + ' --allow_unsandboxed'], capture_output=True, text=True, timeout=60,
                        cwd=root)  # fmt: skip
  assert done.returncode == 0 and json.loads(done.stdout)['reward'] == 1.0, done.stdout + done.stderr


def test_cli(tmp_path):
  good = tmp_path / 'g.json'
  good.write_text(json.dumps(multi_spec()))
  ok = run_cli(f'--grader={good}', '--validate')
  assert ok.returncode == 0 and json.loads(ok.stdout)['type'] == 'multi'
  bad = tmp_path / 'b.json'
  bad.write_text(json.dumps({'type': 'text_similarity', 'input': OUT, 'reference': 'x', 'evaluation_metric': 'blue'}))
  out = run_cli(f'--grader={bad}', '--validate')
  assert out.returncode == 2
  assert "grader.evaluation_metric: found 'blue', expected one of" in out.stderr
  one = run_cli(f'--grader={good}', '--sample=abc', '--item={"ref": "abc"}')
  result = json.loads(one.stdout)
  assert result['reward'] == 1.0 and result['sub_rewards'] == {'exact': 1.0, 'close': 1.0} and result['errors'] == []
  # a sample file a Windows editor saved (a byte-order mark) in another script: read as the data files are, and
  # the result written readably, not as \\u escapes
  (tmp_path / 's.txt').write_bytes('\ufeff四'.encode())
  zh = run_cli(f'--grader={good}', f'--sample_file={tmp_path / "s.txt"}', '--item={"ref": "四"}')
  assert json.loads(zh.stdout)['reward'] == 1.0 and '"四"' not in zh.stdout
  (tmp_path / 'zh.jsonl').write_text('{"ref": "四"}\n')
  (tmp_path / 'zs.jsonl').write_text('{"文本": "四"}\n', encoding='utf-8')
  odd = run_cli(f'--grader={good}', f'--data={tmp_path / "zh.jsonl"}', f'--samples={tmp_path / "zs.jsonl"}')
  assert odd.returncode == 2 and 'found {"文本": "四"}' in odd.stderr, odd.stderr
  data, samples = tmp_path / 'd.jsonl', tmp_path / 's.jsonl'
  data.write_text('{"ref": "abc"}\n{"ref": "abc"}\n{"ref": "abd"}\n')
  samples.write_text('"abc"\n{"output_text": "xyz"}\n"abc"\n')
  many = run_cli(f'--grader={good}', f'--data={data}', f'--samples={samples}', '--prefix=eval')
  summary = json.loads(many.stdout)
  assert summary['eval/grader/exact'] == pytest.approx(1 / 3) and summary['eval/error_rate'] == 0.0
  # an item field the grader's templates name but a data line lacks: refused before grading, naming both
  data.write_text('{"ref": "abc"}\n\n{"other": 1}\n{"other": 2}\n')
  samples.write_text('"abc"\n"abc"\n"abc"\n')
  missing = run_cli(f'--grader={good}', f'--data={data}', f'--samples={samples}')
  assert missing.returncode == 2 and missing.stdout == ''
  assert missing.stderr == (
    f'error: grader.graders.exact.reference uses {{{{item.ref}}}}, but {data}:3 has no such field: item has no '
    "key 'ref' (2 of its 3 lines lack it); expected every data line to have it\n"
  )
  # files it cannot read or write: one line, exit 2, before any grading
  gone = run_cli(f'--grader={good}', f'--sample_file={tmp_path / "nope.txt"}')
  assert (gone.returncode, gone.stderr) == (
    2, f'error: --sample_file={tmp_path / "nope.txt"}: cannot read it (No such file or directory)\n'
  )  # fmt: skip
  data.write_text('{"ref": "abc"}\n')
  samples.write_text('"abc"\n')
  folder = run_cli(f'--grader={good}', f'--data={data}', f'--samples={samples}', f'--output={tmp_path}')
  assert (folder.returncode, folder.stdout) == (2, '')
  assert folder.stderr == f'error: --output={tmp_path}: a folder is there; expected the name of a file to write\n'


def test_cli_output_is_written_whole_and_never_over_an_input(tmp_path):
  good = tmp_path / 'g.json'
  good.write_text(json.dumps(multi_spec()))
  data, samples = tmp_path / 'd.jsonl', tmp_path / 's.jsonl'
  data.write_text('{"ref": "abc"}\n{"ref": "abd"}\n')
  samples.write_text('"abc"\n"abc"\n')
  out = tmp_path / 'new' / 'folder' / 'r.jsonl'  # folders made, as --out's check promised
  done = run_cli(f'--grader={good}', f'--data={data}', f'--samples={samples}', f'--output={out}')
  assert done.returncode == 0, done.stderr
  rewards = [json.loads(line)['reward'] for line in out.read_text().splitlines()]
  assert rewards == [1.0, pytest.approx(0.5 * (2 * 2 / 6) ** 2)]  # exact 0; fuzzy ratio of abc/abd is 4/6
  assert sorted(p.name for p in out.parent.iterdir()) == ['r.jsonl']
  same = run_cli(f'--grader={good}', f'--data={data}', f'--samples={samples}', f'--output={tmp_path}/./s.jsonl')
  assert (same.returncode, same.stdout) == (2, '')
  assert same.stderr == (
    f'error: --output={tmp_path}/./s.jsonl is the --samples file; expected another file (writing it would replace '
    'that)\n'
  )
  assert samples.read_text() == '"abc"\n"abc"\n'
  data.write_text('\n')
  samples.write_text('')
  empty = run_cli(f'--grader={good}', f'--data={data}', f'--samples={samples}')
  assert (empty.returncode, empty.stdout) == (2, '')
  assert empty.stderr == f'error: --data={data}: no items (the file is empty); expected one JSON object per line\n'


def test_cli_output_is_written_when_the_reader_of_the_summary_has_gone(tmp_path):
  """`grade ... --output=r.jsonl | head -1`: the summary's reader goes after one line; the results were written
  after the summary and so were lost."""
  good = tmp_path / 'g.json'
  good.write_text(json.dumps(multi_spec()))
  data, samples = tmp_path / 'd.jsonl', tmp_path / 's.jsonl'
  data.write_text('{"ref": "abc"}\n' * 3)
  samples.write_text('"abc"\n' * 3)
  out = tmp_path / 'r.jsonl'
  root = pathlib.Path(__file__).resolve().parents[1]
  cmd = [sys.executable, '-m', 'rftjax.grade', f'--grader={good}', f'--data={data}', f'--samples={samples}']
  read, write = os.pipe()
  os.close(read)  # a reader gone before the first line: the summary's print fails at once
  unbuffered = {**os.environ, 'PYTHONUNBUFFERED': '1'}  # the summary's print meets the closed pipe (as `python -u`)
  with os.fdopen(write, 'wb') as stdout:
    done = subprocess.run([*cmd, f'--output={out}'], stdout=stdout, stderr=subprocess.PIPE, timeout=60, cwd=root,
                          env=unbuffered)  # fmt: skip
  assert done.returncode == 141, done.stderr.decode()
  assert [json.loads(line)['reward'] for line in out.read_text().splitlines()] == [1.0] * 3


def test_cli_checks_what_validate_promises_and_names_the_flags(tmp_path):
  job = tmp_path / 'job.json'
  reinforcement = {
    'grader': {'type': 'string_check', 'input': OUT, 'reference': '{{item.answer}}', 'operation': 'eq'},
    'response_format': {'type': 'json_schema', 'json_schema': {'name': 'ans', 'schema': {'type': 'objekt'}}},
  }
  job.write_text(
    json.dumps(
      {'model': 'x', 'training_file': 'x', 'method': {'type': 'reinforcement', 'reinforcement': reinforcement}}
    )
  )
  bad = run_cli(f'--grader={job}', '--validate')  # said valid, then refused the first grading naming config.*
  assert bad.returncode == 2 and bad.stderr.startswith(
    "error: method.reinforcement.response_format.json_schema.schema.type: not a valid JSON Schema: 'objekt'"
  ), bad.stderr
  judge = tmp_path / 'judge.json'
  judge.write_text(json.dumps({'type': 'score_model', 'name': 'j', 'model': 'gguf:/nope.gguf', 'input': [
    {'role': 'user', 'content': OUT}]}))  # fmt: skip
  missing = run_cli(f'--grader={judge}', '--validate')
  assert (missing.returncode, missing.stderr) == (
    2, 'error: a model grader\'s "model"=\'gguf:/nope.gguf\': no such file /nope.gguf (known gguf:NAME shorthands: '
    'gemma3-270m, smollm2-135m)\n',
  ), missing.stderr  # fmt: skip
  plain = tmp_path / 'g.json'
  plain.write_text(json.dumps(reinforcement['grader']))
  twice = run_cli(f'--grader={plain}', '--sample=4', '--item={"answer": "4", "answer": "5"}')
  assert twice.returncode == 2 and twice.stderr.startswith(
    "error: --item: answer: the key 'answer' appears twice in one object"
  ), twice.stderr
  slow = tmp_path / 'slow.json'
  slow.write_text(
    json.dumps({'type': 'python', 'source': 'import time\ndef grade(s, i):\n  time.sleep(5)\n  return 1.0\n'})
  )
  data, samples = tmp_path / 'd.jsonl', tmp_path / 's.jsonl'
  data.write_text('{}\n')
  samples.write_text('"a"\n')
  out = tmp_path / 'graded.jsonl'  # ('--output=-' wrote a file named '-' into the checkout)
  spent = run_cli(f'--grader={slow}', f'--data={data}', f'--samples={samples}', '--budget_s=0.5', f'--output={out}')
  assert spent.returncode == 1, spent.stderr  # all failed: the results are written all the same
  assert 'the grading budget (--budget_s=0.5) ran out before this sample was graded' in out.read_text()


def test_cli_output_that_cannot_be_written_is_one_line_after_the_summary(tmp_path):
  import resource
  import signal

  good = tmp_path / 'g.json'
  good.write_text(json.dumps(multi_spec()))
  data, samples = tmp_path / 'd.jsonl', tmp_path / 's.jsonl'
  data.write_text('{"ref": "abc"}\n' * 300)
  samples.write_text('"abc"\n' * 300)

  def disk_full():  # the file size limit stands in for a disk that fills while grading
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

  out = tmp_path / 'r.jsonl'
  cmd = [
    sys.executable,
    '-m',
    'rftjax.grade',
    f'--grader={good}',
    f'--data={data}',
    f'--samples={samples}',
    f'--output={out}',
  ]
  root = pathlib.Path(__file__).resolve().parents[1]
  full = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=root, preexec_fn=disk_full)
  assert full.returncode == 1 and 'Traceback' not in full.stderr, full.stderr  # the work ran; 2 is a bad input
  assert full.stderr.splitlines()[-1] == (
    f'error: --output={out}: cannot write it (File too large); the summary above is all that is left'
  )
  assert json.loads(full.stdout)['grade_reward_mean'] == 1.0 and not out.exists()
  buffered = {k: v for k, v in os.environ.items() if k != 'PYTHONUNBUFFERED'}
  for env in (buffered, {**buffered, 'PYTHONUNBUFFERED': '1'}):  # the pipe fails at exit's flush, or at the print
    read, write = os.pipe()
    os.close(read)  # and the summary's reader gone too (`| head -1`): the lost file is still said, exit 1 (was 120)
    with os.fdopen(write, 'wb') as stdout:
      both = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, cwd=root, env=env,
                            preexec_fn=disk_full)  # fmt: skip
    assert both.returncode == 1, both.stderr
    assert both.stderr.splitlines()[-1].startswith(f'error: --output={out}: cannot write it')


@pytest.mark.parametrize(
  'text, expected',
  [
    ('2 * 4 = 8', '8'),
    ('53 - 30 = 25', '25'),
    ('9 times 9 is 81.', '81'),
    ('x = 5', '5'),
    ('5 cm', '5 cm'),
    ('\\frac{1}{2}', '\\frac{1}{2}'),
    ('The sum is 12 apples and 3 pears', '3'),
  ],
)
def test_math_extracts_answers_small_models_write(text, expected):
  from rftjax.graders import mathgrade

  assert mathgrade.extract_answer(text) == expected


@pytest.mark.parametrize('metric', text_graders.SIMILARITY_METRICS)
def test_similarity_scores_stay_in_unit_interval(metric):
  """BLEU's brevity penalty and n-gram precisions multiplied to 1.0000000000000004 on this exact match."""
  g = graders.build({'type': 'text_similarity', 'input': OUT, 'reference': '{{item.r}}', 'evaluation_metric': metric})
  text = 'the cat sat on the mat with a hat and then it ran away quickly'
  (same, other) = g.grade_batch([text, 'zebra'], [{'r': text}, {'r': text}])
  assert 0.99 <= same.reward <= 1.0 and 0.0 <= other.reward <= 1.0
  if metric == 'bleu':
    assert same.reward == 1.0


def test_cli_shows_progress_on_long_data(tmp_path):
  """600 samples on 2 workers: graded in chunks of 32 (of 256 before: a slow grader was silent for minutes, and
  fewer than 257 lines said nothing), a line per tenth in a log; the summary as from one call."""
  grader = tmp_path / 'g.json'
  grader.write_text(json.dumps({'type': 'string_check', 'name': 'eq', 'input': OUT, 'reference': '{{item.ref}}',
                                'operation': 'eq'}))  # fmt: skip
  data, samples = tmp_path / 'd.jsonl', tmp_path / 's.jsonl'
  data.write_text('{"ref": "a"}\n' * 600)
  samples.write_text('"a"\n"b"\n"a"\n' * 200)
  out = run_cli(f'--grader={grader}', f'--data={data}', f'--samples={samples}', '--num_workers=2')
  assert out.returncode == 0, out.stderr
  shown = [32, 64, 128, 192, 256, 320, 384, 448, 480, 544, 600]  # the first call past each tenth
  assert out.stderr.splitlines() == [f'grading: {n}/600' for n in shown], out.stderr
  assert json.loads(out.stdout)['grade_reward_mean'] == pytest.approx(2 / 3)


def test_a_command_whose_stderr_reader_went_away_still_gives_its_results(tmp_path):
  """`evaluate ... 2> >(head -1)`: the progress line after the reader had gone raised BrokenPipeError, and the
  finished work was lost (exit 1, no results). A character stdout's encoding lacks was a traceback."""
  grader = tmp_path / 'g.json'
  grader.write_text(json.dumps({'type': 'string_check', 'name': 'eq', 'input': OUT, 'reference': '{{item.ref}}',
                                'operation': 'eq'}))  # fmt: skip
  data, samples, out = tmp_path / 'd.jsonl', tmp_path / 's.jsonl', tmp_path / 'graded.jsonl'
  data.write_text('{"ref": "a"}\n' * 300)
  samples.write_text('"a"\n"b"\n"a"\n' * 100)
  root = pathlib.Path(__file__).resolve().parents[1]
  argv = [sys.executable, '-m', 'rftjax.grade', f'--grader={grader}', f'--data={data}', f'--samples={samples}',
          '--num_workers=1', f'--output={out}']  # fmt: skip
  read_err, write_err = os.pipe()
  os.close(read_err)  # the reader has gone before the first line
  try:
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=write_err, text=True, timeout=60, cwd=root)
  finally:
    os.close(write_err)
  assert done.returncode == 0 and json.loads(done.stdout)['grade_reward_mean'] == pytest.approx(2 / 3)
  assert len(out.read_text().splitlines()) == 300
  env = {**os.environ, 'PYTHONIOENCODING': 'ascii'}
  done = subprocess.run([sys.executable, '-m', 'rftjax.report', f'--workdir={tmp_path / "été"}'],
                        capture_output=True, text=True, timeout=60, cwd=root, env=env)  # fmt: skip
  assert done.returncode == 2 and done.stderr.startswith('error: --workdir=') and '\\xe9t\\xe9' in done.stderr


def test_grade_reads_data_and_samples_from_pipes(tmp_path):
  """--data=<(...) and --samples=<(...) in a script: 'no such file' for a pipe that was there (evaluate and
  sample took them)."""
  grader = tmp_path / 'g.json'
  grader.write_text(json.dumps({'type': 'string_check', 'name': 'eq', 'input': OUT, 'reference': '{{item.ref}}',
                                'operation': 'eq'}))  # fmt: skip
  root = pathlib.Path(__file__).resolve().parents[1]
  script = (f'{sys.executable} -m rftjax.grade --grader={grader} --num_workers=1 '
            """--data=<(printf '{"ref": "a"}\\n{"ref": "b"}\\n') --samples=<(printf '"a"\\n"a"\\n')""")  # fmt: skip
  done = subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=60, cwd=root)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout)['grade_reward_mean'] == 0.5


def test_validation_says_which_failed_gradings_are_out_of_its_mean(tmp_path, monkeypatch, caplog):
  """Validation's warning said every failed grading 'scores 0'; one a judge's outage left without a verdict is out
  of valid_reward_mean (test_results_an_outage_left_without_a_verdict_are_out_of_the_means)."""
  import types

  from rftjax import inference

  ok = [graders.GradeResult(r) for r in (1.0, 0.0)]
  ok.append(graders.GradeResult(1.0, {'num': 1.0}, metadata={'num': {'stdout': 'dbg 7\n', 'latency_s': 0.1}}))
  down = core.failed(core.MODEL_SERVER, 'HTTP 503 (4 attempts)', discard=True)
  graded = [({'text': 'x', 'tokens': [1], 'truncated': i == 1}, r) for i, r in enumerate([*ok, down])]
  broken = core.failed(core.MODEL_PARSE, 'no number in the reply')
  monkeypatch.setattr(inference, 'evaluate', lambda *a, **k: graded)
  written = []
  run = types.SimpleNamespace(local=tmp_path, sync=lambda **k: 0)
  writer = types.SimpleNamespace(write=written.append)
  examples = [types.SimpleNamespace(source=f'v.jsonl:{i}', item={}, messages=[]) for i in range(4)]
  monkeypatch.setattr(inference.data_lib, 'reference', lambda ex: {})
  judge = graders.build({'type': 'string_check', 'name': 'judge', 'input': OUT, 'reference': 'x', 'operation': 'eq'})
  v = inference.Validation(types.SimpleNamespace(tools=()), 4, [[1]] * 4, examples, None, judge, None, None, 0,
                           writer, run)  # fmt: skip
  with caplog.at_level('WARNING', logger='rftjax'):
    m = v(None, 3)
  assert m['valid_reward_mean'] == pytest.approx(2 / 3) and m['valid/num_discarded'] == 1 and written == [m]
  kept = [json.loads(line) for line in (tmp_path / 'samples' / 'valid_step000003.jsonl').open()]
  assert [r['truncated'] for r in kept] == [False, True, False, False] and m['valid_truncated_frac'] == 0.25
  assert [(r['sample'], r['tokens']) for r in kept] == [(0, [1])] * 4  # as evaluate's rows: one reader for both
  # what a grader printed, and that an outage left no verdict, are in the samples file; timings are not
  assert 'metadata' not in kept[0] and kept[2]['metadata'] == {'num': {'stdout': 'dbg 7\n'}}
  assert kept[3]['metadata'] == {'discard': True}
  (said,) = [r.getMessage() for r in caplog.records if 'validation at step 3' in r.getMessage()]
  assert said.startswith('validation at step 3: 1 of 4 gradings failed')
  assert '; 1 left without a verdict (an outage) is out of valid_reward_mean (every completion is in' in said
  graded[1] = (
    {'text': 'x', 'tokens': [1], 'truncated': False},
    broken,
  )  # and a judge's reply without a score: a 0 that counts
  caplog.clear()
  with caplog.at_level('WARNING', logger='rftjax'):
    assert v(None, 4)['valid_reward_mean'] == pytest.approx(2 / 3)
  (said,) = [r.getMessage() for r in caplog.records if 'validation at step 4' in r.getMessage()]
  assert '; 1 left without a verdict (an outage) is out of valid_reward_mean, the 1 other scores 0 (every' in said
  # a rollout whose tool failed for good is out of the mean too, but it is no failed grading: not counted here
  graded[0] = ({'text': 'x', 'tokens': [1], 'truncated': False}, graders.GradeResult(1.0, metadata={'discard': True}))
  caplog.clear()
  with caplog.at_level('WARNING', logger='rftjax'):
    assert v(None, 5)['valid/num_discarded'] == 2
  (said,) = [r.getMessage() for r in caplog.records if 'validation at step 5' in r.getMessage()]
  assert '; 1 left without a verdict (an outage) is out of valid_reward_mean, the 1 other scores 0 (every' in said


def test_a_grader_that_never_reads_the_completion_is_said(tmp_path):
  """input and reference both from the item: every completion passed, step 0 validated at 1.0 on random weights,
  and grade --validate called it valid without a word."""
  blind = {'type': 'string_check', 'name': 'x', 'input': '{{item.answer}}', 'reference': '{{item.answer}}',
           'operation': 'eq'}  # fmt: skip
  reads = {**blind, 'input': '{{ sample.output_text }}'}
  judge = {'type': 'score_model', 'name': 'j', 'model': 'm', 'input': [{'role': 'user', 'content': '{{item.q}}'}]}
  multi = {'type': 'multi', 'graders': {'a': reads, 'b': blind, 'c': judge}, 'calculate_output': 'a + b + c'}
  assert graders.ignoring_sample(blind) == ['grader'] and graders.ignoring_sample(reads) == []
  for other in ('{{sample["output_text"]}}', "{{sample['output_text']}}", '{{sample}}'):  # other spellings read it
    assert graders.ignoring_sample({**blind, 'input': other}) == [], other
  assert graders.ignoring_sample({**blind, 'input': '{{samples.x}}'}) == ['grader']
  assert graders.ignoring_sample(multi) == ['grader.graders.b', 'grader.graders.c']
  for fine in ({'type': 'math', 'reference': '{{item.a}}'}, {'type': 'python', 'source': 'def grade(s, i): return 1'}):
    assert graders.ignoring_sample(fine) == []  # they read the sample themselves
  grader = tmp_path / 'g.json'
  grader.write_text(json.dumps(blind))
  done = run_cli(f'--grader={grader}', '--validate')
  assert done.returncode == 0 and json.loads(done.stdout)['valid'] is True
  assert done.stderr == 'note: grader: no {{sample.*}} in its templates, so it scores every completion alike\n'
