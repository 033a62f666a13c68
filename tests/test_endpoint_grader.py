"""The `endpoint` grader against a real server on 127.0.0.1: scores, the request it sends, retries and discards,
rate limiting, inside `multi`, spec errors, and `rftjax.grade --validate`."""

import collections
import contextlib
import json
import re
import signal
import threading
import time

import pytest

import local_http

from rftjax import grade
from rftjax import graders
from rftjax import response_format
from rftjax.graders import endpoint


class _Grader(local_http.Handler):
  """Answers by the sample's text; records each request's arrival time, body and headers."""

  seen: list = []
  attempts: collections.Counter = collections.Counter()
  in_flight = most_in_flight = 0
  lock = threading.Lock()

  def do_POST(self):
    arrived = time.monotonic()
    body = self.json_body()
    text = body['sample']['output_text']
    cls = type(self)
    with cls.lock:
      cls.seen.append((arrived, self.path, body, dict(self.headers)))
      cls.attempts[text] += 1
      cls.in_flight += 1
      cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
    self.counted = True
    try:
      self.behave(text, cls.attempts[text])
    except (BrokenPipeError, ConnectionResetError):  # the grader gave up waiting
      pass
    finally:
      self._done()

  def _done(self):
    with type(self).lock:
      type(self).in_flight -= self.counted
      self.counted = False

  def send(self, *args, **kwargs):
    self._done()  # before the reply: once the client has it, its next request may come before a `finally` runs
    super().send(*args, **kwargs)

  def behave(self, text, attempt):
    replies = {
      'down': (503, 'maintenance'),
      'flaky': (500, 'hiccup') if attempt <= 2 else (200, '{"score": 1}'),
      'forbidden': (403, '{"error": "bad token"}'),
      'text': (200, 'great answer'),
      'noscore': (200, '{"result": 1}'),
      'boolscore': (200, '{"score": true}'),
      'strscore': (200, '{"score": "0.5"}'),
      'nanscore': (200, '{"score": NaN}'),
      'hugescore': (200, '{"score": 1' + '0' * 400 + '}'),
    }
    if text == 'slow':
      time.sleep(0.5)
    if text == 'stuck':  # longer than a Ctrl-C should wait (local_http waits up to 3 s for it when stopping)
      time.sleep(2.5)
    if text == 'dropped' and attempt == 1:  # promises 500 bytes, sends 10, closes: a connection cut mid-reply
      self.send_response(200)
      self.send_header('Content-Length', '500')
      self.end_headers()
      self.wfile.write(b'{"score": ')
      self.close_connection = True
      return
    if text in replies:
      status, reply = replies[text]
    else:  # "0.75" scores 0.75; anything else 0
      try:
        reply = json.dumps({'score': float(text), 'extra': 'ignored'})
      except ValueError:
        reply = json.dumps({'score': 0})
      status = 200
    self.send(status, reply)


@pytest.fixture
def url():
  _Grader.seen, _Grader.attempts, _Grader.in_flight, _Grader.most_in_flight = [], collections.Counter(), 0, 0
  with local_http.serving(_Grader, '/grade') as url:
    yield url


def spec(url, **extra):
  return {'type': 'endpoint', 'name': 'ep', 'url': url, **extra}


def test_scores_and_the_request(url):
  g = graders.build(spec(url, headers={'Authorization': 'Bearer t0k'}, pass_threshold=0.5))
  items = [{'q': 'a', 'answer': 1}, {'q': 'b'}]
  with graders.GradingPool(num_workers=1, timeout_s=5) as pool:
    res = pool.grade(g, ['0.75', '{"x": 2}'], items, traces=['trace_a', 'trace_b'])
  assert [r.reward for r in res] == [0.75, 0.0] and not any(r.errors for r in res)
  assert res[0].metadata['passed'] is True and res[1].metadata['passed'] is False
  assert res[0].metadata['attempts'] == 1 and res[0].metadata['trace_id'] == 'trace_a'
  assert 'discard' not in res[0].metadata and res[0].metadata['latency_s'] > 0
  bodies = {body['trace_id']: (path, body, headers) for _, path, body, headers in _Grader.seen}
  path, body, headers = bodies['trace_b']
  assert path == '/grade' and headers['Authorization'] == 'Bearer t0k'
  assert headers['Content-Type'] == 'application/json'
  assert body == {
    'sample': {
      'output_text': '{"x": 2}',
      'output_json': {'x': 2},
      'output_tools': [],
      'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': '{"x": 2}'}}],
      'trace_id': 'trace_b',
    },
    'item': {'q': 'b'},
    'trace_id': 'trace_b',
  }
  assert bodies['trace_a'][1]['item'] == items[0]


