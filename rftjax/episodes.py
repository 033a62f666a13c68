"""Episodes: the model writes, calls tools over HTTP, reads their outputs and writes on; one rollout = the transcript.

  agent = episodes.Agent(sampler, tok, client, max_steps=4, tool_tokens=64)
  out = agent.run(params, prompt_tokens, prompt_mask, rng, mesh)   # this host's rows

A turn ends at a stop token or sequence (the template's end of turn, a tool-call end marker such as `</tool_call>`)
or after `max_new_tokens`. The host decodes each row's turn, parses its tool calls (tools.parse_calls), sends every
row's calls at once (tools.ToolClient) and renders the outputs as the next tool turn with the model's own chat
template. The next turn prefills only those tokens into the same KV cache (`Sampler.resume`), never the whole
conversation again. Rows that finished wait silently; an episode ends at a turn without a tool call, when a turn
runs out of tokens, or after `max_steps` model turns (a call in the last turn is not run; `episode/capped_frac`).

What the trainer sees (`Episodes`): the transcript after the prompt as one completion, with a loss mask that covers
the model's own tokens only (tool outputs and template tokens inserted by the host are context, not actions), the
sampler's logprobs on those tokens, and the final turn's text for the graders. A rollout whose tool calls failed
for good (5xx, timeouts, connection errors after retries, refused credentials) is `discard`ed: the trainer zeroes
its loss mask; when more of a batch's calls than `max_error_share` failed so, `run` raises tools.ToolsFailed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import types

import jax
import numpy as np

from rftjax import multihost
from rftjax import sampler as sampler_lib
from rftjax import tools as tools_lib

# placeholders for the tool-turn rendering; any text a template passes through unchanged will do
_MARK = '\u27e6rftjax-{}\u27e7'


@dataclasses.dataclass
class Episodes:
  """This host's rows after `Agent.run`. Completions are the transcripts after the prompt, [R, W]."""

  tokens: np.ndarray  # [R, W] int32
  mask: np.ndarray  # [R, W] float32: 1 on model-written tokens only
  logprobs: np.ndarray  # [R, W] sampler logprobs of the model's tokens (0 elsewhere)
  lengths: np.ndarray  # [R] tokens in the transcript, model and tool turns alike
  truncated: np.ndarray  # [R] the last turn hit max_new_tokens without a stop
  texts: list  # [R] the final turn's text (what graders grade)
  transcripts: list  # [R] dict: trace_id, messages (assistant / tool turns), calls, turns, capped
  discard: np.ndarray  # [R] bool: a tool failed for good


@dataclasses.dataclass
class _Row:
  trace_id: str
  tokens: list = dataclasses.field(default_factory=list)
  model: list = dataclasses.field(default_factory=list)  # 1.0 per model token, 0.0 per inserted token
  logprobs: list = dataclasses.field(default_factory=list)
  messages: list = dataclasses.field(default_factory=list)
  calls: list = dataclasses.field(default_factory=list)  # tools.CallResult
  tool_tokens: list = dataclasses.field(default_factory=list)  # tokens per tool output
  truncated: bool = False
  capped: bool = False
  clipped: int = 0  # tool outputs cut to fit the tool turn

  def add(self, tokens, logprobs=None):
    self.tokens += [int(t) for t in tokens]
    self.model += [0.0 if logprobs is None else 1.0] * len(tokens)
    self.logprobs += [0.0] * len(tokens) if logprobs is None else [float(x) for x in logprobs]


def completion_width(max_new_tokens: int, max_steps: int, tool_tokens: int) -> int:
  """Tokens after the prompt an episode may hold: every model turn and every tool turn between them."""
  return max_steps * max_new_tokens + (max_steps - 1) * tool_tokens


def context_len(max_prompt_len: int, max_new_tokens: int, max_steps: int, tool_tokens: int) -> int:
  """Cache slots an episode may need: the prompt and `completion_width`."""
  return max_prompt_len + completion_width(max_new_tokens, max_steps, tool_tokens)


