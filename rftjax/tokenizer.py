"""Tokenizers and chat templates: one `Tokenizer` over a sentencepiece or a byte-level BPE backend.

Specs (`load_tokenizer`):
  sp:PATH            a sentencepiece `.model` file (e.g. the tiny demo model `train_sentencepiece` writes).
  gguf:PATH          the tokenizer stored in a GGUF's metadata; `gguf:gemma3-270m` / `gguf:smollm2-135m` name the
                     pip-installed files (see pretrained.py).
                     - `tokenizer.ggml.model == 'llama'` (Gemma): rebuilt in memory as a sentencepiece BPE model.
                     - `tokenizer.ggml.model == 'gpt2'` (SmolLM2): rebuilt as a byte-level BPE in `tokenizers`.
                     (both in gguf_vocab.py)
  hf:DIR             a Hugging Face folder: `tokenizer.json` (via `tokenizers`), else `tokenizer.model`.

Parity target: transformers' own tokenizer loaded from the same file (`AutoTokenizer.from_pretrained(dir,
gguf_file=...)`); tests/test_tokenizer.py checks token ids on >1,000 strings per model. Like transformers, text
that spells a control token (`<end_of_turn>`, `<|im_end|>`, ...) encodes to that token: the chat templates rely
on it. Host-side only: nothing here runs under jit.

Chat templates (rftjax/chat_template.py): the model's own Jinja template when the tokenizer ships one (GGUF
`tokenizer.chat_template`, an HF folder's `chat_template.jinja` or tokenizer_config.json), else a named Python one
(`gemma`, `chatml`, `qwen3`, `llama3`, `plain`), which `chat_template=` can also force. `chat_text` renders the
OpenAI-style `messages` (and function `tools`) plus the generation prompt, never the BOS (`encode_prompt` adds it).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

from rftjax import chat_template as chat_template_lib
from rftjax import gguf_io
from rftjax import gguf_vocab
from rftjax import pretrained

TEMPLATES = chat_template_lib.TEMPLATES


# ---------------------------------------------------------------------------------------------------------------
# Backends. Each turns text without special tokens into ids and ids back into text; `Tokenizer` does the rest.


class _SentencePiece:
  def __init__(self, model_proto: bytes):
    import sentencepiece as spm

    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self.sp.get_piece_size()
    self.pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]

  def encode(self, text: str, parse_special: bool = False) -> list[int]:
    return self.sp.encode(text, out_type=int)  # never matches control pieces itself: `Tokenizer` does that

  def decode(self, ids: list[int]) -> str:
    # ids past the vocabulary decode to nothing, as in the byte-level backend: a model's embedding may have padding
    # rows the tokenizer lacks (Gemma 3 4B-27B: 262,208 of them), and sentencepiece raises on them
    return self.sp.decode([i for i in ids if 0 <= i < self.vocab_size])

  def piece(self, i: int) -> str:
    return self.pieces[i]

  def token_id(self, token: str) -> int | None:
    i = self.sp.piece_to_id(token) if token else 0
    return i if token and self.pieces[i] == token else None

  @property
  def unk_id(self) -> int | None:  # without byte fallback, characters the pieces lack all encode to it
    i = self.sp.unk_id()
    return i if 0 <= i < self.vocab_size else None


class _HFTokenizers:
  """A `tokenizers.Tokenizer`: byte-level BPE rebuilt from a GGUF, or any HF `tokenizer.json`."""

  def __init__(self, tok):  # a `tokenizers.Tokenizer`
    self.tok = tok
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, parse_special: bool = True) -> list[int]:
    if parse_special:
      return self.tok.encode(text, add_special_tokens=False).ids
    self.tok.encode_special_tokens = True  # a switch on the shared object: set it for this call only
    try:
      return self.tok.encode(text, add_special_tokens=False).ids
    finally:
      self.tok.encode_special_tokens = False

  def decode(self, ids: list[int]) -> str:
    return self.tok.decode(ids, skip_special_tokens=False)

  def piece(self, i: int) -> str:
    return self.tok.id_to_token(i)

  def token_id(self, token: str) -> int | None:
    return self.tok.token_to_id(token) if token else None

  @property
  def unk_id(self) -> int | None:  # byte-level BPE spells every text and has none
    return self.token_id(getattr(self.tok.model, 'unk_token', None) or '')


# ---------------------------------------------------------------------------------------------------------------
# Chat templates (rftjax/chat_template.py renders them).


def render_chat(
  template: str, messages: Sequence[dict], *, default_system: str | None = None, thinking: bool = False
) -> str:
  """Render `messages` with a named template and append the assistant generation prompt. No BOS."""
  return chat_template_lib.render_named(template, messages, default_system=default_system, thinking=thinking)


def _template_from_vocab(backend) -> str:
  """The template whose turn-end token the vocabulary has, else `plain`."""
  for name, token in chat_template_lib.TURN_END.items():
    if backend.token_id(token) is not None and (name != 'qwen3' or backend.token_id('<think>') is not None):
      return name
  return 'plain'


# ---------------------------------------------------------------------------------------------------------------


class Tokenizer:
  """Text <-> ids plus the model's chat conventions. Build with `load_tokenizer`."""

  def __init__(
    self,
    backend,
    *,
    bos_id: int | None,
    eos_id: int | None,
    pad_id: int | None,
    add_bos: bool,
    special_ids: Iterable[int],
    chat_template: str,
    default_system: str | None = None,
    source: str = '',
    jinja: chat_template_lib.JinjaTemplate | None = None,
    use_jinja: bool = True,
    stop_ids: Iterable[int] = (),
  ):
    if chat_template not in TEMPLATES:
      raise ValueError(f'unknown chat template {chat_template!r}; expected one of {TEMPLATES}')
    self._backend = backend
    self._bos, self._eos = bos_id, eos_id
    self._pad = pad_id if pad_id is not None else eos_id
    self.add_bos = add_bos and bos_id is not None
    self.special_ids = frozenset(int(i) for i in special_ids)
    self._chat_template = chat_template
    self.default_system = default_system
    self.thinking = False  # reasoning first: the qwen3 template, and Jinja ones via enable_thinking (load_tokenizer)
    self.source = source
    self._jinja = jinja
    # A forced named template (`chat_template=`) keeps the Jinja text for inspection but never renders with it.
    self._use_jinja = jinja is not None and use_jinja
    if self._use_jinja:
      jinja.check()  # a syntax error surfaces at load time, naming the file
    turn_end = self.token_to_id(chat_template_lib.TURN_END.get(chat_template, ''))
    ends = [i for i in stop_ids if 0 <= i < backend.vocab_size]  # a file's list may name ids the vocabulary lacks
    self._stop_ids = tuple(dict.fromkeys(i for i in (eos_id, turn_end, *ends) if i is not None))
    # Control tokens written in text encode whole (transformers does the same); longest first so that the
    # leftmost match is also the longest one. Sentencepiece never matches them itself; byte-level BPE does.
    self._special_re = None
    if isinstance(backend, _SentencePiece):
      words = sorted({backend.piece(i) for i in self.special_ids}, key=len, reverse=True)
      self._special_re = re.compile('|'.join(map(re.escape, words))) if words else None
      self._special_to_id = {backend.piece(i): i for i in self.special_ids}

  def __repr__(self):
    return (
      f'Tokenizer({self.source!r}, vocab={self.vocab_size}, bos={self._bos}, eos={self._eos}, '
      f'template={self._chat_template!r})'
    )

  # -- properties -------------------------------------------------------------------------------------------
  vocab_size = property(lambda self: self._backend.vocab_size)
  bos_id = property(lambda self: self._bos)
  eos_id = property(lambda self: self._eos)
  pad_id = property(lambda self: self._pad)
  stop_ids = property(
    lambda self: self._stop_ids,
    doc="EOS, the chat template's turn-end token and the model's other end tokens (generation_config.json's "
    "eos_token_id list, a GGUF's eot/eom ids).",
  )
  chat_template = property(lambda self: self._chat_template, doc='The named template (stop token, export).')
  has_jinja_template = property(
    lambda self: self._use_jinja, doc="Whether `chat_text` renders with the model's own Jinja template."
  )
  jinja_template = property(
    lambda self: self._jinja.text if self._jinja else None, doc="The model's Jinja template text, if it ships one."
  )
  jinja_templates = property(
    lambda self: dict(self._jinja.templates) if self._jinja else {},
    doc="All of the model's Jinja templates by name ('default', 'tool_use', ...).",
  )
  jinja_source = property(lambda self: self._jinja.source if self._jinja else None, doc='Where it came from.')

  unk_id = property(
    lambda self: self._backend.unk_id, doc='The id text the vocabulary cannot spell encodes to, or None (byte-level).'
  )

  def unspellable(self, text: str) -> str:
    """The characters of `text` the vocabulary cannot spell (each alone encodes to `unk_id`), once each, in order;
    '' for a byte-level vocabulary, which spells everything."""
    unk = self.unk_id
    return '' if unk is None else ''.join(c for c in dict.fromkeys(text) if unk in self.encode(c))

  def token_to_id(self, token: str) -> int | None:
    """Id of a token spelled exactly as in the vocabulary, or None."""
    return self._backend.token_id(token)

  def id_to_token(self, i: int) -> str:
    return self._backend.piece(int(i))

  # -- text <-> ids -----------------------------------------------------------------------------------------
  def encode(self, text: str, *, add_bos: bool = False, parse_special: bool = True) -> list[int]:
    """Text -> ids. Text spelling a control token (`<end_of_turn>`) becomes that token, as in transformers,
    unless `parse_special=False`, which encodes it as plain text (for untrusted text such as model outputs)."""
    ids = [self._bos] if add_bos and self._bos is not None else []
    if not parse_special:
      return ids + self._backend.encode(text, parse_special=False)
    if self._special_re is None:
      return ids + self._backend.encode(text)
    start = 0
    for m in self._special_re.finditer(text):
      if m.start() > start:
        ids += self._backend.encode(text[start : m.start()])
      ids.append(self._special_to_id[m.group()])
      start = m.end()
    if start < len(text):
      ids += self._backend.encode(text[start:])
    return ids

  def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
    """Ids -> text. `skip_special` drops control tokens (BOS, EOS, turn markers, pad)."""
    if not isinstance(ids, (list, tuple)) and not hasattr(ids, '__array__'):
      ids = list(ids)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()  # lists, numpy and jax arrays alike
    if skip_special:
      return self._backend.decode([i for i in ids if i not in self.special_ids])
    if not isinstance(self._backend, _SentencePiece):
      return self._backend.decode(ids)
    # Sentencepiece renders control pieces as "": write them out, decoding the runs between them.
    out, run = [], []
    for i in ids:
      if i in self.special_ids:
        out += [self._backend.decode(run), self._backend.piece(i)]
        run = []
      else:
        run.append(i)
    return ''.join(out + [self._backend.decode(run)])

  def decode_batch(self, batch: Iterable[Iterable[int]], *, skip_special: bool = True) -> list[str]:
    return [self.decode(ids, skip_special=skip_special) for ids in batch]

  def decode_completion(self, ids: Iterable[int], cut: bool) -> str:
    """`decode`; a completion `cut` by max_new_tokens loses a character the cut split ('答案是���', U+FFFD each)."""
    return self.decode(ids).rstrip('\ufffd') if cut else self.decode(ids)

  # -- prompts ----------------------------------------------------------------------------------------------
  def chat_text(
    self, messages: Sequence[dict], tools: Sequence[dict] | None = None, add_generation_prompt: bool = True
  ) -> str:
    """The conversation as text, ending with the prompt for the assistant's turn; never starts with BOS.

    Rendered with the model's Jinja template (`has_jinja_template`), with `enable_thinking=self.thinking`, else
    with the named template. `tools`: function tools, Responses or chat-completions shape. If the template writes
    the BOS text first and `encode_prompt` adds BOS itself (`add_bos`), that text is cut off here.
    """
    if not self._use_jinja:
      return chat_template_lib.render_named(
        self._chat_template,
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        default_system=self.default_system,
        thinking=self.thinking,
      )
    text = self._jinja.render(
      messages, tools=tools, add_generation_prompt=add_generation_prompt, enable_thinking=self.thinking
    )
    # Only when BOS is added separately: SmolLM2's "bos_token" is <|im_start|>, which opens its first turn.
    bos = self._jinja.variables.get('bos_token')
    return text[len(bos) :] if self.add_bos and bos and text.startswith(bos) else text

  def encode_prompt(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> list[int]:
    """Chat-rendered prompt ids, with BOS when the model's tokenizer config adds one."""
    return self.encode(self.chat_text(messages, tools), add_bos=self.add_bos)

  def encode_text(self, text: str) -> list[int]:
    """A raw-text prompt's ids, with BOS when the model's tokenizer config adds one."""
    return self.encode(text, add_bos=self.add_bos)

  # -- export (weights.export_hf) -----------------------------------------------------------------------------
  def serialized_files(self) -> dict[str, bytes]:
    """The backend as Hugging Face files: {'tokenizer.model': sentencepiece proto} or {'tokenizer.json': ...}."""
    if isinstance(self._backend, _SentencePiece):
      return {'tokenizer.model': self._backend.sp.serialized_model_proto()}
    return {'tokenizer.json': self._backend.tok.to_str().encode()}


# ---------------------------------------------------------------------------------------------------------------
# An exported folder's tokenizer files (weights.export_hf).


def _tokenizer_payload(tokenizer) -> dict[str, bytes]:
  """The backend's own files (tokenizer.Tokenizer.serialized_files): a sentencepiece proto or a tokenizers JSON."""
  if not hasattr(tokenizer, 'serialized_files'):
    raise TypeError(f'cannot export tokenizer {tokenizer!r}: it has no serialized_files()')
  return tokenizer.serialized_files()


def write_tokenizer_files(tokenizer, out: pathlib.Path, config: dict) -> None:
  """tokenizer.model (sentencepiece) or tokenizer.json (BPE), plus tokenizer_config.json with the chat template(s):
  the model's own Jinja ones when it shipped them (`tool_use` too), else the twin of the run's named template; each
  as `chat_template_lib.for_serving` writes it, so a server renders the trained prompts."""
  files = _tokenizer_payload(tokenizer)
  stale_templates = [*out.glob('chat_templates/*.jinja'), *out.glob('additional_chat_templates/*.jinja')]
  for stale in ('tokenizer.model', 'tokenizer.json', 'special_tokens_map.json', 'chat_template.jinja'):
    (out / stale).unlink(missing_ok=True)
  for stale in stale_templates:  # transformers reads template files before the config's: an older export's would win
    stale.unlink()
  for name, data in files.items():
    (out / name).write_bytes(data)
  token = lambda i: tokenizer.id_to_token(i) if i is not None else None  # noqa: E731
  special = {
    'bos_token': token(tokenizer.bos_id),
    'eos_token': token(tokenizer.eos_id),
    'pad_token': token(tokenizer.pad_id),
  }
  if getattr(tokenizer, 'has_jinja_template', False):
    templates = tokenizer.jinja_templates
  else:
    twin = chat_template_lib.jinja_twin(
      tokenizer.chat_template,
      add_bos=bool(tokenizer.add_bos),
      default_system=tokenizer.default_system,
      thinking=tokenizer.thinking,  # the run's default
    )
    templates = {'default': twin}
  templates = {k: chat_template_lib.for_serving(v, thinking=tokenizer.thinking) for k, v in templates.items()}
  # one template as a string; several as transformers' list form, so `tool_use` serves tool requests as in training
  template = (
    templates['default']
    if list(templates) == ['default']
    else [{'name': k, 'template': v} for k, v in templates.items()]
  )
  tok_config = dict(
    tokenizer_class='GemmaTokenizer' if 'tokenizer.model' in files else 'PreTrainedTokenizerFast',
    add_bos_token=bool(tokenizer.add_bos),
    add_eos_token=False,
    clean_up_tokenization_spaces=False,
    model_max_length=config['max_position_embeddings'],
    chat_template=template,
    **{k: v for k, v in special.items() if v is not None},
  )
  if 'tokenizer.model' in files:
    # GemmaTokenizer adds a '<mask>' token past the vocabulary unless told the model's own (Gemma has one) or none
    mask = '<mask>' if tokenizer.token_to_id('<mask>') is not None else None
    tok_config.update(unk_token='<unk>', mask_token=mask, sp_model_kwargs={}, spaces_between_special_tokens=False)
  (out / 'tokenizer_config.json').write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + '\n')
  (out / 'special_tokens_map.json').write_text(
    json.dumps({k: v for k, v in special.items() if v is not None}, indent=2, ensure_ascii=False) + '\n'
  )


