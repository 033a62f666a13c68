"""OpenAI RFT JSONL: each line `{"messages": [...], <any extra fields>}`, the last message from the user.

The whole line is the grader's `item`. A bad file fails before training with its path, line number and reason.
Batches come from a per-epoch permutation seeded by (seed, epoch), and the position in that stream is a small
dict saved with every checkpoint, so a resumed run sees exactly the prompts it would have seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import secrets
from collections.abc import Iterator, Sequence

import numpy as np
from etils import epath

from rftjax import errors
from rftjax import runfs

ROLES = ('system', 'developer', 'user', 'assistant', 'tool')


log = logging.getLogger(__name__)


class DataError(errors.UserError):
  """A data file is malformed; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Example:
  messages: tuple[dict, ...]
  item: dict
  source: str  # 'path:line', for error messages and written samples
  text: str | None = None  # a raw-text prompt instead of messages (rftjax.sample's {"text": ...} lines)


def _content_text(content, where: str) -> str:
  """OpenAI allows a string or a list of parts; text parts are joined."""
  if isinstance(content, str):
    return content
  if isinstance(content, list):
    texts = []
    for j, part in enumerate(content):
      kind = part.get('type') if isinstance(part, dict) else None
      if kind in ('image_url', 'input_image', 'input_audio', 'file', 'input_file'):  # OpenAI's vision and audio rows
        raise DataError(
          f'{where}: content part {j} is {kind!r}; rftjax trains text-only models, so a prompt holds text parts '
          '({"type": "text", "text": "..."}) only: leave such rows out, or put the content into words'
        )
      if (
        not isinstance(part, dict)
        or part.get('type') not in ('text', 'input_text')
        or not isinstance(part.get('text'), str)
      ):
        raise DataError(f'{where}: content part {j} must be {{"type": "text", "text": "..."}}, got {part!r:.80}')
      texts.append(part['text'])
    return ''.join(texts)
  raise DataError(f'{where}: "content" must be a string or a list of text parts, got {type(content).__name__}')


def loads(line: str, where: str):
  """One JSON value; invalid JSON, or an object with a key twice, is a DataError naming `where` (file:line)."""
  return errors.json_loads(line, DataError, where, in_file=False)


def lines(path: str | pathlib.Path) -> Iterator[tuple[str, str]]:
  """('file:line', text) for each non-blank line of a local or gs:// text file; bytes that are not UTF-8 are a
  DataError naming the file, line and byte offset."""
  path = epath.Path(path)
  offset = 0
  try:
    f = path.open('rb')
  except OSError as e:  # permissions, a folder: the file is named, not a traceback
    raise DataError(f'{path}: cannot read it ({e.strerror or e})') from None
  with f:
    for lineno, raw in enumerate(f, start=1):
      try:  # a byte-order mark (Windows editors write one) is no part of the first line's JSON
        line = raw.decode('utf-8-sig' if lineno == 1 else 'utf-8')
      except UnicodeDecodeError as e:
        raise DataError(
          f'{path}:{lineno}: not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {offset + e.start} of the '
          f'file (byte {e.start + 1} of the line); expected UTF-8 (re-save the file as UTF-8)'
        ) from None
      offset += len(raw)
      if line.strip():
        yield f'{path}:{lineno}', line


def _converting(obj: dict) -> str:
  """How to turn the row shapes TRL and Hugging Face datasets use into rftjax's (docs/cli.md's data format)."""
  if 'messages' in obj:
    return ''
  if isinstance(obj.get('prompt'), list):  # TRL's conversational prompt column
    return '; this row has TRL\'s "prompt": a list of messages is what "messages" holds: rename the field'
  if isinstance(obj.get('prompt'), str) or isinstance(obj.get('text'), str):  # TRL's standard format, plain text
    key = 'prompt' if isinstance(obj.get('prompt'), str) else 'text'
    return (
      f'; this row has a text "{key}": write it as "messages": [{{"role": "user", "content": <the text>}}], and set '
      'config.chat_template="plain" to train on the text as it is, without a chat template'
    )
  return ''