def test_without_traces_each_sample_gets_a_fresh_id(url):
  g = graders.build(spec(url))
  with graders.GradingPool(num_workers=1, timeout_s=5) as pool:
    res = pool.grade(g, ['1', '1', '1'], [{}] * 3)
  ids = [r.metadata['trace_id'] for r in res]
  assert len(set(ids)) == 3 and all(i.startswith('trace_') for i in ids)
  assert sorted(body['trace_id'] for _, _, body, _ in _Grader.seen) == sorted(ids)
  assert [r.reward for r in g.grade_batch(['0.5'], [{}], ['trace_direct'])] == [0.5]  # without a pool
  assert _Grader.seen[-1][2]['trace_id'] == 'trace_direct'


def test_server_errors_are_retried_then_discarded(url):
  g = graders.build(spec(url))
  with graders.GradingPool(num_workers=1, timeout_s=5) as pool:
    down, flaky = pool.grade(g, ['down', 'flaky'], [{}, {}])
  assert _Grader.attempts['down'] == 1 + endpoint.RETRIES == 4  # counted by the server
  assert down.reward == 0.0 and down.metadata['discard'] is True and down.metadata['attempts'] == 4
  (err,) = down.errors
  assert err.category == 'endpoint_grader' and 'HTTP 503' in err.message and '(4 attempts)' in err.message
  assert (
    flaky.reward == 1.0 and not flaky.errors and flaky.metadata['attempts'] == 3 and 'discard' not in flaky.metadata
  )


def test_a_header_names_its_secret_by_environment_variable(url, monkeypatch):
  """A token written in the grader spec went into the run's config.json and `report --format=openai`: ${NAME} is
  read from the environment when the request goes, and an unset one stops the command at the start."""
  g = graders.build(spec(url, headers={'Authorization': 'Bearer ${RFTJAX_TEST_TOKEN}', 'X-Plain': 'a'}))
  monkeypatch.delenv('RFTJAX_TEST_TOKEN', raising=False)
  with pytest.raises(graders.GraderConfigError, match=r'sends http://\S+ a key from .* RFTJAX_TEST_TOKEN, which is'):
    graders.check_runnable(g)
  monkeypatch.setenv('RFTJAX_TEST_TOKEN', 's3cr3t')
  graders.check_runnable(g)
  assert g.grade_batch(['0.5'], [{}])[0].reward == 0.5
  assert _Grader.seen[-1][3]['Authorization'] == 'Bearer s3cr3t' and _Grader.seen[-1][3]['X-Plain'] == 'a'
  assert g.spec['headers']['Authorization'] == 'Bearer ${RFTJAX_TEST_TOKEN}'  # what config.json keeps


def test_a_reply_cut_short_is_tried_again(url):
  """A body shorter than its Content-Length was read as complete and failed as "not JSON", the server's verdict."""
  (r,) = graders.build(spec(url)).grade_batch(['dropped'], [{}])
  assert r.reward == 0.0 and not r.errors and r.metadata['attempts'] == 2 and _Grader.attempts['dropped'] == 2


def test_timeouts_and_refused_connections_are_discarded(url):
  with graders.GradingPool(num_workers=1, timeout_s=0.2) as pool:
    (slow,) = pool.grade(graders.build(spec(url)), ['slow'], [{}])
    (dead,) = pool.grade(graders.build(spec('http://127.0.0.1:9/grade')), ['0.5'], [{}])
  assert _Grader.attempts['slow'] == 4 and slow.metadata['discard'] is True
  assert slow.errors[0].category == 'endpoint_grader' and 'within 0.2 s' in slow.errors[0].message
  assert dead.metadata['discard'] is True and dead.metadata['attempts'] == 4
  assert dead.errors[0].message.startswith('cannot reach http://127.0.0.1:9/grade')


