"""A GGUF's tokenizer metadata (`tokenizer.ggml.*`) rebuilt as a tokenizer `rftjax.tokenizer` can run.

  `tokenizer.ggml.model == 'llama'` (Gemma): a sentencepiece BPE `ModelProto` (`sentencepiece_proto`).
  `tokenizer.ggml.model == 'gpt2'` (SmolLM2): a byte-level BPE in `tokenizers` (`byte_level_bpe`).

Both equal what transformers builds from the same file (docs/tokenizers.md has the recipes and the parity checks).
"""

from __future__ import annotations

import functools

# Sentencepiece piece types; GGUF's `tokenizer.ggml.token_type` uses the same codes.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def sentencepiece_proto(md: dict) -> bytes:
  """A sentencepiece BPE `ModelProto` equal to the tokenizer a llama-style (Gemma) GGUF describes.

  Recipe (docs/tokenizers.md): BPE with byte fallback, identity normalizer, no dummy prefix, no
  whitespace trimming; the GGUF spells its user-defined whitespace-run pieces with real spaces, which
  sentencepiece never sees after escaping, so they are respelled with `▁`.
  """
  from sentencepiece import sentencepiece_model_pb2 as pb

  tokens, scores, types = md['tokenizer.ggml.tokens'], md['tokenizer.ggml.scores'], md['tokenizer.ggml.token_type']
  proto = pb.ModelProto()
  for token, score, kind in zip(tokens, scores.tolist(), types.tolist()):
    if kind == USER_DEFINED and ' ' in token and not token.strip(' '):
      token = token.replace(' ', '\u2581')
    proto.pieces.add(piece=token, score=score, type=kind)
  ts = proto.trainer_spec
  ts.model_type = pb.TrainerSpec.BPE
  ts.vocab_size = len(tokens)
  ts.byte_fallback = True
  ts.unk_id = int(md.get('tokenizer.ggml.unknown_token_id', 0))
  ts.bos_id = int(md.get('tokenizer.ggml.bos_token_id', -1))
  ts.eos_id = int(md.get('tokenizer.ggml.eos_token_id', -1))
  ts.pad_id = int(md.get('tokenizer.ggml.padding_token_id', -1))
  ns = proto.normalizer_spec
  ns.name = 'identity'
  # llama.cpp's default for sentencepiece vocabularies is to add the prefix space; Gemma's file turns it off.
  ns.add_dummy_prefix = bool(md.get('tokenizer.ggml.add_space_prefix', True))
  ns.remove_extra_whitespaces = False
  ns.escape_whitespaces = True
  return proto.SerializeToString()


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table (byte-level BPE spells every token with it)."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def byte_level_bpe(md: dict):
  """A byte-level BPE equal to what transformers builds from a `gpt2`-type GGUF.

  transformers (integrations/gguf/gguf_tokenizer_mapping.py) hands the vocab and merges to `GPT2Tokenizer`,
  whose pre-tokenizer is plain `ByteLevel` (GPT-2's split regex, no prefix space) unless the file's
  `tokenizer.ggml.pre` names one of a few known split regexes. SmolLM2's `smollm` is not among them, so digits
  are *not* split one by one here (llama.cpp and the hub's tokenizer.json do split them: see docs/tokenizers.md).
  """
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

  alphabet = byte_alphabet()
  letters = set(alphabet.values())
  tokens, types = md['tokenizer.ggml.tokens'], md.get('tokenizer.ggml.token_type')
  types = [NORMAL] * len(tokens) if types is None else types.tolist()
  # A token spelled outside the byte alphabet is raw text: respell it byte by byte.
  vocab = {t if set(t) <= letters else ''.join(alphabet[b] for b in t.encode('utf-8')): i for i, t in enumerate(tokens)}
  merges = [tuple(m.split(' ')) for m in md.get('tokenizer.ggml.merges', [])]
  tok = Tokenizer(
    models.BPE(
      vocab=vocab, merges=merges, continuing_subword_prefix='', end_of_word_suffix='', fuse_unk=False, dropout=None
    )
  )
  pre = md.get('tokenizer.ggml.pre')
  if pre in _GGUF_SPLIT_REGEX:
    tok.pre_tokenizer = pre_tokenizers.Sequence(
      [
        pre_tokenizers.Split(Regex(_GGUF_SPLIT_REGEX[pre]), 'isolated'),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
    )
  else:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  # Control tokens are matched whole in text and are "special"; a control token spelled outside the byte
  # alphabet is a llama.cpp mislabel and is left alone (adding it would grow the vocabulary).
  tok.add_special_tokens(
    [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL and set(t) <= letters]
  )
  tok.add_tokens(
    [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED and t in vocab]
  )
  return tok


# Split regexes for the `tokenizer.ggml.pre` values used by Llama 3-style vocabularies (same as transformers).
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r'| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+'
)
_GGUF_SPLIT_REGEX = {'llama3': _LLAMA3_SPLIT, 'llama-v3': _LLAMA3_SPLIT, 'llama-bpe': _LLAMA3_SPLIT}