def parse_line(line: str, where: str) -> Example:
  obj = loads(line, where)
  if not isinstance(obj, dict):
    raise DataError(f'{where}: expected a JSON object, got {type(obj).__name__}')
  messages = obj.get('messages')
  if not isinstance(messages, list) or not messages:
    raise DataError(
      f'{where}: field "messages" must be a non-empty list of {{"role", "content"}} objects'
      + ('' if 'messages' in obj else ' (missing)')
      + _converting(obj)
    )
  clean = []
  for i, m in enumerate(messages):
    at = f'{where}: messages[{i}]'
    if not isinstance(m, dict):
      raise DataError(f'{at}: expected an object with "role" and "content", got {type(m).__name__}')
    if m.get('role') not in ROLES:
      raise DataError(f'{at}: "role" must be one of {", ".join(ROLES)}, got {m.get("role")!r}')
    calls = m.get('tool_calls') if m['role'] == 'assistant' else None
    if m.get('tool_calls') and m['role'] != 'assistant':  # no template renders them there: they would vanish
      raise DataError(f'{at}: "tool_calls" on a {m["role"]} message; expected them on assistant messages only')
    if 'content' not in m and not calls:
      raise DataError(f'{at}: missing "content"')
    if m.get('content') is None and not calls:  # OpenAI allows null only beside an assistant's tool calls
      raise DataError(f'{at}: "content" is null; expected a string or a list of text parts (null only for an '
                      'assistant message with "tool_calls")')  # fmt: skip
    # OpenAI's developer role is the system prompt of chat templates (none has a developer role)
    msg = {
      'role': 'system' if m['role'] == 'developer' else m['role'],
      'content': _content_text(m.get('content') or '', at),
    }
    if calls is not None:  # an earlier tool call in the conversation: the chat template renders it
      if not isinstance(calls, list) or not all(
        isinstance(c, dict) and isinstance(c.get('function'), dict) for c in calls
      ):
        raise DataError(
          f'{at}: "tool_calls" must be a list of {{"type": "function", "function": {{"name", "arguments"}}}}'
        )
      msg['tool_calls'] = calls
    for key in ('tool_call_id', 'name') if m['role'] == 'tool' else ():
      if key in m:
        msg[key] = m[key]
    clean.append(msg)
  if clean[-1]['role'] != 'user':
    raise DataError(
      f'{where}: the last message must come from "user" (it is the prompt to complete), got "{clean[-1]["role"]}"'
    )
  return Example(messages=tuple(clean), item=obj, source=where)


def load_jsonl(path: str | pathlib.Path, key: str = '') -> list[Example]:
  """Examples from a local JSONL file or a gs:// one. `key`: the config key or flag that named it, for the
  message when there is no such file."""
  given, path = path, epath.Path(path)
  if not str(given).strip():  # epath would read '' as the current folder
    raise DataError(f'{key or "the data file"}: expected the path of a JSONL file, found {given!r}')
  if not path.is_file():
    what = 'a folder, not a file' if path.is_dir() else f'no such file{runfs.missing_where(given)}'
    raise DataError(f'{path}: {what}' + (f' ({key})' if key else '') + ('; expected a JSONL file' * path.is_dir())
                    + runfs.tilde_hint(path))  # fmt: skip
  examples = [parse_line(line, where) for where, line in lines(path)]
  if not examples:
    raise DataError(f'{path}: no examples (the file is empty)' + (f' ({key})' if key else ''))
  return examples


def reference(example: Example) -> dict:
  """The example's row without its prompt: what graders compare against (`answer`, tests, ...), for records."""
  return {k: v for k, v in example.item.items() if k != 'messages'}


def describe(train: Sequence[Example], valid: Sequence[Example]) -> str:
  """'2000 training examples (1269 distinct prompts) and 200 validation examples (80 also in training)': a
  validation prompt that is also a training prompt measures what the model trained on."""
  key = lambda ex: json.dumps([ex.messages, ex.text, ex.item.get('tools')], sort_keys=True)  # noqa: E731
  seen = {key(ex) for ex in train}
  again = sum(key(ex) in seen for ex in valid)
  distinct = f' ({len(seen)} distinct prompts)' if len(seen) < len(train) else ''
  return (
    f'{len(train)} training example{"s" * (len(train) != 1)}{distinct} and {len(valid)} validation '
    f'example{"s" * (len(valid) != 1)}' + (f' ({again} also in training)' if again else '')
  )


def _check_calls_rendered(ex: Example, messages, text: str) -> None:
  """An earlier assistant turn's tool calls must reach the prompt: a template that renders none (SmolLM2's) would
  show the model a tool result that answers nothing, without a word."""
  for i, m in enumerate(messages):
    for call in m.get('tool_calls') or ():
      name = call['function'].get('name')
      if isinstance(name, str) and name and name not in text:
        raise DataError(
          f'{ex.source}: messages[{i}].tool_calls: the chat template renders no tool calls (the prompt has no '
          f'{name!r}); expected a template that does (docs/tools.md), or the row without them'
        )


