"""Chat templates with tools: rftjax's prompt ids against transformers' `apply_chat_template` ids.

Reference: transformers 5, `apply_chat_template(messages, tools=<chat-completions shape>, add_generation_prompt=True,
tokenize=True)`; rftjax: `Tokenizer.encode_prompt(messages, tools=<Responses shape>)` (BOS added per the tokenizer's
config, never taken from the template's text). Models:
- SmolLM2-135M-Instruct: its GGUF and the template in its metadata. That template knows no tools: both libraries
  ignore the tool list and write tool turns as plain ChatML.
- Qwen3: a tokenizer folder written here, SmolLM2's byte-level vocabulary plus Qwen3's added tokens, with Qwen3's real
  template (tests/data/qwen3_chat_template.jinja; tests/data/README.md says where it came from).
- Gemma 3 270M: its GGUF carries no template; Gemma 3's official one (tests/data/gemma3_chat_template.jinja) in an HF
  folder around the same vocabulary, tool-free conversations (it refuses tool turns).
The named Python templates must give the same text as the Jinja ones on the repository's prompts (data/arith).
Reference tokenizers built from the GGUFs are cached exactly as tests/test_tokenizer.py caches them (shared folder).
"""

import json
import pathlib
import shutil

import pytest

from test_tokenizer import CONVERSATIONS, reference_folder

from rftjax import chat_template, data, pretrained, tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(__file__).parent / 'data'
QWEN3_JINJA = (DATA / 'qwen3_chat_template.jinja').read_text(encoding='utf-8')
GEMMA3_JINJA = (DATA / 'gemma3_chat_template.jinja').read_text(encoding='utf-8')
QWEN3_ADDED = ['<think>', '</think>', '<tool_call>', '</tool_call>', '<tool_response>', '</tool_response>']

real_weights = pytest.mark.real_weights

# Responses-style function tools, as rftjax data rows carry them, and the chat-completions shape HF templates read.
TOOLS = [
  {
    'type': 'function',
    'name': 'add',
    'description': 'Add two integers.',
    'parameters': {
      'type': 'object',
      'properties': {'a': {'type': 'integer'}, 'b': {'type': 'integer'}},
      'required': ['a', 'b'],
    },
  },
  {
    'type': 'function',
    'name': 'get_weather',
    'description': 'Weather for a city, in °C <now>.',
    'parameters': {
      'type': 'object',
      'properties': {'city': {'type': 'string'}, 'unit': {'type': 'string', 'enum': ['celsius', 'fahrenheit']}},
      'required': ['city'],
    },
  },
]
TOOLS_CC = [
  {'type': 'function', 'function': {'name': t['name'], 'description': t['description'], 'parameters': t['parameters']}}
  for t in TOOLS
]


def _call(name, arguments, call_id=None):
  call = {'type': 'function', 'function': {'name': name, 'arguments': arguments}}
  return call if call_id is None else {**call, 'id': call_id}


# test_tokenizer's conversations, plus an earlier answer with reasoning (Qwen3's template drops it)
CHATS = [
  *CONVERSATIONS[:3],
  [
    {'role': 'system', 'content': 'Answer in JSON.'},
    {'role': 'user', 'content': '名前は？ 😀'},
    {'role': 'assistant', 'content': '<think>\nA name.\n</think>\n\n{"name": "bot"}'},
    {'role': 'user', 'content': '\tAnd\tyours?\n'},
  ],
]
TOOL_CHATS = [
  ([{'role': 'system', 'content': 'You are a calculator.'}, {'role': 'user', 'content': 'What is 2 + 3?'}], TOOLS),
  (
    [
      {'role': 'user', 'content': 'What is 2 + 3?'},
      {'role': 'assistant', 'content': '', 'tool_calls': [_call('add', {'a': 2, 'b': 3}, 'call_1')]},
      {'role': 'tool', 'content': '5', 'tool_call_id': 'call_1', 'name': 'add'},
    ],
    TOOLS,
  ),
  (
    [
      {'role': 'system', 'content': 'Be brief.'},
      {'role': 'user', 'content': 'Weather in Paris and Tokyo?'},
      {
        'role': 'assistant',
        'content': '<think>\nTwo cities.\n</think>\n\nLet me check.',
        'tool_calls': [
          _call('get_weather', {'city': 'Paris'}, 'c1'),
          _call('get_weather', '{"city": "Tokyo", "unit": "celsius"}', 'c2'),
        ],
      },
      {'role': 'tool', 'content': '18 °C, sunny', 'tool_call_id': 'c1'},
      {'role': 'tool', 'content': '22 °C, rain', 'tool_call_id': 'c2'},
      {'role': 'assistant', 'content': 'Paris: 18 °C, sunny. Tokyo: 22 °C, rain.'},
      {'role': 'user', 'content': 'And in 東京 tomorrow? 😀'},
    ],
    TOOLS,
  ),
  (
    [
      {'role': 'user', 'content': 'Add 40 and 2.'},
      {
        'role': 'assistant',
        'content': '<think>\nUse the tool.\n</think>\n\n',
        'tool_calls': [_call('add', '{"a": 40, "b": 2}')],
      },
      {'role': 'tool', 'content': '42'},
    ],
    None,
  ),
]


