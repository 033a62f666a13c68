"""Episodes: multi-token stops in the jitted loop, exact KV-cache continuation, the episode loss mask."""

import contextlib
import dataclasses
import json
import logging
import pathlib

import jax
import numpy as np
import pytest

import local_http

from rftjax import episodes
from rftjax import model
from rftjax import multihost
from rftjax import presets
from rftjax import resume
from rftjax import sampler
from rftjax import sharding
from rftjax import tasks
from rftjax import tokenizer
from rftjax import tool_server
from rftjax import tools
from rftjax import train_step

CFG = presets.tiny(vocab_size=128)
# Gemma 3's layer kinds: local layers see a sliding window, shorter than the episodes below
WINDOWED = dataclasses.replace(CFG, name='tiny_windowed', sliding_window=3, global_every=2, rope_base_local=100.0)


def test_multi_token_stop_ends_the_row_at_the_sequence():
  params = model.init_params(CFG, 0)
  prompts = [[5, 6, 7], [9, 10]]
  free = sampler.generate(params, CFG, prompts, max_new_tokens=12, stop_ids=[], pad_id=0)
  seq = tuple(free[0][3:5])  # two tokens row 0 writes at steps 3-4

  def cut(row):  # through the first occurrence of the sequence, nothing after
    j = next((j for j in range(len(row) - 1) if tuple(row[j : j + 2]) == seq), None)
    return row if j is None else row[: j + 2]

  out = sampler.generate(params, CFG, prompts, max_new_tokens=12, stop_ids=[], stop_seqs=[seq], pad_id=0)
  assert out == [cut(r) for r in free] and len(out[0]) <= 5
  # a sequence longer than another stop: both kinds in one sampler; the single id wins when it comes first
  stop = free[0][1]
  out = sampler.generate(params, CFG, prompts, max_new_tokens=12, stop_ids=[stop], stop_seqs=[seq], pad_id=0)
  assert out[0] == free[0][: free[0].index(stop) + 1]


def test_stop_tokens_splits_single_and_multi_token_strings():
  class Tok:
    stop_ids = (1,)

    def encode(self, s):
      return {'\n': [7], '</tool_call>': [3, 4, 5], '': []}[s]

  assert sampler.stop_tokens(Tok(), ('\n', '</tool_call>', '\n')) == ((1, 7), ((3, 4, 5),))
  with pytest.raises(ValueError, match='encodes to no tokens'):
    sampler.stop_tokens(Tok(), ('',))


def _episode(params, mesh, cfg=CFG):
  """Three turns of a hand-driven episode: rows stop at different lengths, one row finishes after turn 1, another
  after turn 2; between turns each live row gets a tool block of its own length. Returns (prompt tokens and
  mask, transcripts, model masks, sampler logprobs)."""
  rng = np.random.default_rng(0)
  g, p, new, width = 2, 6, 5, 4
  prompts = [list(rng.integers(10, cfg.vocab_size, n)) for n in (6, 3)]
  rows = [q for q in prompts for _ in range(g)]
  tokens, mask = sampler.pad_prompts(rows, p, pad_id=0)
  s = sampler.Sampler(
    cfg, p, new, stop_ids=tuple(range(10, 40)), pad_id=0, params=sampler.SamplingParams(1.0), group_size=g,
    context_len=p + 3 * new + 2 * width,
  )  # fmt: skip
  put = (lambda x: multihost.to_global(mesh, np.asarray(x))) if mesh is not None else np.asarray
  out, ctx = s.start(params, put(tokens), put(mask), jax.random.key(1))
  texts = [[] for _ in rows]
  model_mask = [[] for _ in rows]
  logps = [[] for _ in rows]
  lives = [None, np.array([1, 1, 0, 1], bool), np.array([1, 0, 0, 1], bool)]
  for turn in range(3):
    if turn:
      live = lives[turn]
      block = np.zeros((len(rows), width), np.int32)
      bmask = np.zeros((len(rows), width), bool)
      for i in np.flatnonzero(live):
        k = 1 + (i + turn) % width
        block[i, width - k :] = rng.integers(40, cfg.vocab_size, k)
        bmask[i, width - k :] = True
        texts[i] += list(block[i, width - k :])
        model_mask[i] += [0.0] * k
        logps[i] += [0.0] * k
      out, ctx = s.resume(params, ctx, put(block), put(bmask), put(live), jax.random.key(10 + turn))
    o = jax.device_get(out)
    live = lives[turn] if turn else np.ones(len(rows), bool)
    assert (o.lengths[~live] == 0).all()  # finished rows stay silent
    for i in np.flatnonzero(live):
      n = int(o.lengths[i])
      texts[i] += list(o.tokens[i, :n])
      model_mask[i] += [1.0] * n
      logps[i] += list(o.logprobs[i, :n])
  lengths = [int(jax.device_get(out).lengths[i]) for i in range(len(rows))]
  assert len(set(len(t) for t in texts)) > 1 and max(lengths) > 0
  return tokens, mask, texts, model_mask, logps