# ---------------------------------------------------------------------------------------------------------------
# Loading.


def _from_gguf(path: str, chat_template: str | None) -> Tokenizer:
  md = gguf_io.read_metadata(path)
  kind = md.get('tokenizer.ggml.model')
  get_id = lambda key: int(md[key]) if key in md else None  # noqa: E731
  bos, eos = get_id('tokenizer.ggml.bos_token_id'), get_id('tokenizer.ggml.eos_token_id')
  pad = get_id('tokenizer.ggml.padding_token_id')
  types = md['tokenizer.ggml.token_type'].tolist() if 'tokenizer.ggml.token_type' in md else []
  tokens = md['tokenizer.ggml.tokens']
  # The special tokens transformers builds from a GGUF, by the names chat templates use.
  named = {'bos_token': bos, 'eos_token': eos, 'unk_token': get_id('tokenizer.ggml.unknown_token_id'), 'pad_token': pad}
  variables = {k: tokens[i] for k, i in named.items() if i is not None and 0 <= i < len(tokens)}
  source = f'gguf:{path} (metadata tokenizer.chat_template)'
  templates = chat_template_lib.templates_from_config(md.get('tokenizer.chat_template'), source)
  jinja = chat_template_lib.JinjaTemplate(templates, source, variables) if templates else None
  name, default_system = chat_template_lib.recognise(jinja and jinja.text)
  if kind == 'llama':
    backend = _SentencePiece(gguf_vocab.sentencepiece_proto(md))
    special = [i for i, k in enumerate(types) if k in (gguf_vocab.CONTROL, gguf_vocab.UNKNOWN)]
    # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise.
    add_bos = bool(md.get('tokenizer.ggml.add_bos_token', True))
  elif kind == 'gpt2':
    backend = _HFTokenizers(gguf_vocab.byte_level_bpe(md))
    letters = set(gguf_vocab.byte_alphabet().values())
    special = [
      i
      for i, (t, k) in enumerate(zip(md['tokenizer.ggml.tokens'], types))
      if k == gguf_vocab.CONTROL and set(t) <= letters
    ]
    add_bos = bool(md.get('tokenizer.ggml.add_bos_token', False))
  else:
    raise ValueError(
      f"{path}: tokenizer.ggml.model is {kind!r}; supported: 'llama' (sentencepiece, e.g. Gemma) "
      "and 'gpt2' (byte-level BPE, e.g. SmolLM2)"
    )
  if name is None and str(md.get('general.architecture', '')).startswith('gemma'):
    name = 'gemma'  # Gemma base GGUFs carry no chat template
  return Tokenizer(
    backend,
    bos_id=bos,
    eos_id=eos,
    pad_id=pad,
    stop_ids=[i for i in map(get_id, ('tokenizer.ggml.eot_token_id', 'tokenizer.ggml.eom_token_id')) if i is not None],
    add_bos=add_bos,
    special_ids=special,
    chat_template=chat_template or name or _template_from_vocab(backend),
    default_system=default_system,
    source=f'gguf:{path}',
    jinja=jinja,
    use_jinja=not chat_template,
  )


