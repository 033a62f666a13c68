"""`endpoint`: a grader that is somebody's HTTP server, as in OpenAI's agent reinforcement fine-tuning.

  {"type": "endpoint", "name": "judge", "url": "https://grader.example.com/grade",
   "headers": {"Authorization": "Bearer ${GRADER_TOKEN}"}, "rate_limit": 50, "pass_threshold": 0.5}

Each sample is one POST of {"sample": {"output_text", "output_json", "trace_id"}, "item": <the data row>,
"trace_id"}, answered by {"score": <finite number>}. `trace_id` is the episode's id, the one its tool calls carried
(rftjax/tools.py), so the server can grade what the tools saw; without one, each sample gets a fresh id.

Failures are `endpoint_grader` errors and score 0. A 5xx, a timeout (the pool's `timeout_s`) or a connection error
is tried 3 more times; when it persists the result also has metadata["discard"] = True, and the trainer leaves that
rollout out of the loss: an outage of the grader says nothing about the policy. A 4xx or a reply that is not
{"score": number} is the grader's verdict on the request and is not retried or discarded.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from typing import Any

from rftjax import errors
from rftjax import http_post
from rftjax.graders import core

RETRIES = 3
BACKOFF_S = 0.05
MAX_REPLY_BYTES = 1_000_000


def new_trace_id() -> str:
  return f'trace_{uuid.uuid4().hex}'


class RateLimiter:
  """At most `rate` requests per second, evenly spaced, across every thread that calls `wait`."""

  def __init__(self, rate: float):
    self.interval = 1.0 / rate
    self._next = 0.0
    self._lock = threading.Lock()

  def wait(self) -> None:
    with self._lock:  # reserve a slot under the lock, sleep outside it so other threads can reserve theirs
      now = time.monotonic()
      slot = max(now, self._next)
      self._next = slot + self.interval
    if slot > now:
      time.sleep(slot - now)


# One limiter per (url, rate) in the process: the spec's limit is the server's, whichever grader object, pool or
# thread sends the request (a run builds its grader more than once: training and evaluation).
_limiters: dict[tuple[str, float], RateLimiter] = {}
_limiters_lock = threading.Lock()


def limiter(url: str, rate: float) -> RateLimiter:
  with _limiters_lock:
    return _limiters.setdefault((url, float(rate)), RateLimiter(rate))


class Endpoint(core.Grader):
  type = 'endpoint'
  mode = core.MODEL
  wants_trace = True

  def __init__(self, spec: dict[str, Any], name: str, where: str | None = None):
    self.spec, self.name = spec, name  # `where` (the spec's place, for errors): every field is checked in spec.py
    self.url = spec['url']
    self.headers = dict(spec.get('headers') or {})
    self.pass_threshold = spec.get('pass_threshold')
    rate = spec.get('rate_limit')
    self.pace = limiter(self.url, rate).wait if rate is not None else None

  def missing_key(self) -> str | None:
    """The first ${NAME} in `headers` that the environment lacks (checked by graders.check_runnable)."""
    return next(iter(http_post.unset_variables(self.headers)), None)

  def grade_one(self, text: str, item: dict, timeout_s: float, trace_id: str | None = None) -> core.GradeResult:
    trace_id = trace_id or new_trace_id()
    sample = {**core.sample_dict(text), 'trace_id': trace_id}
    try:
      payload = json.dumps({'sample': sample, 'item': item, 'trace_id': trace_id}, ensure_ascii=False).encode()
    except (TypeError, ValueError) as e:
      return core.failed(core.ENDPOINT, f'cannot send the item as JSON: {e}', trace_id=trace_id)
    reply = http_post.post(self.url, payload, self.headers, timeout_s, RETRIES, MAX_REPLY_BYTES, BACKOFF_S, self.pace)
    meta: dict[str, Any] = {'latency_s': reply.latency_s, 'attempts': reply.attempts, 'trace_id': trace_id}
    if reply.kind in http_post.RETRIED:
      return core.failed(core.ENDPOINT, f'{reply.detail} ({reply.attempts} attempts)', discard=True, **meta)
    if reply.kind != 'ok':
      return core.failed(core.ENDPOINT, reply.detail, **meta)
    try:
      score = _score(reply.body)
    except ValueError as e:
      return core.failed(core.ENDPOINT, f'{self.url} replied {e}; expected {{"score": <number>}}', **meta)
    if self.pass_threshold is not None:
      meta['passed'] = score >= self.pass_threshold
    return core.GradeResult(score, {}, (), meta)

  def grade_batch(self, samples, items, traces=None):
    traces = traces or [None] * len(samples)
    return [self.grade_one(s, it, 60.0, tr) for s, it, tr in zip(samples, items, traces)]


def _score(body: bytes) -> float:
  """The finite number under "score"; ValueError naming what came instead."""
  text = body.decode('utf-8', 'replace')
  try:
    obj = errors.loads_untrusted(text)
  except ValueError:
    raise ValueError(f'with something that is not JSON: {text[:200]!r}') from None
  if not isinstance(obj, dict) or 'score' not in obj:
    raise ValueError(f'without a "score": {text[:200]}')
  score = obj['score']
  try:
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(float(score)):
      raise OverflowError
  except OverflowError:  # also an integer too large for a float
    raise ValueError(f'with a "score" that is not a finite number: {json.dumps(score)[:100]}') from None
  return float(score)