@pytest.mark.parametrize('devices,cfg', [(1, CFG), (8, CFG), (1, WINDOWED)], ids=['1', '8', '1-windowed'])
def test_continued_episode_logprobs_equal_one_forward_over_the_transcript(devices, cfg):
  """Sampling turn after turn from the same cache (holes where rows stopped early, tool blocks prefilled at the
  next free slot) gives the logprobs that one forward over each row's contiguous transcript gives; with a sliding
  window too, which counts the transcript's tokens, not the cache slots between them."""
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}) if devices == 8 else None
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    params = model.init_params(cfg, 3, mesh)
    tokens, mask, texts, model_mask, logps = _episode(params, mesh, cfg)
    w = max(map(len, texts))
    pad = lambda rows, dtype: np.asarray([list(r) + [0] * (w - len(r)) for r in rows], dtype)
    batch = train_step.Batch(
      prompt_tokens=tokens,
      prompt_mask=mask,
      completion_tokens=pad(texts, np.int32),
      completion_mask=pad(model_mask, np.float32),
      advantages=np.zeros(len(texts), np.float32),
      sampler_logp=pad(logps, np.float32),
    )
    recomputed = np.asarray(jax.jit(train_step.token_logprobs, static_argnums=(1, 3))(params, cfg, batch, 1.0))
  m = batch.completion_mask > 0
  assert m.sum() > 8 and (~m).sum() > 8  # model tokens and inserted tokens both present
  np.testing.assert_allclose(recomputed[m], batch.sampler_logp[m], atol=1e-5)


# ---- the agent: transcripts, loss mask, tool failures ---------------------------------------------------------
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tok():
  return tokenizer.load_tokenizer(f'sp:{REPO}/data/tiny_tools/tokenizer.model')


@dataclasses.dataclass
class ScriptedSampler:
  """Stands in for the jitted sampler: each turn returns the tokens the test wrote for each row."""

  turns: list  # per turn: per row, a list of (token, logprob) or None for a silent row
  stop_ids: tuple
  pad_id: int = 0
  max_new_tokens: int = 3
  max_prompt_len: int = 8
  group_size: int = 1
  slots: int = 64  # cache room: enough for the episodes below
  blocks: list = dataclasses.field(default_factory=list)

  def _out(self, turn, live):
    rows = self.turns[turn]
    n = self.max_new_tokens
    tokens = np.zeros((len(rows), n), np.int32)
    logprobs = np.zeros((len(rows), n), np.float32)
    lengths = np.zeros(len(rows), np.int32)
    for i, row in enumerate(rows):
      if live[i]:
        tokens[i, : len(row)] = [t for t, _ in row]
        logprobs[i, : len(row)] = [lp for _, lp in row]
        lengths[i] = len(row)
    mask = (np.arange(n)[None] < lengths[:, None]).astype(np.float32)
    truncated = np.asarray([live[i] and rows[i][-1][0] not in self.stop_ids for i in range(len(rows))])
    return sampler.SampleOutput(tokens, mask, logprobs, lengths, truncated)

  def start(self, params, tokens, mask, rng):
    return self._out(0, np.ones(tokens.shape[0], bool)), 1

  def resume(self, params, ctx, block, block_mask, live, rng):
    self.blocks.append([list(np.asarray(block)[i][np.asarray(block_mask)[i]]) for i in range(block.shape[0])])
    return self._out(ctx, np.asarray(live)), ctx + 1