def _from_sentencepiece_file(
  path: str,
  chat_template: str | None,
  config: dict | None = None,
  jinja: chat_template_lib.JinjaTemplate | None = None,
  stop_ids: Iterable[int] = (),
) -> Tokenizer:
  backend = _SentencePiece(pathlib.Path(path).read_bytes())
  sp = backend.sp
  opt = lambda i: i if i >= 0 else None  # noqa: E731
  special = [i for i in range(backend.vocab_size) if sp.is_control(i) or sp.is_unknown(i)]
  config = config or {}
  name, default_system = chat_template_lib.recognise(jinja and jinja.text)
  return Tokenizer(
    backend,
    bos_id=opt(sp.bos_id()),
    eos_id=opt(sp.eos_id()),
    pad_id=opt(sp.pad_id()),
    add_bos=bool(config.get('add_bos_token', sp.bos_id() >= 0)),
    special_ids=special,
    chat_template=chat_template or name or 'plain',
    default_system=default_system,
    source=f'sp:{path}',
    jinja=jinja,
    use_jinja=not chat_template,
    stop_ids=stop_ids,
  )


def _token_text(value) -> str | None:
  return value.get('content') if isinstance(value, dict) else value


def _hf_chat_template(d: pathlib.Path, config: dict) -> chat_template_lib.JinjaTemplate | None:
  """The folder's Jinja template(s), as transformers finds them: `chat_template.jinja` and `chat_templates/*.jinja`
  if any exist, else tokenizer_config.json's "chat_template". Variables: every `*_token` text in the config."""
  files = {'default': d / 'chat_template.jinja', **{f.stem: f for f in sorted(d.glob('chat_templates/*.jinja'))}}
  templates = {name: f.read_text(encoding='utf-8') for name, f in files.items() if f.is_file()}
  source = f'hf:{d}/{"chat_template.jinja" if "default" in templates else "chat_templates/"}'
  if not templates:
    source = f'hf:{d}/tokenizer_config.json'
    templates = chat_template_lib.templates_from_config(config.get('chat_template'), source)
  extra = config.get('extra_special_tokens')
  tokens = {k: _token_text(v) for k, v in config.items() if k.endswith('_token')}
  tokens.update({k: _token_text(v) for k, v in extra.items()} if isinstance(extra, dict) else {})
  variables = {k: v for k, v in tokens.items() if isinstance(v, str)}
  return chat_template_lib.JinjaTemplate(templates, source, variables) if templates else None