@functools.lru_cache(maxsize=64)
def _tool_turn_pieces(tok, calls: int) -> tuple[str, ...]:
  """The template text around `calls` tool outputs that follows an assistant turn: `calls + 1` pieces, the first
  closing the assistant's turn, the last opening the next one (its generation prompt). Found by rendering a
  conversation with placeholders, so any template that writes an assistant's content as given works."""
  marks = [_MARK.format(i) for i in range(calls + 1)]
  conv = [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': marks[0]}]
  conv += [{'role': 'tool', 'content': marks[i + 1], 'tool_call_id': f'call_{i}', 'name': 'tool'} for i in range(calls)]
  text = tok.chat_text(conv, add_generation_prompt=True)
  if text.count(marks[0]) != 1 or any(text.count(m) != 1 for m in marks[1:]):
    raise ValueError(f'the chat template does not write tool outputs as given: {text[-300:]!r}')
  rest = text.split(marks[0], 1)[1]
  pieces = []
  for m in marks[1:]:
    head, rest = rest.split(m, 1)
    pieces.append(head)
  return (*pieces, rest)


@functools.lru_cache(maxsize=64)
def _escapes_tool_outputs(tok) -> bool:
  """Whether the template writes a tool output as a JSON string (Llama 3.x's `content | tojson`, between the quotes
  that `_tool_turn_pieces` leaves in the frame): then an output is inserted escaped, as the template would."""
  mark = _MARK.format(1)
  conv = [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': _MARK.format(0)}]
  conv.append({'role': 'tool', 'content': mark + '"', 'tool_call_id': 'call_0', 'name': 'tool'})
  return mark + '\\"' in tok.chat_text(conv, add_generation_prompt=True)


def frame_tokens(tok, calls: int) -> int:
  """Tokens of the template text around `calls` tool outputs (the most: the model's stop token not yet dropped).
  Raises ValueError when the chat template cannot frame tool outputs at all."""
  return sum(len(tok.encode(piece)) for piece in _tool_turn_pieces(tok, calls))


@functools.lru_cache(maxsize=64)
def max_calls(tok, budget: int, limit: int = 32) -> int:
  """The most tool outputs (of at least one token each) whose tool turn fits `budget` tokens (at most `limit`); 0
  when not even one does."""
  fits = 0
  for n in range(1, limit + 1):
    if frame_tokens(tok, n) + n > budget:
      break
    fits = n
  return fits


def capped_calls(calls: list, most: int) -> list:
  """A turn's parsed calls, at most `most` of them: past it the last slot says which calls were not run (one
  slot: only the first runs), so a model that calls too many tools in one turn learns it instead of the run
  stopping."""
  if len(calls) <= most:
    return calls
  if most <= 1:
    return calls[:1]
  note = (
    f'Error: {len(calls)} tool calls in one turn; at most {most} fit, so calls {most} to {len(calls)} were not run. '
    'Make fewer calls per turn'
  )
  return calls[: most - 1] + [tools_lib.ParsedCall(calls[most - 1].name, '', note)]


def tool_turn(
  tok, outputs: list[str], after_token: int | None, budget: int, stop_ids=()
) -> tuple[list[int], list[int], int]:
  """The token ids the host inserts after an assistant turn that made `len(outputs)` calls: template pieces (special
  tokens parsed) around each output (encoded as plain text: a tool cannot inject control tokens, nor the template's
  markup tokens or a stop token, `_plain`). `after_token`: the
  turn's stop token, dropped from the closing piece when the model already wrote it. Outputs are cut (from the end)
  until the whole turn fits `budget` tokens, the longest first, down to one length. Returns (ids, each output's
  tokens as inserted, each output's token count before the cut)."""
  pieces = list(_tool_turn_pieces(tok, len(outputs)))
  if after_token is not None:
    written = tok.decode([after_token], skip_special=False)
    if written and pieces[0].startswith(written):
      pieces[0] = pieces[0][len(written) :]
  frame = [tok.encode(p) for p in pieces]
  markers = {tok.decode([i], skip_special=False) for i in [*stop_ids, *(i for piece in frame for i in piece)]}
  markers = {m for m in markers if len(m) > 2 and m.startswith('<') and m.endswith('>')}  # `</tool_response>`
  escaped = _escapes_tool_outputs(tok)
  bodies = [_plain(tok, json.dumps(o, ensure_ascii=False)[1:-1] if escaped else o, markers) for o in outputs]
  room = budget - sum(map(len, frame))
  if room < len(outputs):
    raise ValueError(f'sampling.tool_tokens={budget} cannot hold the chat template around {len(outputs)} tool outputs')
  sizes = [len(b) for b in bodies]
  if sum(sizes) > room:  # the longest outputs cut down to one length, the shorter ones whole: room shared fairly
    cap = room // len(sizes)
    while sum(min(n, cap + 1) for n in sizes) <= room:
      cap += 1
    kept = [min(n, cap) for n in sizes]
    spare = room - sum(kept)
    for i in (i for i, n in enumerate(sizes) if n > cap):  # what is left of the room, a token each in order
      kept[i], spare = kept[i] + (spare > 0), spare - (spare > 0)
    bodies = [b[:k] for b, k in zip(bodies, kept)]
  ids = frame[0]
  for body, piece in zip(bodies, frame[1:]):
    ids = ids + body + piece
  return ids, bodies, sizes


def _plain(tok, text: str, markers: set[str]) -> list[int]:
  """`text` as plain tokens, none of them one of the template's `markers`: a sentencepiece model matches its
  user-defined pieces (the tiny demo's `</tool_response>`) even in text encoded without special tokens, so the
  text is cut inside each marker it spells."""
  found = [m for m in markers if m in text]
  if not found:
    return tok.encode(text, parse_special=False)
  cuts = sorted({m.start() + 1 for m in re.finditer('|'.join(map(re.escape, found)), text)})
  return [i for a, b in zip([0, *cuts], [*cuts, len(text)]) for i in tok.encode(text[a:b], parse_special=False)]


@dataclasses.dataclass
class Agent:
  """Samples episodes. `sampler.context_len` must hold `context_len(...)` slots (runspec builds it so)."""

  sampler: sampler_lib.Sampler
  tok: object
  client: tools_lib.ToolClient | None
  max_steps: int
  tool_tokens: int
  max_error_share: float = 1.0  # more calls than this failing for good raise tools.ToolsFailed (every host alike)

  @property
  def tools(self) -> tuple:
    """The configured tools (ToolSpec), for metrics."""
    return tuple(self.client.tools.values()) if self.client is not None else ()

  def run(self, params, prompt_tokens: np.ndarray, prompt_mask: np.ndarray, rng, mesh, offered=None) -> Episodes:
    """`offered`: per row, the names of the tools its data row offers (None: every configured tool)."""
    s, tok = self.sampler, self.tok
    need = context_len(s.max_prompt_len, s.max_new_tokens, self.max_steps, self.tool_tokens)
    if s.slots < need:  # checked here, once: the cache is a device array of a fixed size
      raise ValueError(f'episodes of {self.max_steps} turns need {need} cache slots; the sampler has {s.slots}')
    n_rows = prompt_tokens.shape[0]
    # trace ids from the step's key: unique within a run, the same when a run (or a resumed step) is repeated
    seed = hashlib.sha256(np.asarray(jax.random.key_data(rng)).tobytes()).hexdigest()[:16]
    rows = [_Row(trace_id=f'trace_{seed}_{jax.process_index()}_{i}') for i in range(n_rows)]
    live = np.ones(n_rows, bool)
    answered: dict = {}  # row -> (its calls' results, the turn's stop token): the next tool turn
    put = lambda x: multihost.to_global(mesh, np.ascontiguousarray(x))
    out, ctx = s.start(params, put(prompt_tokens), put(prompt_mask), jax.random.fold_in(rng, 0))
    for turn in range(self.max_steps):
      if turn:
        block, block_mask = self._tool_block(rows, live, answered)
        out, ctx = s.resume(params, ctx, put(block), put(block_mask), put(live), jax.random.fold_in(rng, turn))
      tokens, logprobs, lengths, truncated = (
        multihost.local_rows(a) for a in (out.tokens, out.logprobs, out.lengths, out.truncated)
      )
      pending = {}
      for i in np.flatnonzero(live):
        n = int(lengths[i])
        row = rows[i]
        row.add(tokens[i, :n], logprobs[i, :n])
        row.truncated = bool(truncated[i])
        text = tok.decode_completion(tokens[i, :n], row.truncated)
        row.messages.append({'role': 'assistant', 'content': text})
        calls = tools_lib.parse_calls(text) if self.client is not None and not row.truncated else []
        calls = capped_calls(calls, max_calls(tok, self.tool_tokens))
        if calls and turn + 1 < self.max_steps:
          last = int(tokens[i, n - 1]) if n else None
          pending[i] = (calls, last if last in s.stop_ids else None)
        else:
          row.capped = bool(calls)
          live[i] = False
      if not multihost.any_host(bool(live.any())) or turn + 1 == self.max_steps:
        break
      flat = [
        (c, rows[i].trace_id, None if offered is None else offered[i])
        for i, (calls, _) in pending.items()
        for c in calls
      ]
      results = iter(self.client.call_many(flat) if flat else [])
      answered = {i: ([next(results) for _ in calls], stop) for i, (calls, stop) in pending.items()}
    line = tools_lib.failure_line([r.calls for r in rows], self.max_error_share)
    if multihost.any_host(line is not None):
      raise tools_lib.ToolsFailed(line or 'tool calls failed on another host (its log has the details)')
    return self._episodes(rows)

  def _tool_block(self, rows: list[_Row], live: np.ndarray, answered: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each live row's tool turn, left-padded to [R, tool_tokens], appended to its transcript."""
    width = self.tool_tokens
    block = np.full((len(rows), width), self.sampler.pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, (results, stop) in answered.items():
      row = rows[i]
      ids, bodies, full = tool_turn(self.tok, [r.output for r in results], stop, width, self.sampler.stop_ids)
      block[i, width - len(ids) :], mask[i, width - len(ids) :] = ids, True
      row.add(ids)
      row.calls += results
      row.tool_tokens += [len(b) for b in bodies]
      row.clipped += sum(len(b) < n for b, n in zip(bodies, full))
      row.messages += [
        {'role': 'tool', 'name': r.name, 'content': r.output, 'kind': r.kind,
         **({'shown': self.tok.decode(b, skip_special=False)} if len(b) < n else {})}  # what the model read of it
        for r, b, n in zip(results, bodies, full)
      ]  # fmt: skip
    assert not (live & ~np.isin(np.arange(len(rows)), list(answered))).any()
    return block, mask

  def _episodes(self, rows: list[_Row]) -> Episodes:
    s = self.sampler
    width = completion_width(s.max_new_tokens, self.max_steps, self.tool_tokens)
    tokens = np.full((len(rows), width), s.pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.float32)
    logprobs = np.zeros((len(rows), width), np.float32)
    for i, row in enumerate(rows):
      n = len(row.tokens)
      tokens[i, :n], mask[i, :n], logprobs[i, :n] = row.tokens, row.model, row.logprobs
    transcripts = [
      {
        'trace_id': row.trace_id,
        'messages': row.messages,
        'turns': sum(m['role'] == 'assistant' for m in row.messages),
        'calls': row.calls,
        'tool_tokens': row.tool_tokens,
        'capped': row.capped,
        'clipped': row.clipped,
      }
      for row in rows
    ]
    return Episodes(
      tokens=tokens,
      mask=mask,
      logprobs=logprobs,
      lengths=np.asarray([len(r.tokens) for r in rows], np.int32),
      truncated=np.asarray([r.truncated for r in rows]),
      texts=[r.messages[-1]['content'] if r.messages else '' for r in rows],
      transcripts=transcripts,
      discard=np.asarray([any(c.discard for c in r.calls) for r in rows]),
    )


def record(transcript: dict | None) -> dict | None:
  """A transcript as JSON (samples files, gathering across hosts): messages, calls without their internals."""
  if transcript is None:
    return None
  calls = [
    {'name': c.name, 'call_id': c.call_id, 'kind': c.kind, 'latency_s': c.latency_s, 'discard': c.discard}
    for c in transcript['calls']
  ]
  return {**transcript, 'calls': calls}


def record_calls(records: list[dict | None]) -> list[list]:
  """Each `record`'s calls as objects with a CallResult's fields (what tools.summary and failure_line read)."""
  return [[types.SimpleNamespace(**c) for c in r['calls']] for r in records if r is not None]


def metrics(records: list[dict | None], prefix: str = '', tools: tuple = ()) -> dict[str, float]:
  """Episode metrics over `record`s (names fixed, docs/tools.md): turns, tool calls, their latency and errors,
  discarded rollouts, tokens per tool output. Empty without episodes. `prefix`: 'valid/' for validation. `tools`:
  the configured ToolSpecs (each gets its calls_per_rollout, 0 when unused)."""
  if not records or records[0] is None:
    return {}
  m = tools_lib.summary(record_calls(records), tools)
  sizes = [n for r in records for n in r['tool_tokens']]
  m.update(
    {
      'episode/turns_mean': float(np.mean([r['turns'] for r in records])),
      'episode/capped_frac': float(np.mean([r['capped'] for r in records])),
      'tools/output_tokens_mean': float(np.mean(sizes)) if sizes else 0.0,
      'tools/outputs_clipped': float(sum(r['clipped'] for r in records)),
    }
  )
  return {prefix + k: v for k, v in m.items()}