def test_episode_transcript_and_loss_mask_cover_exactly_the_model_tokens(tok):
  """A hand-built episode against the example tool server: a call, the tool turn the host inserts, the answer; a
  row that answers at once; a row still calling at the last turn (capped). The loss mask is 1 on exactly the
  tokens the model wrote, the logprobs sit on them, the graders get each row's final turn."""
  call = tok.encode(tasks.TINY_TOOLS_CALL)
  assert len(call) == 1
  call = call[0]
  d = {k: tok.encode(str(k))[0] for k in range(10)}
  stops = (*tok.stop_ids, call, *d.values())
  script = ScriptedSampler(
    turns=[[[(call, -0.5)], [(d[3], -0.25)], [(call, -0.75)]], [[(d[7], -0.125)], None, [(call, -1.5)]]], stop_ids=stops
  )
  with (
    tool_server.serve({'secret': '7'}) as url,
    tools.ToolClient(tools.load_tools([{'name': 'lookup', 'server_url': url}])) as client,
  ):
    agent = episodes.Agent(script, tok, client, max_steps=2, tool_tokens=8)
    small = episodes.Agent(dataclasses.replace(script, slots=20), tok, client, max_steps=2, tool_tokens=8)
    with pytest.raises(ValueError, match='episodes of 2 turns need 22 cache slots; the sampler has 20'):
      small.run(None, np.ones((3, 8), np.int32), np.ones((3, 8), bool), jax.random.key(0), None)
    prompts = np.ones((3, 8), np.int32)
    e = agent.run(None, prompts, np.ones((3, 8), bool), jax.random.key(0), None)
  tool = tok.encode('<tool_response>') + tok.encode('7') + tok.encode('</tool_response>')
  assert script.blocks == [[tool, [], tool]]
  assert len(tool) == 3
  width = episodes.completion_width(3, 2, 8)
  expect_tokens = [[call, *tool, d[7]], [d[3]], [call, *tool, call]]
  expect_mask = [[1, 0, 0, 0, 1], [1], [1, 0, 0, 0, 1]]
  expect_logp = [[-0.5, 0, 0, 0, -0.125], [-0.25], [-0.75, 0, 0, 0, -1.5]]
  pad = lambda rows: np.asarray([r + [0] * (width - len(r)) for r in rows])
  np.testing.assert_array_equal(e.tokens, pad(expect_tokens))
  np.testing.assert_array_equal(e.mask, pad(expect_mask))
  np.testing.assert_allclose(e.logprobs, pad(expect_logp))
  np.testing.assert_array_equal(e.lengths, [5, 1, 5])
  assert e.texts == ['7', '3', tasks.TINY_TOOLS_CALL]
  assert [t['turns'] for t in e.transcripts] == [2, 1, 2] and [t['capped'] for t in e.transcripts] == [0, 0, 1]
  assert e.transcripts[0]['messages'][1] == {'role': 'tool', 'name': 'lookup', 'content': '7', 'kind': 'ok'}
  assert len({t['trace_id'] for t in e.transcripts}) == 3 and not e.discard.any()
  m = episodes.metrics([episodes.record(t) for t in e.transcripts])
  assert m['tools/calls_per_rollout'] == pytest.approx(2 / 3) and m['episode/turns_mean'] == pytest.approx(5 / 3)
  assert m['episode/capped_frac'] == pytest.approx(1 / 3) and m['tools/output_tokens_mean'] == 1.0


class _Broken(local_http.Handler):
  """A tool server that is down: every call is a 503; counts the attempts."""

  attempts = 0

  def do_POST(self):
    type(self).attempts += 1
    self.json_body()
    self.send(503, '')