def _from_hf_dir(directory: str, chat_template: str | None) -> Tokenizer:
  d = pathlib.Path(directory)
  config = {}
  for name in ('special_tokens_map.json', 'tokenizer_config.json'):
    if (d / name).is_file():
      config.update(json.loads((d / name).read_text()))
  jinja = _hf_chat_template(d, config)
  stops = _generation_eos_ids(d)
  if not (d / 'tokenizer.json').is_file():
    if (d / 'tokenizer.model').is_file():
      return _from_sentencepiece_file(str(d / 'tokenizer.model'), chat_template, config, jinja, stops)
    raise FileNotFoundError(f'hf:{directory}: no tokenizer.json or tokenizer.model in the folder')
  import tokenizers

  raw = tokenizers.Tokenizer.from_file(str(d / 'tokenizer.json'))
  backend = _HFTokenizers(raw)
  special = [i for i, t in raw.get_added_tokens_decoder().items() if t.special]
  ids = {k: raw.token_to_id(_token_text(config.get(k)) or '') for k in ('bos_token', 'eos_token', 'pad_token')}
  # transformers 5 saves no `add_bos_token`; the post-processor in tokenizer.json says whether BOS is added.
  probe = raw.encode('', add_special_tokens=True).ids
  adds_bos = ids['bos_token'] is not None and probe[:1] == [ids['bos_token']]
  name, default_system = chat_template_lib.recognise(jinja and jinja.text)
  return Tokenizer(
    backend,
    bos_id=ids['bos_token'],
    eos_id=ids['eos_token'],
    pad_id=ids['pad_token'],
    add_bos=bool(config.get('add_bos_token', adds_bos)),
    special_ids=special,
    chat_template=chat_template or name or _template_from_vocab(backend),
    default_system=default_system,
    source=f'hf:{directory}',
    jinja=jinja,
    use_jinja=not chat_template,
    stop_ids=stops,
  )