def test_model_threads_caps_the_requests_in_flight(url):
  """grading.model_threads is the judge's or server's concurrency limit (trainer, preflight and evaluate pass it)."""
  with graders.GradingPool(num_workers=1, timeout_s=5, model_threads=2) as pool:
    t0 = time.monotonic()
    results = pool.grade(graders.build(spec(url)), ['slow'] * 4, [{}] * 4)
  assert [r.reward for r in results] == [0.0] * 4 and not any(r.errors for r in results)
  assert _Grader.most_in_flight == 2 and time.monotonic() - t0 >= 1.0  # two rounds of 0.5 s


def test_ctrl_c_does_not_wait_for_a_request_in_flight(url):
  """Ctrl-C in `grade` or `evaluate` while an endpoint or a judge had not answered: the pool's close waited for the
  request (its timeout, retries included: minutes) before the command could say `interrupted`."""
  t0 = time.monotonic()
  with pytest.raises(KeyboardInterrupt):
    with graders.GradingPool(num_workers=1, timeout_s=20) as pool:
      future = pool.submit(graders.build(spec(url)), ['stuck'], [{}])
      while not _Grader.in_flight:
        time.sleep(0.01)
      raise KeyboardInterrupt
  assert time.monotonic() - t0 < 2.0 and future.done()  # the request itself took 2.5 s