@pytest.mark.real_weights
def test_episode_tool_failures_and_the_chat_template_around_tool_turns():
  """SmolLM2's own template: the tool turn is its `<|im_end|>` ... `<|im_start|>assistant` frame around the output
  (the model's own `<|im_end|>` is not written twice). A malformed call is shown to the model as an error and the
  episode goes on; a tool that stays down (503) is retried and the rollout discarded; a 404 is shown as is."""
  tok = tokenizer.load_tokenizer('gguf:smollm2-135m')
  end = tok.token_to_id('<|im_end|>')
  turn = lambda text: [(t, -0.5) for t in tok.encode(text)] + [(end, -0.25)]  # noqa: E731
  script = ScriptedSampler(
    turns=[
      [
        turn('<tool_call>{"name": "lookup", "arguments": {"key": "k9"}}</tool_call>'),
        turn('<tool_call>{"name": "lookup", "arguments": {"key": oops}}</tool_call>'),
        turn('<tool_call>{"name": "broken", "arguments": {}}</tool_call>'),
      ],
      [turn('no such key'), turn('fixed'), turn('down')],
    ],
    stop_ids=(end,),
    max_new_tokens=40,
    slots=8 + 2 * 40 + 64,
  )
  with tool_server.serve({'k7': 'blue'}) as url, local_http.serving(_Broken) as broken:
    specs = tools.load_tools([{'name': 'lookup', 'server_url': url}, {'name': 'broken', 'server_url': broken}])
    with tools.ToolClient(specs, timeout_s=5) as client:
      e = episodes.Agent(script, tok, client, max_steps=2, tool_tokens=64).run(
        None, np.ones((3, 8), np.int32), np.ones((3, 8), bool), jax.random.key(0), None
      )
  tool_msgs = [t['messages'][1] for t in e.transcripts]
  assert [m['kind'] for m in tool_msgs] == ['client_error', 'bad_call', 'server_error']
  assert tool_msgs[0]['content'].startswith('Error 404') and 'k9' in tool_msgs[0]['content']
  assert 'JSON' in tool_msgs[1]['content'] or 'json' in tool_msgs[1]['content']
  assert _Broken.attempts == 4 and list(e.discard) == [False, False, True]
  # the inserted frame: after the model's own <|im_end|>, a newline, the tool turn, then the assistant's header
  frame = tok.encode('\n<|im_start|>tool\n') + tok.encode(tool_msgs[0]['content'], parse_special=False)
  frame += tok.encode('<|im_end|>\n<|im_start|>assistant\n')
  assert script.blocks[0][0] == frame
  n_model = len(script.turns[0][0])
  assert list(e.tokens[0, n_model : n_model + len(frame)]) == frame
  assert e.mask[0, :n_model].all() and not e.mask[0, n_model : n_model + len(frame)].any()
  assert e.texts == ['no such key', 'fixed', 'down']  # the final turn, control tokens dropped


def test_tiny_tools_config_trains_end_to_end(tmp_path, monkeypatch, caplog):
  """configs/tiny_tools.py:test starts the example tool server, samples episodes, grades them with the server's
  endpoint grader and writes tool metrics and whole transcripts."""
  from configs import tiny_tools
  from rftjax import metrics as metrics_lib
  from rftjax import trainer

  monkeypatch.chdir(REPO)
  trainer.train(tiny_tools.get_config('test'), tmp_path / 'run')
  rows = metrics_lib.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')
  train = [r for r in rows if 'train_reward_mean' in r]
  assert len(train) == 3
  for key in ('tools/calls_per_rollout', 'tools/latency_max_s', 'tools/errors/total', 'tools/discarded_rollouts',
              'episode/turns_mean', 'tools/output_tokens_mean', 'discarded_frac'):  # fmt: skip
    assert key in train[0], key
  assert any('valid/tools/calls_per_rollout' in r for r in rows)
  # each configured tool has its count, 0 when no rollout called it (step 0's validation: an untrained model)
  assert all(r['valid/tools/calls_per_rollout/lookup'] >= 0 for r in rows if 'valid_reward_mean' in r)
  assert all('tools/calls_per_rollout/lookup' in r for r in train)
  from matplotlib import pyplot as plt

  from rftjax import plots

  fig = plots.reward_figure(tmp_path / 'run')
  labels = fig.axes[0].get_legend_handles_labels()[1]
  plt.close(fig)
  assert 'tool calls per rollout (train, smoothed)' in labels and 'validation' in labels
  samples = [json.loads(line) for line in (tmp_path / 'run' / 'samples' / 'valid_step000003.jsonl').open()]
  assert len(samples) == 8 and all(s['transcript']['trace_id'].startswith('trace_') for s in samples)
  assert all(s['transcript']['messages'][0]['role'] == 'assistant' for s in samples)
  # rftjax.evaluate on the finished run: a new example server, the run's episodes, whole transcripts written
  from rftjax import evaluate

  out = tmp_path / 'eval.jsonl'
  assert evaluate.main([f'--workdir={tmp_path / "run"}', '--data=data/tiny_tools/valid.jsonl', f'--out={out}']) == 0
  rows = [json.loads(line) for line in out.open()]
  assert len(rows) == 60 and all(r['transcript']['trace_id'].startswith('trace_') for r in rows)
  # with the run's validation key at that step: the first 8 rows (the run validated on 8) are its episodes
  step = json.loads(out.with_name(out.name + '.summary.json').read_text())['step']
  valid = [json.loads(line) for line in (tmp_path / 'run' / 'samples' / f'valid_step{step:06d}.jsonl').open()]
  assert [r['transcript']['trace_id'] for r in rows[:8]] == [v['transcript']['trace_id'] for v in valid]
  assert [r['completion'] for r in rows[:8]] == [v['completion'] for v in valid]
  assert {r['completion'] for r in rows} == {r['transcript']['messages'][-1]['content'] for r in rows}
  # rftjax.sample writes one turn per prompt, and says so for a run of episodes
  from rftjax import sample

  caplog.set_level(logging.INFO, logger='rftjax')
  out = tmp_path / 'sampled.jsonl'
  assert sample.main([f'--workdir={tmp_path / "run"}', '--prompts=data/tiny_tools/valid.jsonl', f'--out={out}']) == 0
  assert any('rftjax.evaluate runs whole episodes' in m for m in caplog.messages)