def _generation_eos_ids(d: pathlib.Path) -> list[int]:
  """generation_config.json's `eos_token_id` (one id or a list): the ids transformers' `generate` stops on. Llama 3.x
  Instruct lists <|end_of_text|>, <|eom_id|> and <|eot_id|>; Qwen2.5/3 <|im_end|> and <|endoftext|>."""
  path = d / 'generation_config.json'
  if not path.is_file():
    return []
  try:
    eos = json.loads(path.read_text()).get('eos_token_id')
  except (ValueError, AttributeError) as e:
    raise ValueError(f'hf:{d}: generation_config.json: {e}; expected a JSON object') from None
  ids = eos if isinstance(eos, list) else [eos]
  return [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]


def load_tokenizer(spec: str, chat_template: str | None = None, thinking: bool = False) -> Tokenizer:
  """`sp:PATH`, `gguf:PATH`, `gguf:gemma3-270m`, `gguf:smollm2-135m` or `hf:DIR` -> Tokenizer.

  `chat_template` (`gemma`, `chatml`, `qwen3`, `llama3`, `plain`) forces that named template instead of the model's
  own Jinja one (or the one recognised from the model); `thinking`: reasoning mode in prompts (`enable_thinking`).
  """
  spec = pretrained.resolve(spec)
  kind, _, path = spec.partition(':')
  if kind == 'gguf':
    tok = _from_gguf(path, chat_template)
  elif kind == 'sp':
    tok = _from_sentencepiece_file(path, chat_template)
  else:
    tok = _from_hf_dir(path, chat_template)
  tok.thinking = thinking
  return tok


