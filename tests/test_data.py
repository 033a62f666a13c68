"""Data files: errors name the file and line; batching is deterministic and resumable; shipped data is current."""

import json
import logging

import numpy as np
import pytest

from rftjax import data
from rftjax import tasks


def write(tmp_path, lines):
  path = tmp_path / 'd.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  return path


GOOD = json.dumps({'messages': [{'role': 'user', 'content': 'hi'}], 'answer': '1'})


@pytest.mark.parametrize(
  'line, message',
  [
    ('{"messages": [', r'd.jsonl:3: not valid JSON'),
    ('[1, 2]', r'd.jsonl:3: expected a JSON object, got list'),
    ('{"answer": 1}', r'd.jsonl:3: field "messages" must be a non-empty list .* \(missing\)$'),
    # the rows TRL's GRPOTrainer reads: what to change is said
    (
      '{"prompt": [{"role": "user", "content": "x"}], "solution": "1"}',
      r'\(missing\); this row has TRL\'s "prompt": a list of messages is what "messages" holds: rename the field$',
    ),
    (
      '{"prompt": "2 + 2 =", "solution": "4"}',
      r'\(missing\); this row has a text "prompt": write it as "messages": \[\{"role": "user", "content": '
      r'<the text>\}\], and set config.chat_template="plain" to train on the text as it is',
    ),
    ('{"messages": [{"role": "robot", "content": "x"}]}', r'd.jsonl:3: messages\[0\]: "role" must be one of'),
    ('{"messages": [{"role": "user"}]}', r'd.jsonl:3: messages\[0\]: missing "content"'),
    ('{"messages": [{"role": "user", "content": null}]}', r'd.jsonl:3: messages\[0\]: "content" is null; expected'),
    (
      '{"messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]}',
      r'd.jsonl:3: messages\[0\]: "tool_calls" on a user message; expected them on assistant messages only',
    ),
    ('{"messages": [{"role": "user", "content": "x"}], "w": NaN}', r'd.jsonl:3: not valid JSON \(NaN is not JSON;'),
    (
      '{"messages": [{"role": "user", "content": "bad \\ud800 text"}]}',
      r"d.jsonl:3: the unpaired surrogate '\\ud800' is no Unicode text; expected text",
    ),
    (
      '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
      r'd.jsonl:3: the last message must come from "user"',
    ),
    ('{"messages": [{"role": "user", "content": [{"type": "image"}]}]}', r'd.jsonl:3: messages\[0\]: content part 0'),
    (  # an OpenAI vision row: said as what it is
      '{"messages": [{"role": "user", "content": [{"type": "text", "text": "Which digit?"}, {"type": "image_url", '
      '"image_url": {"url": "data:image/png;base64,AA=="}}]}]}',
      r"d.jsonl:3: messages\[0\]: content part 1 is 'image_url'; rftjax trains text-only models, so a prompt holds "
      r'text parts \(\{"type": "text", "text": "..."\}\) only: leave such rows out, or put the content into words$',
    ),
  ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
  path = write(tmp_path, [GOOD, '', line])  # a blank line still counts: line 3
  with pytest.raises(data.DataError, match=message):
    data.load_jsonl(path)


def test_json_errors_point_at_the_column_and_name_a_pretty_printed_file(tmp_path):
  """The line's newline is no part of its JSON: a missing '}' was reported at column 1 (of "line 2")."""
  cut = GOOD[:-1]
  with pytest.raises(data.DataError) as e:
    data.load_jsonl(write(tmp_path, [GOOD, cut]))
  assert str(e.value).endswith(
    f"d.jsonl:2: not valid JSON (column {len(cut) + 1}: Expecting ',' delimiter: the line ends before its JSON value "
    'does)'
  )
  torn = '{"messages": [{"role": "user", "content": "half a'
  with pytest.raises(data.DataError, match=r'd.jsonl:1: not valid JSON \(column 43: a string starting there is not'):
    data.load_jsonl(write(tmp_path, [torn]))
  pretty = json.dumps([json.loads(GOOD)], indent=2).splitlines()
  with pytest.raises(data.DataError) as e:
    data.load_jsonl(write(tmp_path, pretty))
  assert str(e.value).endswith(
    'd.jsonl:1: not valid JSON (column 2: Expecting value: the line ends before its JSON value does); expected JSON '
    'Lines, one object per line, not one JSON document over many lines (jq -c converts one)'
  )


def test_missing_and_empty_file(tmp_path):
  with pytest.raises(data.DataError, match='no such file'):
    data.load_jsonl(tmp_path / 'nope.jsonl')
  with pytest.raises(data.DataError, match='no examples'):
    data.load_jsonl(write(tmp_path, ['']))
  with pytest.raises(data.DataError, match=r'no examples \(the file is empty\) \(config.data.valid\)$'):
    data.load_jsonl(write(tmp_path, ['']), 'config.data.valid')


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
  path = tmp_path / 'bom.jsonl'
  path.write_bytes(b'\xef\xbb\xbf' + (GOOD + '\n' + GOOD + '\n').encode())
  assert [ex.item['answer'] for ex in data.load_jsonl(path)] == ['1', '1']
  path.write_bytes((GOOD + '\n').encode() + b'\xef\xbb\xbf' + GOOD.encode())  # only a file starts with one
  with pytest.raises(data.DataError, match=r'bom.jsonl:2: not valid JSON'):
    data.load_jsonl(path)


def test_a_prompt_too_long_says_what_the_schema_added(tmp_path, caplog):
  import pathlib

  from rftjax import response_format, tokenizer

  tok = tokenizer.load_tokenizer(f'sp:{pathlib.Path(__file__).parents[1] / "data/tiny/tokenizer.model"}')
  (ex,) = data.load_jsonl(write(tmp_path, [GOOD]))
  fmt = response_format.make({'type': 'json_schema', 'json_schema': {'name': 'n', 'schema': {'type': 'object'}}})
  plain, schema = (len(data.encode_prompts([ex], tok, None, f)[0]) for f in (None, fmt))
  long = (
    rf'd.jsonl:1: the prompt is {schema} tokens long \({schema - plain} of them the response_format schema '
    r'instruction\), more than config.data.max_prompt_len=5;'
  )
  with pytest.raises(data.DataError, match=long):
    data.encode_prompts([ex], tok, 5, fmt)
  with pytest.raises(
    data.DataError, match=rf'the prompt is {plain} tokens long, more than config.data.max_prompt_len=1;'
  ):
    data.encode_prompts([ex], tok, 1, None)
  # every prompt over the limit is counted at once, not one per rerun
  longer = json.dumps({'messages': [{'role': 'user', 'content': 'Largest digit: ' + '1 2 3 4 ' * 5}], 'answer': '4'})
  examples = data.load_jsonl(write(tmp_path, [GOOD, longer, GOOD, longer]))
  longest = len(data.encode_prompts(examples[1:2], tok)[0])
  with pytest.raises(data.DataError) as e:
    data.encode_prompts(examples, tok, plain)
  assert str(e.value) == (
    f'{tmp_path / "d.jsonl"}:2: the prompt is {longest} tokens long, more than config.data.max_prompt_len={plain} '
    f'(2 prompts are: lines 2, 4; the longest {longest} tokens); raise it, shorten the prompts or skip them '
    '(config.data.skip_long_prompts=True)'
  )
  # skipped instead: said in one warning; `fitting` keeps the rest, and refuses to keep nothing
  with caplog.at_level(logging.WARNING, logger='rftjax'):
    ids = data.encode_prompts(examples, tok, plain, skip_long=True)
  assert [i is None for i in ids] == [False, True, False, True]
  assert [m for m in caplog.messages if m.startswith('skipped')] == [  # ('hi': no 'h' in the tiny vocabulary)
    f'skipped 2 prompts longer than config.data.max_prompt_len={plain} (config.data.skip_long_prompts): '
    f'{tmp_path / "d.jsonl"}:2, {tmp_path / "d.jsonl"}:4 (the longest {longest} tokens)'
  ]
  kept, prompts = data.fitting(examples, ids, 'config.data.train')
  assert [ex.source for ex in kept] == [examples[0].source, examples[2].source] and prompts == [ids[0], ids[2]]
  with pytest.raises(data.DataError, match='^config.data.valid: every prompt is longer than'):
    data.fitting(examples[1::2], ids[1::2], 'config.data.valid')


def test_item_is_the_whole_line_and_parts_are_joined(tmp_path):
  line = json.dumps(
    {
      'messages': [
        {'role': 'system', 'content': 's'},
        {'role': 'user', 'content': [{'type': 'text', 'text': 'a'}, {'type': 'text', 'text': 'b'}]},
      ],
      'ref': {'x': [1]},
    }
  )
  (ex,) = data.load_jsonl(write(tmp_path, [line]))
  assert ex.messages[-1] == {'role': 'user', 'content': 'ab'}
  assert ex.item['ref'] == {'x': [1]} and ex.source.endswith('d.jsonl:1')


def test_iterator_covers_each_epoch_once_and_resumes():
  it = data.DataIterator(10, 4, seed=3)
  seen = np.concatenate([it.next() for _ in range(5)])  # 20 = two epochs
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
  assert list(seen[:10]) != list(seen[10:])  # reshuffled per epoch
  it2 = data.DataIterator(10, 4, seed=3)
  for _ in range(2):
    it2.next()
  state = it2.state()
  fresh = data.DataIterator(10, 4, seed=3)
  fresh.restore(state)
  np.testing.assert_array_equal(np.concatenate([fresh.next() for _ in range(3)]), seen[8:20])
  it2.next()  # into the second epoch (its order differs): a restore that dropped the epoch passed the one above
  later = data.DataIterator(10, 4, seed=3)
  later.restore(it2.state())
  assert it2.state()['epoch'] == 1
  np.testing.assert_array_equal(np.concatenate([later.next() for _ in range(2)]), seen[12:20])


def test_iterator_process_slices_form_the_global_batch():
  whole = data.DataIterator(12, 6, seed=0)
  parts = [data.DataIterator(12, 6, seed=0, process_index=i, process_count=3) for i in range(3)]
  for _ in range(4):
    np.testing.assert_array_equal(whole.next(), np.concatenate([p.next() for p in parts]))


def test_shipped_tiny_data_matches_generator(tmp_path):
  tasks.write_tiny(tmp_path)
  for name in ('train.jsonl', 'valid.jsonl', 'grader.json', 'tokenizer.model'):
    assert (tmp_path / name).read_bytes() == (tasks.DATA_DIR / 'tiny' / name).read_bytes(), name
  answers = [json.loads(line)['answer'] for line in (tasks.DATA_DIR / 'tiny' / 'train.jsonl').open()]
  counts = np.bincount([int(a) for a in answers], minlength=10)
  assert counts.min() > 150  # roughly uniform over 0..9 out of 2000


@pytest.mark.parametrize('name', ['tiny_tools', 'tools_arith'])
def test_shipped_tool_task_data_matches_generator(tmp_path, name):
  getattr(tasks, f'write_{name}')(tmp_path)
  shipped = sorted(p.name for p in (tasks.DATA_DIR / name).iterdir())
  assert shipped == sorted(p.name for p in tmp_path.iterdir())
  for f in shipped:
    assert (tmp_path / f).read_bytes() == (tasks.DATA_DIR / name / f).read_bytes(), f
  if name == 'tools_arith':  # the worked exchange's answer is right, and so is every reference
    rows = [json.loads(line) for line in (tasks.DATA_DIR / name / 'valid.jsonl').open()]
    assert tasks.CALCULATOR_SHOT[-1]['content'] == str(23 * 41)
    for row in rows:
      a, _, b = row['messages'][-1]['content'].removeprefix('What is ').rstrip('?').split()
      assert int(row['answer']) == int(a) * int(b)


def test_rows_may_hold_tool_turns_and_developer_becomes_system():
  row = {
    'messages': [
      {'role': 'developer', 'content': 'be brief'},
      {'role': 'user', 'content': 'q'},
      {
        'role': 'assistant',
        'content': None,
        'tool_calls': [{'type': 'function', 'function': {'name': 'f', 'arguments': '{}'}}],
      },
      {'role': 'tool', 'content': '7', 'tool_call_id': 'c1'},
      {'role': 'user', 'content': 'and?'},
    ]
  }
  ex = data.parse_line(json.dumps(row), 'f.jsonl:3')
  assert ex.messages[0] == {'role': 'system', 'content': 'be brief'}
  assert ex.messages[2] == {'role': 'assistant', 'content': '', 'tool_calls': row['messages'][2]['tool_calls']}
  assert ex.messages[3] == {'role': 'tool', 'content': '7', 'tool_call_id': 'c1'}
  row['messages'][2]['tool_calls'] = 'f()'
  with pytest.raises(data.DataError, match=r'f.jsonl:3: messages\[2\]: "tool_calls" must be a list'):
    data.parse_line(json.dumps(row), 'f.jsonl:3')


def test_shipped_arith_data_matches_generator_and_answers_are_right(tmp_path):
  tasks.write_arith(tmp_path)
  shipped = sorted(p.name for p in (tasks.DATA_DIR / 'arith').iterdir())
  assert shipped == sorted(p.name for p in tmp_path.iterdir())
  for name in shipped:
    assert (tmp_path / name).read_bytes() == (tasks.DATA_DIR / 'arith' / name).read_bytes(), name
  rows = [json.loads(line) for line in (tasks.DATA_DIR / 'arith' / 'equations_valid.jsonl').open()]
  for row in rows:
    *shots, query = row['messages'][0]['content'].split('\n')
    a, op, b, eq = query.split()
    assert eq == '=' and (1 <= int(a) <= 9 or 10 <= int(a) <= 99 and op != '*') and 1 <= int(b) <= 9
    assert int(row['answer']) == eval(f'{a} {op} {b}') >= 0
    assert len(shots) == 4
    for shot in shots:  # the worked examples are right too
      x, sop, y, _, z = shot.split()
      assert int(z) == eval(f'{x} {sop} {y}')
  one_digit = sum(len(r['messages'][0]['content'].split('\n')[-1].split()[0]) == 1 for r in rows)
  assert 35 <= one_digit <= 65  # about half and half


def test_the_data_line_counts_repeated_prompts_and_validation_prompts_seen_in_training(tmp_path):
  other = GOOD.replace('hi', 'ho')
  train = data.load_jsonl(write(tmp_path, [GOOD, GOOD, other]))
  (tmp_path / 'v').mkdir()
  valid = data.load_jsonl(write(tmp_path / 'v', [GOOD, GOOD.replace('hi', 'new')]))
  assert data.describe(train, valid) == (
    '3 training examples (2 distinct prompts) and 2 validation examples (1 also in training)'
  )
  assert data.describe(train[1:], valid[1:]) == '2 training examples and 1 validation example'


def test_a_file_that_cannot_be_opened_is_a_data_error(tmp_path):
  with pytest.raises(data.DataError, match=f'^{tmp_path}: cannot read it \\(Is a directory\\)$'):
    list(data.lines(tmp_path))


def test_prompts_the_tokenizer_cannot_spell_are_said(tmp_path, caplog):
  """The tiny tokenizer has no byte fallback: 'Größte Ziffer' reached the model as 'rte ier' without a word."""
  import pathlib

  from rftjax import tokenizer

  tok = tokenizer.load_tokenizer(f'sp:{pathlib.Path(__file__).parents[1] / "data/tiny/tokenizer.model"}')
  plain = json.dumps({'messages': [{'role': 'user', 'content': 'Largest digit: 3 9'}], 'answer': '9'})
  german = json.dumps({'messages': [{'role': 'user', 'content': 'Größte Ziffer: 3 9'}], 'answer': '9'})
  examples = data.load_jsonl(write(tmp_path, [plain, german, german]))
  with caplog.at_level(logging.WARNING, logger='rftjax'):
    ids = data.encode_prompts(examples, tok)
  assert tok.unk_id in ids[1] and tok.unk_id not in ids[0]
  assert caplog.messages == [
    f"2 prompts hold characters the tokenizer cannot spell ({tmp_path / 'd.jsonl'}:2: 'GößZf'), which encode to its "
    f'unknown token {tok.id_to_token(tok.unk_id)!r}: the model sees none of them. A tokenizer with byte fallback (the '
    f"real models') spells any text; prompts: {tmp_path / 'd.jsonl'}:2, {tmp_path / 'd.jsonl'}:3"
  ]