def test_a_tool_server_that_is_down_stops_the_run_and_fails_evaluate(tmp_path, monkeypatch, capsys):
  """Rewards earned against a dead tool rank nothing: the run stops (exit 3 in train.main) after checkpointing, and
  evaluate exits 1 once its samples and summary (with the tool metrics) are written."""
  import socket

  from configs import tiny_tools
  from rftjax import evaluate
  from rftjax import trainer

  monkeypatch.chdir(REPO)
  with socket.socket() as s:  # a port nothing listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  c = tiny_tools.get_config('test')
  c.tools = ({'name': 'lookup', 'server_url': f'http://127.0.0.1:{port}/'},)
  c.tool_timeout_s = 0.5
  c.seed = 0  # whose untrained model calls the tool in step 1 (seed 1's does not)
  with pytest.raises(trainer.GradingStopped) as e:
    trainer.train(c, tmp_path / 'run')
  assert e.value.code == 'tools_failed' and e.value.exit_code == 3
  assert str(e.value).startswith('step 1: 1 of 1 tool calls failed for good (100% > tools_max_error_share=50%): ')
  assert 'connection in 1 (lookup)' in str(e.value) and 'The checkpoint at step 0 is where a rerun resumes' in str(
    e.value
  )
  last = json.loads((tmp_path / 'run' / 'events.jsonl').read_text().splitlines()[-1])
  assert last['data']['code'] == 'tools_failed' and last['level'] == 'error'

  out = tmp_path / 'eval.jsonl'
  argv = [f'--workdir={tmp_path / "run"}', '--data=data/tiny_tools/valid.jsonl', f'--out={out}', '--samples=8']
  assert evaluate.main(argv) == 1  # 8 samples at temperature 1: the untrained model calls the tool now and then
  err = capsys.readouterr().err
  assert 'tool calls failed for good' in err and f'the samples and the summary are in {out}' in err
  summary = json.loads(out.with_name(out.name + '.summary.json').read_text())
  assert summary['tools/errors/connection'] == summary['tools/discarded_rollouts'] > 0
  # a reward earned against the broken tool is out of the mean, as a judge's outage is (eval/num_discarded)
  assert summary['eval/num_discarded'] == summary['tools/discarded_rollouts']
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  kept = [row['reward'] for row in rows if not any(c['discard'] for c in row['transcript']['calls'])]
  assert summary['reward_mean'] == pytest.approx(sum(kept) / len(kept))
  assert summary['tools/calls_per_rollout/lookup'] == summary['tools/calls_per_rollout']
  # the server moved: --tools points the run's episodes at it, without editing the run
  from rftjax import tool_server

  with tool_server.serve() as url:
    moved = tmp_path / 'moved_tools.json'
    moved.write_text(json.dumps([{'name': 'lookup', 'server_url': url}]))
    assert evaluate.main([*argv, f'--tools={moved}']) == 0
  summary = json.loads(out.with_name(out.name + '.summary.json').read_text())
  assert summary['tools/calls_per_rollout'] > 0 and summary['tools/errors/total'] == 0
  moved.write_text(json.dumps([{'name': 'lookup'}]))
  assert evaluate.main([*argv, f'--tools={moved}']) == 2
  assert f"--tools[0] (in {moved}): missing required field 'server_url'" in capsys.readouterr().err