def encode_prompts(
  examples: Sequence[Example], tok, max_prompt_len: int | None = None, response_format=None, skip_long: bool = False
) -> list[list[int] | None]:
  """Each example's prompt as token ids: the chat template's rendering of its messages and tools (with the schema
  instruction of a `response_format.ResponseFormat`), or its raw `text`. A prompt the template refuses is a
  DataError naming its line; so are prompts longer than `max_prompt_len` (all of them counted), unless `skip_long`:
  then each is None, said in a warning (`fitting` drops them)."""
  from rftjax import response_format as response_format_lib

  out, too_long = [], []  # (source, tokens, schema note) of each prompt over max_prompt_len: all said at once
  unk, unspelled = getattr(tok, 'unk_id', None), []  # sources of prompts with text the vocabulary cannot spell
  for ex in examples:
    try:
      messages = response_format_lib.instruct(list(ex.messages), response_format)
      if ex.text is not None:
        ids = tok.encode_text(ex.text)
      else:  # a row's `tools` (OpenAI function definitions) are rendered by the model's chat template
        text = tok.chat_text(messages, tools=ex.item.get('tools') or None)
        ids = tok.encode(text, add_bos=tok.add_bos)
    except ValueError as e:  # e.g. the gemma template's role alternation
      raise DataError(f'{ex.source}: {e}') from None
    if not ids:  # an all-pad row: every key masked, its completion would depend on the pad id
      raise DataError(f'{ex.source}: "text" is empty and this tokenizer adds no BOS: no tokens to complete from')
    if ex.text is None:
      _check_calls_rendered(ex, messages, text)
    if unk is not None and unk in ids:
      unspelled.append(ex)
    if max_prompt_len is not None and len(ids) > max_prompt_len:
      schema = ''
      if response_format is not None and ex.text is None:  # what the schema instruction adds, measured
        bare = tok.encode_prompt(list(ex.messages), tools=ex.item.get('tools') or None)
        schema = f' ({len(ids) - len(bare)} of them the response_format schema instruction)'
      too_long.append((ex.source, len(ids), schema))
    out.append(ids)
  if unspelled:
    _say_unspelled(unspelled, tok)
  if too_long and skip_long:
    shown = ', '.join(source for source, _, _ in too_long[:5]) + (', ...' if len(too_long) > 5 else '')
    log.warning(
      'skipped %d prompt%s longer than config.data.max_prompt_len=%d (config.data.skip_long_prompts): %s (the '
      'longest %d tokens)', len(too_long), 's' * (len(too_long) > 1), max_prompt_len, shown,
      max(t for _, t, _ in too_long),
    )  # fmt: skip
    skipped = {source for source, _, _ in too_long}
    return [None if ex.source in skipped else ids for ex, ids in zip(examples, out)]
  if too_long:
    (source, n, schema), more = too_long[0], ''
    if len(too_long) > 1:
      lines = ', '.join(s.rpartition(':')[2] for s, _, _ in too_long[:10]) + (', ...' if len(too_long) > 10 else '')
      more = f' ({len(too_long)} prompts are: lines {lines}; the longest {max(t for _, t, _ in too_long)} tokens)'
    raise DataError(
      f'{source}: the prompt is {n} tokens long{schema}, more than config.data.max_prompt_len={max_prompt_len}'
      f'{more}; raise it, shorten the prompt{"s" if more else ""} or skip {"them" if more else "it"} '
      '(config.data.skip_long_prompts=True)'
    )
  return out


def _say_unspelled(examples: Sequence[Example], tok) -> None:
  """A tokenizer without byte fallback encodes characters its pieces lack to its unknown token, and decoding drops
  it: 'Größte Ziffer' reached the model as 'rte ier' without a word."""
  first = examples[0]
  text = first.text if first.text is not None else ' '.join(str(m.get('content', '')) for m in first.messages)
  odd = ''.join(c for c in tok.unspellable(text) if not c.isspace())
  shown = ', '.join(ex.source for ex in examples[:5]) + (', ...' if len(examples) > 5 else '')
  log.warning(
    '%d prompt%s characters the tokenizer cannot spell (%s: %r), which encode to its unknown token %r: the model '
    'sees none of them. A tokenizer with byte fallback (the real models\') spells any text; prompts: %s',
    len(examples), 's hold' if len(examples) > 1 else ' holds', first.source, odd[:40], tok.id_to_token(tok.unk_id),
    shown,
  )  # fmt: skip