def test_a_call_interrupted_while_it_waits_sends_no_more_requests(url):
  """A notebook's Ctrl-C in pool.grade drops its job: its requests not yet sent stayed queued on the judge threads,
  and the next call's waited behind them (20 of 0.5 s on 2 threads: seconds)."""
  before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background test run ignores SIGINT
  with contextlib.ExitStack() as stack, graders.GradingPool(num_workers=1, timeout_s=5, model_threads=2) as pool:
    stack.callback(signal.signal, signal.SIGINT, before)
    timer = threading.Timer(0.7, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
      pool.grade(graders.build(spec(url)), ['slow'] * 20, [{}] * 20)
    t0 = time.monotonic()
    assert [r.reward for r in pool.grade(graders.build(spec(url)), ['0.25', '0.5'], [{}, {}])] == [0.25, 0.5]
    assert time.monotonic() - t0 < 1.5
  assert _Grader.attempts['slow'] <= 6  # the ones in flight when it stopped, not all 20


def test_the_grading_budget_names_the_server_that_did_not_answer(url):
  """A budget that ran out on a slow endpoint said python_grader_timeout, a category for code: it is the server's."""
  with graders.GradingPool(num_workers=1, timeout_s=5, budget_s=0.2) as pool:
    (late,) = pool.grade(graders.build(spec(url)), ['slow'], [{}])
  assert late.metadata['discard'] is True and [e.category for e in late.errors] == ['endpoint_grader']
  assert late.errors[0].message == "the step's grading budget of 0.2 s ran out before this sample was graded " \
                                   '(grading.step_budget_s)'  # fmt: skip


@pytest.mark.parametrize(
  'text, message',
  [
    ('forbidden', r'^HTTP 403 from http://127\.0\.0\.1:\d+/grade: \{"error": "bad token"\}$'),
    ('text', r"replied with something that is not JSON: 'great answer'; expected \{\"score\": <number>\}$"),
    ('noscore', r'replied without a "score": \{"result": 1\}'),
    ('boolscore', r'replied with a "score" that is not a finite number: true'),
    ('strscore', r'replied with a "score" that is not a finite number: "0.5"'),
    ('nanscore', r'replied with a "score" that is not a finite number: NaN'),
    ('hugescore', r'replied with a "score" that is not a finite number: 1000'),
  ],
)
def test_bad_answers_fail_once_without_discard(url, text, message):
  (r,) = graders.build(spec(url)).grade_batch([text], [{}])
  assert r.reward == 0.0 and 'discard' not in r.metadata and r.metadata['attempts'] == 1
  assert r.errors[0].category == 'endpoint_grader'
  assert re.search(message, r.errors[0].message), r.errors[0].message
  assert _Grader.attempts[text] == 1


def test_rate_limit_spaces_requests(url):
  g = graders.build(spec(url + '?rate-test', rate_limit=20))  # its own URL: limiters are per (url, rate)
  with graders.GradingPool(num_workers=1, timeout_s=5, model_threads=8) as pool:
    res = pool.grade(g, ['1'] * 5, [{}] * 5)
  assert [r.reward for r in res] == [1.0] * 5
  arrivals = sorted(t for t, *_ in _Grader.seen)
  # 4 gaps of 1/20 s: 0.2 s (unlimited, 8 threads send all 5 within a few ms); generous for a loaded machine
  assert arrivals[-1] - arrivals[0] >= 0.12


def test_inside_multi(url):
  g = graders.build(
    {
      'type': 'multi',
      'calculate_output': '0.5 * ep + 0.5 * exact',
      'graders': {
        'ep': spec(url),
        'exact': {'type': 'string_check', 'input': '{{sample.output_text}}', 'reference': '1', 'operation': 'eq'},
      },
    }
  )
  with graders.GradingPool(num_workers=1, timeout_s=5) as pool:
    one, half, down = pool.grade(g, ['1', '0.5', 'down'], [{}] * 3, traces=['t1', 't2', 't3'])
  assert (one.reward, one.sub_rewards) == (1.0, {'ep': 1.0, 'exact': 1.0})
  assert (half.reward, half.sub_rewards) == (0.25, {'ep': 0.5, 'exact': 0.0})
  assert 'discard' not in one.metadata and one.metadata['ep']['trace_id'] == 't1'
  assert down.metadata['discard'] is True and down.metadata['ep']['discard'] is True  # the whole reward is spoilt
  assert down.errors[0].category == 'endpoint_grader' and down.errors[0].message.startswith('ep: HTTP 503')
  summary = graders.summarize([one, half, down], prefix='train')
  assert summary['train/errors/endpoint_grader'] == pytest.approx(1 / 3)
  assert sorted(body['trace_id'] for _, _, body, _ in _Grader.seen if body['sample']['output_text'] != 'down') == [
    't1',
    't2',
  ]


def test_traces_stay_with_their_samples_under_a_response_format(url):
  fmt = response_format.make({'type': 'json_schema', 'json_schema': {'name': 'n', 'schema': {'type': 'object'}}})
  with graders.GradingPool(num_workers=1, timeout_s=5, response_format=fmt) as pool:
    res = pool.grade(graders.build(spec(url)), ['{}', 'not json', '{"a": 1}'], [{}] * 3, traces=['ta', 'tb', 'tc'])
  assert [r.metadata['response_format_valid'] for r in res] == [True, False, True]
  assert [r.metadata.get('trace_id') for r in res] == ['ta', None, 'tc']
  assert sorted(body['trace_id'] for _, _, body, _ in _Grader.seen) == ['ta', 'tc']  # the miss was never sent


def test_traces_must_match_the_samples():
  g = graders.build(spec('http://127.0.0.1:9/'))
  with graders.GradingPool(num_workers=1) as pool:
    with pytest.raises(ValueError, match='traces and samples must have the same length, found 1 and 2'):
      pool.submit(g, ['a', 'b'], [{}, {}], traces=['t'])


@pytest.mark.parametrize(
  'extra, message',
  [
    ({'url': None}, r"^grader: missing required field 'url'"),
    ({'url': 5}, r'^grader\.url: expected str, found int 5'),
    (
      {'url': 'grader.example.com/grade'},
      r"^grader\.url: expected an http:// or https:// URL with a host, found 'grad",
    ),
    ({'headers': ['Bearer x']}, r'^grader\.headers: expected dict, found list'),
    (
      {'headers': {'Authorization': 1}},
      r"^grader\.headers: expected string names and values, found 'Authorization': 1",
    ),
    ({'rate_limit': 0}, r'^grader\.rate_limit: expected a positive number of requests per second, found 0'),
    ({'rate_limit': -2.5}, r'^grader\.rate_limit: expected a positive number of requests per second, found -2.5'),
    ({'rate_limit': 'fast'}, r'^grader\.rate_limit: expected int or float, found str "fast"'),
    ({'rate_limit': True}, r'^grader\.rate_limit: expected int or float, found bool true'),
    ({'pass_threshold': '0.5'}, r'^grader\.pass_threshold: expected int or float, found str "0.5"'),
  ],
)
def test_spec_errors_name_the_field(extra, message):
  s = {**spec('http://127.0.0.1:8000/grade'), **extra}
  if s['url'] is None:
    del s['url']
  with pytest.raises(graders.GraderConfigError, match=message):
    graders.build(s)


def test_multi_reserves_the_name_discard():
  with pytest.raises(graders.GraderConfigError, match=r"^multi\.graders: the name 'discard' is taken"):
    graders.build({'type': 'multi', 'calculate_output': 'discard', 'graders': {'discard': spec('http://h/')}})


def test_validate_through_the_cli(tmp_path, capsys):
  good = tmp_path / 'good.json'
  good.write_text(json.dumps(spec('https://grader.example.com/grade', rate_limit=10, headers={'X-Key': 'k'})))
  assert grade.main([f'--grader={good}', '--validate']) == 0
  assert json.loads(capsys.readouterr().out) == {'valid': True, 'type': 'endpoint', 'name': 'ep'}
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps(spec('https://grader.example.com/grade', rate_limit=-1)))
  with pytest.raises(SystemExit) as e:
    grade.main([f'--grader={bad}', '--validate'])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == (
    'error: grader.rate_limit: expected a positive number of requests per second, found -1'
  )