def test_a_tool_output_cannot_spell_the_templates_markup_or_a_stop_token(tok):
  """The tiny demo's `</tool_response>` and call are user-defined sentencepiece pieces, which sentencepiece matches
  in any text: a tool output spelling them must not close its turn early or plant a call."""
  close, call = tok.token_to_id('</tool_response>'), tok.token_to_id(tasks.TINY_TOOLS_CALL)
  text = f'</tool_response>{tasks.TINY_TOOLS_CALL} 42'
  assert {close, call} <= set(tok.encode(text, parse_special=False))  # what the plain encoding alone gives
  ids, (inserted,), _ = episodes.tool_turn(tok, [text], None, 200, stop_ids=(call,))
  frame = tok.encode('<tool_response>'), tok.encode('</tool_response>')
  assert ids[: len(frame[0])] == frame[0] and ids[len(ids) - len(frame[1]) :] == frame[1]
  body = ids[len(frame[0]) : len(ids) - len(frame[1])]
  assert body == inserted and close not in body and call not in body


def test_a_turn_with_more_calls_than_its_tool_turn_holds_runs_what_fits(tok):
  """tool_tokens=8 holds two outputs in the tiny template (2 tokens of frame each, 1 of output at least): a turn of
  three calls runs the first and tells the model in the second slot, instead of stopping the run."""
  call = tok.token_to_id(tasks.TINY_TOOLS_CALL)
  d7 = tok.encode('7')[0]
  script = ScriptedSampler(turns=[[[(call, -0.5)] * 3], [[(d7, -0.1)]]], stop_ids=(*tok.stop_ids, call, d7))
  assert episodes.max_calls(tok, 8) == 2
  with (
    tool_server.serve({'secret': '7'}) as url,
    tools.ToolClient(tools.load_tools([{'name': 'lookup', 'server_url': url}])) as client,
  ):
    e = episodes.Agent(script, tok, client, max_steps=2, tool_tokens=8).run(
      None, np.ones((1, 8), np.int32), np.ones((1, 8), bool), jax.random.key(0), None
    )
  tool_msgs = e.transcripts[0]['messages'][1:3]
  assert [m['kind'] for m in tool_msgs] == ['ok', 'bad_call'] and tool_msgs[0]['content'] == '7'
  assert tool_msgs[1]['content'].startswith('Error: 3 tool calls in one turn; at most 2 fit, so calls 2 to 3 were')
  assert len(script.blocks[0][0]) == 8 and e.texts == ['7']


def test_a_transcript_shows_what_the_model_read_of_a_clipped_tool_output(tok):
  """A tool's message keeps its whole output and, when the tool turn cut it, `shown`: the text the model read."""
  call = tok.token_to_id(tasks.TINY_TOOLS_CALL)
  d7 = tok.encode('7')[0]
  long = ' '.join(['1'] * 10)
  script = ScriptedSampler(turns=[[[(call, -0.5)]], [[(d7, -0.1)]]], stop_ids=(*tok.stop_ids, call, d7))
  room = episodes.frame_tokens(tok, 1) + 4
  with (
    tool_server.serve({'secret': long}) as url,
    tools.ToolClient(tools.load_tools([{'name': 'lookup', 'server_url': url}])) as client,
  ):
    e = episodes.Agent(script, tok, client, max_steps=2, tool_tokens=room).run(
      None, np.ones((1, 8), np.int32), np.ones((1, 8), bool), jax.random.key(0), None
    )
  (msg,) = [m for m in e.transcripts[0]['messages'] if m['role'] == 'tool']
  assert msg['content'] == long and msg['shown'] == tok.decode(tok.encode(long, parse_special=False)[:4])
  assert e.transcripts[0]['clipped'] == 1 and e.transcripts[0]['tool_tokens'] == [4]