# ---------------------------------------------------------------------------------------------------------------


def train_sentencepiece(
  texts: Sequence[str],
  vocab_size: int,
  out_prefix: str | os.PathLike,
  *,
  user_defined_symbols: Sequence[str] = (),
  model_type: str = 'bpe',
  byte_fallback: bool = True,
) -> pathlib.Path:
  """Train a small sentencepiece model deterministically; returns `{out_prefix}.model`.

  Same inputs give the same `.model` bytes: one thread, no sentence sampling or shuffling. Ids follow Gemma's
  layout (pad 0, eos 1, bos 2, unk 3); identity normalisation, no dummy prefix, digits split one by one.
  """
  import io

  import sentencepiece as spm
  from sentencepiece import sentencepiece_model_pb2 as pb

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(list(texts)),
    model_writer=model,
    vocab_size=vocab_size,
    model_type=model_type,
    character_coverage=1.0,
    byte_fallback=byte_fallback,
    split_digits=True,
    normalization_rule_name='identity',
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    user_defined_symbols=list(user_defined_symbols),
    pad_id=0,
    eos_id=1,
    bos_id=2,
    unk_id=3,
    num_threads=1,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    max_sentence_length=1 << 16,
    minloglevel=2,
  )
  proto = pb.ModelProto.FromString(model.getvalue())
  proto.trainer_spec.ClearField('model_prefix')  # the output path must not change the bytes
  path = pathlib.Path(f'{out_prefix}.model')
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(proto.SerializeToString(deterministic=True))
  return path