def fitting(examples: Sequence[Example], prompts: list, key: str) -> tuple[list[Example], list[list[int]]]:
  """The examples and prompts `encode_prompts(skip_long=True)` kept; a DataError naming `key` when it kept none."""
  kept = [(ex, p) for ex, p in zip(examples, prompts) if p is not None]
  if not kept:
    raise DataError(
      f'{key}: every prompt is longer than config.data.max_prompt_len, so config.data.skip_long_prompts left none; '
      'expected a larger config.data.max_prompt_len'
    )
  return [ex for ex, _ in kept], [p for _, p in kept]


def write_jsonl(path: str | pathlib.Path, rows: Sequence[dict]) -> None:
  """Atomic write (temp file + rename), so a crash never leaves half a file, and a failed write no temp file. A
  gs:// path is one object write, atomic by itself."""
  write_text(path, ''.join(json.dumps(row, ensure_ascii=False) + '\n' for row in rows))


def write_text(path: str | pathlib.Path, text: str) -> None:
  """`text` as UTF-8 to a local path (write_atomic) or a gs:// one (one object write, atomic by itself)."""
  if runfs.is_remote(path):  # no mkdir: buckets have no folders (and gcsfs's makedirs creates missing buckets)
    epath.Path(path).write_text(text, encoding='utf-8')
    return
  write_atomic(pathlib.Path(path), text)


def write_atomic(path: pathlib.Path, payload: str | bytes) -> None:
  """A local file written whole or not at all (temp file + rename; a failed write leaves no temp file); text as
  UTF-8. Missing folders are made. A symbolic link is followed: its target is written (the rename replaced the
  link and left the target as it was)."""
  path = pathlib.Path(os.path.realpath(path)) if os.path.islink(path) else path
  path.parent.mkdir(parents=True, exist_ok=True)
  # a name of this writer's own: two commands writing one file (two evaluations of a step) took each other's
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp')
  try:
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), 'wb') as f:  # the umask's mode
      f.write(payload.encode('utf-8') if isinstance(payload, str) else payload)
    tmp.replace(path)
  except BaseException as e:  # Ctrl-C too
    tmp.unlink(missing_ok=True)
    if isinstance(e, OSError):
      raise errors.named(e, path) from None
    raise


class DataIterator:
  """Endless batches of example indices over shuffled epochs; `state()` / `restore()` make it resumable.

  Every process computes the same global batch; a process takes its contiguous slice, so the global batch does not
  depend on how many hosts serve it.
  """

  def __init__(
    self,
    num_examples: int,
    batch_size: int,
    seed: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    prompts: str | None = None,
  ):
    """`prompts`: the `fingerprint` of the examples' prompt ids, saved with the state; `restore` refuses a state
    saved over other prompts, where its position would point at other examples."""
    self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
    self.process_index, self.process_count = process_index, process_count
    self.epoch, self.position = 0, 0
    self.prompts = prompts

  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

  def next_global(self) -> np.ndarray:
    out = []
    while len(out) < self.batch_size:
      order = self._order(self.epoch)
      take = min(self.batch_size - len(out), self.num_examples - self.position)
      out.extend(order[self.position : self.position + take])
      self.position += take
      if self.position == self.num_examples:
        self.epoch, self.position = self.epoch + 1, 0
    return np.asarray(out)

  def next(self) -> np.ndarray:
    """This process's indices of the next global batch."""
    per = self.batch_size // self.process_count
    return self.next_global()[self.process_index * per : (self.process_index + 1) * per]

  def state(self) -> dict:
    extra = {} if self.prompts is None else {'num_examples': self.num_examples, 'prompts': self.prompts}
    return {'epoch': self.epoch, 'position': self.position, **extra}

  def restore(self, state: dict) -> None:
    """Back to a saved state; a ValueError saying what differs when it was saved over other prompts (a state of
    before the fingerprints is taken as it is)."""
    saved = state.get('prompts')
    if saved is not None and self.prompts is not None and saved != self.prompts:
      raise ValueError(
        f'its data position is into {state.get("num_examples")} training prompts (fingerprint {saved[:12]}), this '
        f'run has {self.num_examples} (fingerprint {self.prompts[:12]}): other prompts, or in another order'
      )
    self.epoch, self.position = int(state['epoch']), int(state['position'])


def fingerprint(prompts) -> str:
  """sha256 of a split's prompt ids, in order (DataIterator's `prompts`)."""
  digest = hashlib.sha256()
  for ids in prompts:
    digest.update(np.asarray(ids, np.int64).tobytes() + b';')
  return digest.hexdigest()