def test_tool_outputs_too_long_for_their_turn_share_the_room(tok):
  """Two outputs of 10 tokens where 8 fit: 4 and 4 (the cut took 9 off the first before); a short one stays whole."""
  ten = ' '.join(['1'] * 10)
  n = len(tok.encode(ten, parse_special=False))
  frame = episodes.frame_tokens(tok, 2)
  _, bodies, full = episodes.tool_turn(tok, [ten, ten], None, frame + 8)
  assert n >= 10 and [len(b) for b in bodies] == [4, 4] and full == [n, n]
  assert bodies[0] == tok.encode(ten, parse_special=False)[:4]  # cut from the end
  _, bodies, full = episodes.tool_turn(tok, ['7', ten, ten], None, episodes.frame_tokens(tok, 3) + 8)
  assert [len(b) for b in bodies] == [1, 4, 3] and full == [1, n, n]


def test_a_tool_turn_the_template_or_tool_tokens_cannot_hold_fails_before_the_model_loads():
  from configs import tiny_tools
  from rftjax import errors
  from rftjax import runspec

  config = tiny_tools.get_config().copy_and_resolve_references()
  config.tools = ({'name': 'lookup', 'server_url': 'http://127.0.0.1:9/'},)  # as the run's tool server fills it in
  tok = tokenizer.load_tokenizer(f'sp:{REPO}/data/tiny_tools/tokenizer.model')
  assert runspec.build(config, tok).episodes.tool_tokens == config.sampling.tool_tokens
  config.sampling.tool_tokens = 2
  with pytest.raises(errors.ConfigError, match=r'config.sampling.tool_tokens=2 cannot hold the chat template around '
                     r'one tool output; expected at least 3'):  # fmt: skip
    runspec.build(config, tok)


class _Bytes:
  """A byte-level tokenizer over a jinja chat template: what `tool_turn` inserts decodes to exactly its text."""

  def __init__(self, template: str):
    from rftjax import chat_template

    self.template = chat_template.JinjaTemplate({'default': template}, 'test', {})

  def chat_text(self, conv, tools=None, add_generation_prompt=True):
    return self.template.render(conv, tools=tools, add_generation_prompt=add_generation_prompt)

  def encode(self, text, parse_special=True):
    return list(text.encode())

  def decode(self, ids, skip_special=True):
    return bytes(ids).decode()


# Llama 3.x's way with tool results: an `ipython` turn whose content is written with `tojson` (a JSON string)
LLAMA_LIKE = (
  '{% for m in messages %}<|start_header_id|>{{ "ipython" if m.role == "tool" else m.role }}<|end_header_id|>\n\n'
  '{% if m.role == "tool" %}{{ m.content | tojson }}{% else %}{{ m.content }}{% endif %}<|eot_id|>{% endfor %}'
  '{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}'
)


def test_a_template_that_writes_tool_outputs_as_json_strings_gets_them_escaped():
  """The output went in raw between the quotes ("He said "hi"<newline>..."), not as the template writes it."""
  tok = _Bytes(LLAMA_LIKE)
  user = [{'role': 'user', 'content': 'What is k7?'}]
  call = '{"name": "lookup", "parameters": {"key": "k7"}}'
  output = 'He said "hi"\nline 2, café'
  ids, _, _ = episodes.tool_turn(tok, [output], None, 10_000)
  conv = user + [{'role': 'assistant', 'content': call}, {'role': 'tool', 'content': output, 'tool_call_id': 'c'}]
  assert tok.chat_text(user) + call + tok.decode(ids) == tok.chat_text(conv)
  assert tools.parse_calls(call) == [tools.ParsedCall('lookup', '{"key": "k7"}')]  # Llama's untagged call


def test_a_run_with_the_example_tool_server_resumes_on_its_new_port(monkeypatch):
  """Each run starts the example server on a free port: the URL in config.json (the grader's, the tools') is not a
  change of grader. Before, the rerun of a stopped tiny_tools run was refused as 'another run'."""
  from configs import tiny_tools

  monkeypatch.chdir(REPO)
  config = tiny_tools.get_config('test')
  first = json.loads(tool_server.substitute(config, 'http://127.0.0.1:4001/').to_json_best_effort())
  assert first['grader']['url'] == 'http://127.0.0.1:4001/grade'
  again = tool_server.substitute(config, 'http://127.0.0.1:4002/')
  assert resume.check(again, first, 'runs/x') == ([], [])