def _arith_prompts(names=('train', 'valid', 'equations_train', 'equations_valid')):
  return [json.loads(line)['messages'] for n in names for line in (ROOT / 'data/arith' / f'{n}.jsonl').open()]


# ---------------------------------------------------------------------------------------------------------------
# Reference tokenizers.


def _gguf(name):
  try:
    return {'gemma3': pretrained.gemma3_270m_gguf, 'smollm2': pretrained.smollm2_135m_gguf}[name]()
  except pretrained.MissingWeightsError as e:
    pytest.skip(str(e))


def _auto(folder):
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(str(folder))


def _ref_ids(ref, messages, tools=None, **kwargs):
  return list(
    ref.apply_chat_template(
      messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False, **kwargs
    )
  )


@pytest.fixture(scope='module')
def smollm2():
  gguf = _gguf('smollm2')
  return tokenizer.load_tokenizer(f'gguf:{gguf}'), _auto(reference_folder(gguf))


def _write_qwen3_folder(folder, chat_template_value):
  """A Qwen3-style tokenizer folder: SmolLM2's vocabulary (it has <|im_start|>, <|im_end|>, <|endoftext|>) plus
  Qwen3's added, non-special tokens, and Qwen3's special-token config."""
  import tokenizers

  raw = tokenizers.Tokenizer.from_file(str(reference_folder(_gguf('smollm2')) / 'tokenizer.json'))
  raw.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in QWEN3_ADDED])
  folder.mkdir(parents=True)
  raw.save(str(folder / 'tokenizer.json'))
  config = {
    'tokenizer_class': 'TokenizersBackend',
    'bos_token': None,
    'eos_token': '<|im_end|>',
    'pad_token': '<|endoftext|>',
    'unk_token': None,
    'add_bos_token': False,
    'clean_up_tokenization_spaces': False,
    'model_max_length': 40960,
    'chat_template': chat_template_value,
  }
  (folder / 'tokenizer_config.json').write_text(json.dumps(config, indent=2, ensure_ascii=False))
  return folder


@pytest.fixture(scope='module')
def qwen3(tmp_path_factory):
  folder = _write_qwen3_folder(tmp_path_factory.mktemp('qwen3') / 'tok', QWEN3_JINJA)
  return folder, _auto(folder)


@pytest.fixture(scope='module')
def gemma3(tmp_path_factory):
  """(GGUF tokenizer with the named `gemma` template, HF folder tokenizer with the official Jinja, reference)."""
  gguf = _gguf('gemma3')
  ref_folder = reference_folder(gguf)
  folder = tmp_path_factory.mktemp('gemma3')
  (folder / 'tokenizer.json').symlink_to(ref_folder / 'tokenizer.json')
  shutil.copy(ref_folder / 'tokenizer_config.json', folder / 'tokenizer_config.json')
  (folder / 'chat_template.jinja').write_text(GEMMA3_JINJA, encoding='utf-8')
  return tokenizer.load_tokenizer(f'gguf:{gguf}'), tokenizer.load_tokenizer(f'hf:{folder}'), _auto(ref_folder)