def test_grade_cli_sends_one_sample(url, tmp_path, capsys):
  path = tmp_path / 'endpoint.json'
  path.write_text(json.dumps(spec(url)))
  assert grade.main([f'--grader={path}', '--sample=0.25', '--item={"q": 1}']) == 0
  assert json.loads(capsys.readouterr().out)['reward'] == 0.25
  assert _Grader.seen[0][2]['item'] == {'q': 1}


def test_grade_cli_says_when_some_gradings_failed(url, tmp_path, capsys, monkeypatch):
  """With 1 of 3 gradings failed, `grade --data` exited 0 and said nothing: the mean counts the failure as a 0."""
  path, data, samples = tmp_path / 'endpoint.json', tmp_path / 'data.jsonl', tmp_path / 'samples.jsonl'
  path.write_text(json.dumps(spec(url)))
  data.write_text('{}\n' * 3)
  samples.write_text('"1"\n"0.5"\n"forbidden"\n')
  assert grade.main([f'--grader={path}', f'--data={data}', f'--samples={samples}']) == 0
  out, err = capsys.readouterr()
  assert json.loads(out)['grade_reward_mean'] == 0.5
  assert err.strip() == (
    'note: 1 of 3 gradings failed and count as 0 in grade_reward_mean: endpoint_grader in 1, e.g. HTTP 403 from '
    f'{url}: {{"error": "bad token"}}; the first at {data}:3 (--output=FILE keeps each one\'s error)'
  )
  # a run's samples file as both --data and --samples: its rows' "item" is the data row (re-grading a validation)
  saved = tmp_path / 'valid_step000003.jsonl'
  saved.write_text(''.join(json.dumps({'item': {'k': i}, 'completion': c, 'reward': 0}) + '\n'
                           for i, c in enumerate(['1', '0.25'])))  # fmt: skip
  assert grade.main([f'--grader={path}', f'--data={saved}', f'--samples={saved}']) == 0
  assert json.loads(capsys.readouterr().out)['grade_reward_mean'] == 0.625
  assert [body['item'] for _, _, body, _ in _Grader.seen[-2:]] in ([{'k': 0}, {'k': 1}], [{'k': 1}, {'k': 0}])
  # a grading slower than training allows passes here (--timeout_s is 120 s): said
  monkeypatch.setattr(graders.pool, 'TRAIN_TIMEOUT_S', 0.0)
  samples.write_text('"1"\n"0.5"\n"0"\n')
  assert grade.main([f'--grader={path}', f'--data={data}', f'--samples={samples}']) == 0
  assert re.fullmatch(
    r'note: the slowest grading took \d+\.\d s: past the 0 s train gives each one by default \(grading.timeout_s; '
    r'or give the grader a timeout_s of its own\)\n',
    capsys.readouterr().err,
  )