# ---------------------------------------------------------------------------------------------------------------
# Messages, tools and the plain template (no weights needed).


def test_tools_convert_to_chat_completions_shape():
  assert json.dumps(chat_template.chat_completions_tools(TOOLS)) == json.dumps(TOOLS_CC)  # key order shows in prompts
  assert chat_template.chat_completions_tools(TOOLS_CC) == TOOLS_CC  # already that shape: unchanged
  assert chat_template.chat_completions_tools([]) is None and chat_template.chat_completions_tools(None) is None
  with pytest.raises(ValueError, match=r'tools\[1\]: only function tools'):
    chat_template.chat_completions_tools([TOOLS[0], {'type': 'web_search'}])
  with pytest.raises(ValueError, match=r'tools\[0\]: a function tool needs a non-empty string "name"'):
    chat_template.chat_completions_tools([{'type': 'function', 'description': 'x'}])
  with pytest.raises(ValueError, match='tools must be a list'):
    chat_template.chat_completions_tools(TOOLS[0])


def test_message_check_names_the_bad_message():
  ok = chat_template.check_messages(
    [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': None, 'tool_calls': [_call('add', {})]}]
  )
  assert ok[1] == {'role': 'assistant', 'tool_calls': [_call('add', {})]}  # None-valued keys dropped
  bad = [
    ([{'role': 'developer', 'content': 'x'}], r'messages\[0\] must be .*role'),
    ([{'role': 'user', 'content': 'x'}, {'role': 'tool', 'content': 3}], r'messages\[1\] must be'),
    ([{'role': 'user', 'content': 'x', 'tool_calls': [_call('f', {})]}], r'messages\[0\]: only assistant'),
    ([{'role': 'assistant', 'tool_calls': [_call('f', 7)]}], r'messages\[0\]\.tool_calls\[0\]\.function\.arguments'),
    ([{'role': 'assistant', 'tool_calls': [{'name': 'f'}]}], r'messages\[0\]\.tool_calls\[0\] must be'),
    ([{'role': 'assistant', 'tool_calls': []}], r'messages\[0\]: an assistant message needs'),
    ([{'role': 'tool', 'content': 'x', 'tool_call_id': 5}], r'messages\[0\]\.tool_call_id must be a string'),
    ([{'role': 'user', 'content': [{'type': 'text', 'text': 'x'}]}], r'messages\[0\] must be'),
    ([], 'empty messages'),
  ]
  for messages, match in bad:
    with pytest.raises(ValueError, match=match):
      chat_template.check_messages(messages)


def test_plain_template_tool_format():
  # Tools are never listed; the tool turns before the last user message are dropped with everything else there.
  assert chat_template.render_named('plain', TOOL_CHATS[2][0], tools=TOOLS) == 'And in 東京 tomorrow? 😀'
  assert chat_template.render_named('plain', TOOL_CHATS[0][0], tools=TOOLS) == 'What is 2 + 3?'
  messages, _ = TOOL_CHATS[1]
  assert chat_template.render_named('plain', messages, tools=TOOLS) == (
    'What is 2 + 3?<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
    '<tool_response>5</tool_response>'
  )
  messages, _ = TOOL_CHATS[3]  # string arguments are written verbatim
  assert chat_template.render_named('plain', messages) == (
    'Add 40 and 2.<think>\nUse the tool.\n</think>\n\n<tool_call>{"name": "add", "arguments": {"a": 40, "b": 2}}'
    '</tool_call><tool_response>42</tool_response>'
  )
  history = [*CHATS[2], {'role': 'assistant', 'content': 'Why did'}, {'role': 'tool', 'content': '{"ok": 1}'}]
  assert (
    chat_template.render_named('plain', history)
    == '  Tell me a joke.\n\nWhy did<tool_response>{"ok": 1}</tool_response>'
  )
  for messages in CHATS:  # no later messages: exactly the last user message, as before tools existed
    assert chat_template.render_named('plain', messages) == [m for m in messages if m['role'] == 'user'][-1]['content']
  with pytest.raises(ValueError, match=r'messages\[3\] is a system message after the last user message'):
    chat_template.render_named(
      'plain', [*CHATS[1], {'role': 'assistant', 'content': 'x'}, {'role': 'system', 'content': 'y'}]
    )
  with pytest.raises(ValueError, match=r'messages\[0\] is a tool result, but no user message'):
    chat_template.render_named('plain', [{'role': 'tool', 'content': 'x'}])
  # The tiny from-scratch model ships no template: plain, with BOS from its config.
  tok = tokenizer.load_tokenizer(f'sp:{ROOT}/data/tiny/tokenizer.model')
  assert not tok.has_jinja_template and tok.jinja_template is None and tok.chat_template == 'plain'
  messages, tools = TOOL_CHATS[1]
  text = tok.chat_text(messages, tools)
  assert tok.encode_prompt(messages, tools=tools) == [tok.bos_id, *tok.encode(text)]
  assert tok.chat_text(messages, add_generation_prompt=False) == text  # plain has no generation prompt


def test_named_templates_refuse_tools():
  for name in ('gemma', 'chatml', 'qwen3', 'llama3'):
    for messages, tools in TOOL_CHATS:
      with pytest.raises(ValueError, match=f"the '{name}' chat template cannot render tools"):
        chat_template.render_named(name, messages, tools=tools)
    assert chat_template.render_named(name, CHATS[1], add_generation_prompt=False) + {
      'gemma': '<start_of_turn>model\n',
      'chatml': '<|im_start|>assistant\n',
      'qwen3': '<|im_start|>assistant\n<think>\n\n</think>\n\n',
      'llama3': '<|start_header_id|>assistant<|end_header_id|>\n\n',
    }[name] == chat_template.render_named(name, CHATS[1])


def _jinja(text, source='src', variables=None):
  return chat_template.JinjaTemplate({'default': text}, source, variables or {})


def test_jinja_environment_matches_transformers():
  """Filters, globals and whitespace handling: the same text as transformers' renderer for small templates."""
  from transformers.utils.chat_template_utils import render_jinja_template

  templates = [
    '{{ messages | tojson }}|{{ tools | tojson(indent=2) }}|'
    '{{ messages[0] | tojson(separators=(",", ":"), sort_keys=true) }}',
    '{% for m in messages %}\n  {% if loop.index > 1 %}{% break %}{% endif %}\n  {{ m.content }}\n{% endfor %}\n',
    '{%- set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}'
    '{{ dict(a=1) | tojson }}{{ bos_token }}{{ add_generation_prompt }}{{ enable_thinking is defined }}',
    '{{ strftime_now("%Y") | length }}{% if tools %}T{% endif %}{{ messages[0].reasoning_content }}',
  ]
  messages = [{'role': 'user', 'content': 'é <b> & "q"', 'reasoning': 'r'}, {'role': 'assistant', 'content': 'a'}]
  for text in templates:
    (want,), _ = render_jinja_template(
      conversations=[messages], tools=TOOLS_CC, chat_template=text, add_generation_prompt=True, bos_token='<s>'
    )
    assert _jinja(text, 'test', {'bos_token': '<s>'}).render(messages, tools=TOOLS) == want


def test_jinja_errors_name_the_template():
  refuses = _jinja('{{ raise_exception("Conversation roles must alternate") }}', 'hf:/m/x.json')
  with pytest.raises(
    ValueError, match=r'^hf:/m/x\.json: the chat template refuses this conversation: Conversation roles'
  ):
    refuses.render(CHATS[0])
  with pytest.raises(ValueError, match=r'^gguf:/m\.gguf: the chat template is not valid Jinja: .*\(template line 2\)'):
    _jinja('ok\n{% if %}', 'gguf:/m.gguf').check()
  with pytest.raises(ValueError, match=r'failed on this conversation \(template line 1\): UndefinedError'):
    _jinja('{{ messages[0].nope.x }}').render(CHATS[0])
  # The sandbox turns internals into undefined values (printed as ''), and namespaces refuse `_` names.
  assert _jinja('{{ messages.__class__ }}{{ "".__class__ }}').render(CHATS[0]) == ''
  with pytest.raises(ValueError, match='SecurityError'):
    _jinja('{% set ns = namespace(_x=1) %}').render(CHATS[0])
  with pytest.raises(ValueError, match='SecurityError'):
    _jinja('{{ "".__class__.__mro__[1].__subclasses__() }}').render(CHATS[0])
  with pytest.raises(ValueError, match=r'^hf:/m: the model names its chat templates \[.tool_use.\] but none "default"'):
    chat_template.JinjaTemplate({'tool_use': 'x'}, 'hf:/m').check()


# ---------------------------------------------------------------------------------------------------------------
# Parity with transformers, and named templates against the model's own.


@real_weights
def test_smollm2_ids_match_transformers(smollm2):
  tok, ref = smollm2
  assert tok.has_jinja_template and 'SmolLM' in tok.jinja_template and 'tokenizer.chat_template' in tok.jinja_source
  for messages in CHATS:
    assert tok.encode_prompt(messages) == _ref_ids(ref, messages)
  for messages, tools in TOOL_CHATS:
    assert tok.encode_prompt(messages, tools=tools) == _ref_ids(ref, messages, None if tools is None else TOOLS_CC)
  # SmolLM2's "BOS" is <|im_start|>; it adds none itself, so the text keeps it (it opens the first turn).
  assert tok.bos_id == tok.token_to_id('<|im_start|>') and not tok.add_bos
  assert tok.chat_text(CHATS[1]).startswith('<|im_start|>system\nYou are a careful math tutor.')


@real_weights
def test_smollm2_named_and_jinja_agree_on_shipped_prompts(smollm2):
  tok, _ = smollm2
  named = tokenizer.load_tokenizer('gguf:smollm2-135m', chat_template='chatml')
  assert not named.has_jinja_template and named.jinja_template == tok.jinja_template  # forced: text kept, unused
  prompts = _arith_prompts() + CHATS
  assert len(prompts) == 4204
  assert [tok.chat_text(m) for m in prompts] == [named.chat_text(m) for m in prompts]
  assert [tok.encode_prompt(m) for m in prompts[::97]] == [named.encode_prompt(m) for m in prompts[::97]]
  with pytest.raises(ValueError, match="the 'chatml' chat template cannot render tools"):
    named.encode_prompt(*TOOL_CHATS[0])


@real_weights
@pytest.mark.parametrize('thinking', [False, True])
def test_qwen3_ids_match_transformers(qwen3, thinking):
  folder, ref = qwen3
  tok = tokenizer.load_tokenizer(f'hf:{folder}', thinking=thinking)
  assert tok.has_jinja_template and tok.jinja_template == QWEN3_JINJA and tok.chat_template == 'qwen3'
  assert not tok.add_bos and tok.bos_id is None and tok.stop_ids == (tok.token_to_id('<|im_end|>'),)
  for messages in CHATS:
    assert tok.encode_prompt(messages) == _ref_ids(ref, messages, enable_thinking=thinking)
  for messages, tools in TOOL_CHATS:
    want = _ref_ids(ref, messages, None if tools is None else TOOLS_CC, enable_thinking=thinking)
    assert tok.encode_prompt(messages, tools=tools) == want
  ids = tok.encode_prompt(*TOOL_CHATS[1])
  assert {tok.token_to_id(t) for t in ('<tool_call>', '</tool_call>', '<tool_response>')} <= set(ids)
  assert tok.chat_text(*TOOL_CHATS[1]).endswith(
    '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>\n'
    '<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n'
    + ('' if thinking else '<think>\n\n</think>\n\n')
  )
  # Qwen3's template needs "content" beside tool calls; transformers fails the same way.
  no_content = [CHATS[0][0], {'role': 'assistant', 'tool_calls': [_call('add', {'a': 1, 'b': 1})]}]
  with pytest.raises(ValueError, match='UndefinedError.*give tool-call messages "content": ""'):
    tok.encode_prompt(no_content, tools=TOOLS)
  with pytest.raises(Exception, match="has no attribute 'content'"):
    _ref_ids(ref, no_content, TOOLS_CC)


@real_weights
def test_qwen3_named_and_jinja_agree_on_tool_free_prompts(qwen3):
  folder, _ = qwen3
  prompts = _arith_prompts(('valid', 'equations_valid')) + CHATS
  for thinking in (False, True):
    tok = tokenizer.load_tokenizer(f'hf:{folder}', thinking=thinking)
    named = tokenizer.load_tokenizer(f'hf:{folder}', chat_template='qwen3', thinking=thinking)
    assert [tok.chat_text(m) for m in prompts] == [named.chat_text(m) for m in prompts]
  # Known difference: a conversation that ends with an assistant turn (never a data row: data.py wants the last
  # message from the user). Qwen3's template keeps that turn's reasoning; the named template drops it.
  ends_with_answer = [CHATS[0][0], {'role': 'assistant', 'content': '<think>\nplan\n</think>\n\n4'}]
  assert '<think>\nplan\n</think>\n\n4<|im_end|>' in tok.chat_text(ends_with_answer)
  assert '<|im_start|>assistant\n4<|im_end|>' in named.chat_text(ends_with_answer)


@real_weights
def test_hf_template_list_form_picks_tool_use_like_transformers(tmp_path):
  templates = [
    {
      'name': 'default',
      'template': '{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}',
    },
    {
      'name': 'tool_use',
      'template': '{{ tools | tojson }}{% for m in messages %}{{ m.role }}:{{ m.content }}\n{% endfor %}',
    },
  ]
  folder = _write_qwen3_folder(tmp_path / 'tok', templates)
  tok, ref = tokenizer.load_tokenizer(f'hf:{folder}'), _auto(folder)
  assert tok.has_jinja_template and tok.jinja_template == templates[0]['template']
  assert tok.encode_prompt(CHATS[2]) == _ref_ids(ref, CHATS[2])
  assert tok.encode_prompt(*TOOL_CHATS[1]) == _ref_ids(ref, TOOL_CHATS[1][0], TOOLS_CC)
  assert tok.chat_text(*TOOL_CHATS[1]).startswith('[{"type": "function", "function": {"name": "add"')
  # Files win over the config, as in transformers; a syntax error names the file at load time...
  (folder / 'chat_template.jinja').write_text('{% for m in messages %}{{ m.content }}{% endfor %', encoding='utf-8')
  with pytest.raises(ValueError, match=r'chat_template\.jinja: the chat template is not valid Jinja'):
    tokenizer.load_tokenizer(f'hf:{folder}')
  # ...unless a named template is forced: the text stays readable, unused.
  forced = tokenizer.load_tokenizer(f'hf:{folder}', chat_template='chatml')
  assert not forced.has_jinja_template and forced.jinja_template.endswith('{% endfor %')
  assert forced.chat_text(CHATS[0]) == '<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n'


@real_weights
def test_gemma3_ids_match_transformers(gemma3):
  named, jinja, ref = gemma3
  assert not named.has_jinja_template and named.chat_template == 'gemma'  # the base GGUF carries no template
  assert jinja.has_jinja_template and jinja.chat_template == 'gemma' and jinja.add_bos
  for messages in CHATS:
    want = _ref_ids(ref, messages, chat_template=GEMMA3_JINJA)  # the template writes "<bos>" itself
    assert named.encode_prompt(messages) == want
    assert jinja.encode_prompt(messages) == want
    assert not jinja.chat_text(messages).startswith('<bos>') and want[0] == jinja.bos_id
  prompts = _arith_prompts(('valid', 'equations_valid'))  # shipped configs render these with `plain`
  assert [named.chat_text(m) for m in prompts] == [jinja.chat_text(m) for m in prompts]
  # Gemma 3's template has no tool turns: its own error, with where it came from.
  with pytest.raises(ValueError, match=r'chat_template\.jinja: the chat template refuses .* roles must alternate'):
    jinja.encode_prompt(*TOOL_CHATS[1])
  with pytest.raises(ValueError, match="the 'gemma' chat template cannot render tools"):
    named.encode_prompt(*TOOL_CHATS[1])
  assert jinja.encode_prompt(*TOOL_CHATS[0]) == _ref_ids(ref, TOOL_CHATS[0][0], TOOLS_CC, chat_template=GEMMA3_JINJA)


# OpenAI rows as users send them to a server too: a developer message, content as a list of text parts, an
# assistant's tool call with null content. data.py turns them into what the templates render.
OPENAI_ROWS = [
  {
    'messages': [
      {'role': 'developer', 'content': 'You are terse.'},
      {'role': 'user', 'content': [{'type': 'text', 'text': 'What is '}, {'type': 'input_text', 'text': '2 + 2?'}]},
    ]
  },
  {
    'messages': [
      {'role': 'system', 'content': [{'type': 'text', 'text': 'Sys A.'}, {'type': 'text', 'text': ' Sys B.'}]},
      {'role': 'user', 'content': 'Hi!'},
      {'role': 'assistant', 'content': [{'type': 'text', 'text': 'Hello.'}]},
      {'role': 'user', 'content': 'Tell me a joke.'},
    ]
  },
]


def _trained_messages(row):
  return list(data.parse_line(json.dumps(row), 'row').messages)


@pytest.mark.parametrize('name', sorted(chat_template.JINJA_TWINS))
def test_jinja_twins_render_the_named_templates_with_bos_where_rftjax_adds_it(name):
  """What transformers renders from an exported twin (tokenized without special tokens) is rftjax's prompt: BOS
  first exactly when the tokenizer adds one, as `encode_prompt` does (a plain-template export once dropped it); and
  from an OpenAI row as a client sends it (developer role, content parts) the prompt trained on that row (the
  exported twin once rendered a `developer` turn, or failed on a parts list)."""
  from transformers.utils.chat_template_utils import render_jinja_template

  for add_bos in (True, False):
    twin = chat_template.jinja_twin(name, add_bos=add_bos, default_system='Be brief.')
    jinja = chat_template.for_serving(twin, thinking=False)
    rows = [(m, m) for m in CONVERSATIONS[:3]] + [(r['messages'], _trained_messages(r)) for r in OPENAI_ROWS]
    for sent, trained in rows:
      (got,), _ = render_jinja_template(
        conversations=[sent], chat_template=jinja, add_generation_prompt=True, bos_token='<s>'
      )
      named = tokenizer.render_chat(name, trained, default_system='Be brief.')
      assert got == ('<s>' if add_bos else '') + named


def test_an_export_keeps_the_models_own_template(smollm2, tmp_path):
  """A tokenizer that ships a Jinja template exports it as is (tools and all); one without exports the named twin."""

  tok, _ = smollm2
  tokenizer.write_tokenizer_files(tok, tmp_path, {'max_position_embeddings': 2048})
  exported = json.loads((tmp_path / 'tokenizer_config.json').read_text())['chat_template']
  assert exported == chat_template.SERVING_PRELUDE + tok.jinja_template  # it reads no enable_thinking
  plain = tokenizer.load_tokenizer('gguf:smollm2-135m', chat_template='plain')
  tokenizer.write_tokenizer_files(plain, tmp_path, {'max_position_embeddings': 2048})
  assert json.loads((tmp_path / 'tokenizer_config.json').read_text())['chat_template'] == chat_template.for_serving(
    chat_template.jinja_twin('plain', add_bos=plain.add_bos), thinking=False
  )


def test_a_template_an_export_wrote_is_written_again_once():
  """A run on an exported folder exports its template again: the prelude and thinking default went on twice (the
  template grew at each round); the newest thinking default is the one kept."""
  qwen3 = (pathlib.Path(__file__).parent / 'data' / 'qwen3_chat_template.jinja').read_text()
  once = chat_template.for_serving(qwen3, thinking=True)
  assert chat_template.for_serving(once, thinking=False) == chat_template.for_serving(qwen3, thinking=False)
  assert chat_template.for_serving(once, thinking=True) == once and once.count('rftjax_ns = namespace') == 1


@real_weights
@pytest.mark.parametrize('thinking', [False, True])
def test_an_exported_folder_serves_the_prompts_trained_on(tmp_path, thinking):
  """transformers serving an exported Qwen3-style folder, given the rows as a client sends them, renders the ids
  rftjax trained on: with the run's thinking switch when the request does not say (Qwen3's template thinks then;
  runs default to not), with the `tool_use` template for a row with tools (the export once kept `default` alone),
  and with a developer role and content parts as data.py reads them."""
  tool_use = '{{- "# tools: " + (tools | length | string) + "\\n" }}' + QWEN3_JINJA
  source = _write_qwen3_folder(
    tmp_path / 'src', [{'name': 'default', 'template': QWEN3_JINJA}, {'name': 'tool_use', 'template': tool_use}]
  )
  tok = tokenizer.load_tokenizer(f'hf:{source}', thinking=thinking)
  (tmp_path / 'out').mkdir()
  tokenizer.write_tokenizer_files(tok, tmp_path / 'out', {'max_position_embeddings': 2048})
  served = _auto(tmp_path / 'out')
  user, call, result = TOOL_CHATS[1][0]
  again = {'role': 'user', 'content': 'And 4 + 5?'}
  tool_row = {'messages': [user, {**call, 'content': None}, result, again], 'tools': TOOLS}
  for row in [*OPENAI_ROWS, *({'messages': m} for m in CHATS), tool_row]:
    (trained,) = data.encode_prompts([data.parse_line(json.dumps(row), 'row')], tok)
    tools = TOOLS_CC if 'tools' in row else None
    assert _ref_ids(served, row['messages'], tools) == trained
  assert tok.chat_text(*TOOL_CHATS[1]).startswith(f'# tools: {len(TOOLS)}\n')


def test_an_exported_sentencepiece_tokenizer_has_the_models_vocabulary(tmp_path):
  """transformers' GemmaTokenizer adds a '<mask>' token past the vocabulary of a model that has none (the tiny
  demos'): the exported model would have one token more in its tokenizer than in its embedding."""

  tok = tokenizer.load_tokenizer(f'sp:{ROOT}/data/tiny_tools/tokenizer.model')
  tokenizer.write_tokenizer_files(tok, tmp_path, {'max_position_embeddings': 512})
  ref = _auto(tmp_path)
  assert len(ref) == tok.vocab_size and ref.mask_token is None
  text = 'Secret? 42'
  assert ref.encode(text, add_special_tokens=False) == tok.encode(text)


@real_weights
def test_a_template_that_drops_earlier_tool_calls_is_an_error_naming_the_row(smollm2, qwen3, tmp_path):
  """SmolLM2's template renders an assistant turn's tool calls as nothing: the prompt would show a tool result that
  answers no call. Qwen3's renders them."""

  messages, tools = TOOL_CHATS[1]
  path = tmp_path / 'd.jsonl'
  row = {'messages': [*messages, {'role': 'user', 'content': 'And 4 + 5?'}], 'tools': tools}
  path.write_text(json.dumps(row) + '\n')
  examples = data.load_jsonl(path)
  with pytest.raises(data.DataError) as e:
    data.encode_prompts(examples, smollm2[0])
  assert str(e.value) == (
    f"{path}:1: messages[1].tool_calls: the chat template renders no tool calls (the prompt has no 'add'); expected "
    'a template that does (docs/tools.md), or the row without them'
  )
  (ids,) = data.encode_prompts(examples, tokenizer.load_tokenizer(f'hf:{qwen3[0]}'))
  assert ids


def test_an_empty_text_prompt_without_bos_is_an_error_naming_its_line(smollm2, tmp_path):
  """SmolLM2 adds no BOS: `{"text": ""}` has no tokens, an all-pad row whose completion depended on the pad id
  when other prompts of the batch had tokens."""
  from rftjax import sample

  path = tmp_path / 'p.jsonl'
  path.write_text('{"text": "Hi"}\n{"text": ""}\n')
  examples = [ex for _, ex in sample.read_prompts(path)]
  with pytest.raises(data.DataError) as e:
    data.encode_prompts(examples, smollm2[0])
  assert str(e.value) == f'{path}:2: "text" is empty and this tokenizer adds no BOS: no tokens to complete from'


def test_the_named_gemma_template_names_the_message_that_breaks_the_alternation():
  messages = [{'role': 'system', 'content': 'a'}, {'role': 'system', 'content': 'b'}, {'role': 'user', 'content': 'c'}]
  with pytest.raises(ValueError) as e:
    chat_template.render_named('gemma', messages)
  assert str(e.value) == (
    'gemma template: roles must alternate user/assistant/user/... after at most one system message; messages[1] is '
    "'system' (a developer message is a system one)"
  )
  assert '<start_of_turn>user\na\n\nc<end_of_turn>' in chat_template.render_named('gemma', messages[::2])
