"""`score_model` and `label_model`: a judge model reads templated messages and answers with a score or a label.

A judge is any callable `judge(messages: list[dict], sampling_params: dict) -> str`. Two kinds exist:
  * local judges, passed to `graders.build(spec, judges={name: fn})` and selected when the spec's `model` equals
    that name (`inference.local_judges` serves `gguf:...` / `hf:...` models with rftjax's own sampler);
  * an OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`) given by the spec's `base_url`
    (default https://api.openai.com/v1) and `api_key_env` (default OPENAI_API_KEY; unset env means no auth).
Failures: transport/HTTP errors -> model_grader_server (discarded from the loss when the server or the network failed
every attempt); an answer that is not a number in range / not one of the labels -> model_grader_parse.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Callable

from rftjax import errors
from rftjax import http_post
from rftjax.graders import core
from rftjax.graders import templating

Judge = Callable[[list[dict], dict], str]
DEFAULT_BASE_URL = 'https://api.openai.com/v1'
_NUM = r'[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?'


class JudgeDown(core.GradingException):
  """The judge's server or the network failed on every attempt: an outage says nothing about the sample, so the
  result is discarded from the loss (metadata["discard"]), as an `endpoint` grader's is."""

  def __init__(self, message: str):
    super().__init__(core.MODEL_SERVER, message)


MAX_REPLY_BYTES = 1_000_000
BACKOFF_S = 0.5  # hosted APIs rate-limit by the second: the first pause is half of one, then 1 s, 2 s, ...


def http_judge(
  base_url: str,
  api_key_env: str | None = 'OPENAI_API_KEY',
  model: str = '',
  timeout_s: float = 60.0,
  max_retries: int = 2,
) -> Judge:
  """A judge backed by an OpenAI-compatible chat completions endpoint, through `http_post.post` as an `endpoint`
  grader: no redirects (the key would go wherever a 3xx points), Retry-After honoured, each attempt's reply read
  within `timeout_s` and at most MAX_REPLY_BYTES."""
  url = base_url.rstrip('/') + '/chat/completions'

  def judge(messages: list[dict], sampling_params: dict) -> str:
    body = json.dumps({'model': model, 'messages': messages, **_map_sampling(sampling_params)}).encode()
    key = os.environ.get(api_key_env) if api_key_env else None
    headers = {'Authorization': f'Bearer {key}'} if key else {}
    reply = http_post.post(url, body, headers, timeout_s, max_retries, MAX_REPLY_BYTES, BACKOFF_S)
    if reply.kind in http_post.RETRIED:
      raise JudgeDown(f'{reply.detail} ({reply.attempts} attempts)')
    if reply.kind != 'ok':
      raise core.GradingException(core.MODEL_SERVER, reply.detail)
    try:
      message = errors.loads_untrusted(reply.body.decode('utf-8', 'replace'))['choices'][0]['message']
      content, refusal = message.get('content'), message.get('refusal')
    except ValueError as e:
      raise core.GradingException(core.MODEL_SERVER, f'judge at {url} returned invalid JSON: {e}') from None
    except (KeyError, IndexError, TypeError, AttributeError):
      raise core.GradingException(
        core.MODEL_SERVER, f'judge reply has no choices[0].message object: {reply.body[:300].decode(errors="replace")}'
      ) from None
    if refusal:
      raise core.GradingException(core.MODEL_PARSE, f'judge refused: {str(refusal)[:300]}')
    return content if isinstance(content, str) else ''

  return judge


def _map_sampling(params: dict) -> dict:
  out = dict(params or {})
  if 'max_completions_tokens' in out:  # OpenAI's grader field name -> the chat API's
    out['max_completion_tokens'] = out.pop('max_completions_tokens')
  return out


TEXT_PARTS = ('input_text', 'output_text', 'text')


def _text_part(part: dict, where: str) -> Any:
  """A content part's text. OpenAI's judges also read input_image and input_audio parts; these judges (a local
  model, or a chat-completions endpoint sent text) read text only, and a dropped image would be scored without."""
  kind = part.get('type', 'input_text')
  if kind not in TEXT_PARTS:
    raise core.GraderConfigError(
      f'{where}.type: found {json.dumps(kind)[:40]}, expected one of {", ".join(TEXT_PARTS)}: the judge reads text '
      'only, and would score without the image or audio'
    )
  return part.get('text')


def _compile_messages(messages: Any, field: str):
  if not isinstance(messages, list) or not messages:
    raise core.GraderConfigError(
      f'{field}: expected a non-empty list of messages {{role, content}}, found {json.dumps(messages)[:100]}'
    )
  compiled = []
  for k, msg in enumerate(messages):
    where = f'{field}[{k}]'
    if not isinstance(msg, dict) or 'role' not in msg or 'content' not in msg:
      raise core.GraderConfigError(
        f"{where}: expected an object with 'role' and 'content', found {json.dumps(msg)[:100]}"
      )
    if msg['role'] not in ('system', 'developer', 'user', 'assistant'):
      raise core.GraderConfigError(
        f'{where}.role: found {msg["role"]!r}, expected system, developer, user or assistant'
      )
    content = msg['content']
    if isinstance(content, dict):  # {"type": "input_text", "text": ...}
      content = _text_part(content, f'{where}.content')
    elif isinstance(content, list):
      content = ''.join(
        (_text_part(part, f'{where}.content[{j}]') or '') if isinstance(part, dict) else str(part)
        for j, part in enumerate(content)
      )
    compiled.append((msg['role'], templating.compile_template(content, f'{where}.content')))
  return compiled


class _ModelGrader(core.Grader):
  mode = core.MODEL

  def __init__(self, spec: dict[str, Any], name: str, judges: dict[str, Judge] | None = None, where: str | None = None):
    self.spec, self.name = spec, name
    where = where or name  # errors name the field's place in the spec
    self.local_judge = (judges or {}).get(spec['model']) if 'base_url' not in spec else None
    self.messages = _compile_messages(spec.get('input'), f'{where}.input')
    self.model = spec['model']
    self.sampling_params = dict(spec.get('sampling_params') or {})
    self.needs_json = 'output_json' in json.dumps(spec.get('input'))

  def missing_key(self) -> str | None:
    """The `api_key_env` variable this grader's HTTP judge needs and the environment lacks (one the spec names, or
    OpenAI's own API's, which always wants one); None for a local judge or a key that is set."""
    if self.local_judge is not None or ('base_url' not in self.spec and self.model.startswith(('gguf:', 'hf:'))):
      return None  # served by rftjax itself (inference.local_judges)
    env = self.spec.get('api_key_env', 'OPENAI_API_KEY')
    needed = 'api_key_env' in self.spec or 'base_url' not in self.spec
    return env if needed and not os.environ.get(env) else None

  def judge(self, timeout_s: float) -> Judge:
    if self.local_judge is not None:
      return self.local_judge
    return http_judge(
      self.spec.get('base_url', DEFAULT_BASE_URL),
      self.spec.get('api_key_env', 'OPENAI_API_KEY'),
      self.model,
      timeout_s,
      int(self.spec.get('max_retries', 2)),
    )

  def grade_one(self, text: str, item: dict, timeout_s: float) -> core.GradeResult:
    t0 = time.perf_counter()
    sample = core.sample_dict(text, self.needs_json)
    try:
      messages = [{'role': role, 'content': render(sample, item)} for role, render in self.messages]
      answer = self.judge(timeout_s)(messages, self.sampling_params)
      if not isinstance(answer, str):
        raise core.GradingException(core.MODEL_PARSE, f'judge returned {type(answer).__name__}, expected str')
      reward, meta, errs = self.parse(answer)
    except JudgeDown as e:
      return core.failed(e.category, str(e), discard=True, latency_s=time.perf_counter() - t0)
    except core.GradingException as e:
      return core.failed(e.category, str(e), latency_s=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001  (a local judge's bug must not stop the run)
      return core.failed(core.MODEL_SERVER, f'judge raised {type(e).__name__}: {e}', latency_s=time.perf_counter() - t0)
    meta['latency_s'] = time.perf_counter() - t0
    return core.GradeResult(reward, {}, errs, meta)

  def grade_batch(self, samples, items):
    return [self.grade_one(s, it, 60.0) for s, it in zip(samples, items)]

  def parse(self, answer: str) -> tuple[float, dict, tuple[core.GradeError, ...]]:
    """(reward, metadata, errors) of the judge's answer; GradingException when it gives no reward at all."""
    raise NotImplementedError


def _json_field(answer: str, keys: tuple[str, ...]) -> Any:
  text = answer.strip()
  text = re.sub(r'^```(?:json)?\s*|\s*```$', '', text)
  if text.startswith('{'):
    try:
      obj = errors.loads_untrusted(text)
    except ValueError:
      return None
    for k in keys:
      if isinstance(obj, dict) and k in obj:
        return obj[k]
  return None


class ScoreModel(_ModelGrader):
  """The judge's number, clamped into `range` (default [0, 1]); metadata["passed"] against pass_threshold."""

  type = 'score_model'

  def __init__(self, spec, name, judges=None, where=None):
    super().__init__(spec, name, judges, where)
    self.lo, self.hi = (float(x) for x in spec.get('range', (0.0, 1.0)))
    self.pass_threshold = spec.get('pass_threshold')

  def parse(self, answer):
    value = _json_field(answer, ('result', 'score'))
    if value is None:
      stripped = answer.strip().strip('*').strip()
      if re.fullmatch(_NUM, stripped):
        value = stripped
      else:
        keyed = re.findall(rf'(?:score|result|rating)\W{{0,3}}\s*({_NUM})', answer, re.IGNORECASE)
        numbers = re.findall(_NUM, answer)
        value = keyed[-1] if keyed else (numbers[0] if len(numbers) == 1 else None)
    try:
      score = float(value)
      if score != score or score in (float('inf'), float('-inf')):
        raise ValueError
    except (TypeError, ValueError):
      raise core.GradingException(
        core.MODEL_PARSE, f'judge answer is not a score in [{self.lo:g}, {self.hi:g}]: {answer[:300]!r}'
      ) from None
    meta: dict[str, Any] = {'raw_score': score}
    clamped = min(max(score, self.lo), self.hi)
    errs = ()
    if clamped != score:  # a judge on another scale ("7" for [0, 1]), or a number from prose: counted, not silent
      meta['clamped'] = True
      errs = (core.GradeError(core.MODEL_PARSE, f'judge answered {score:g}, outside the range [{self.lo:g}, '
                              f'{self.hi:g}], scored {clamped:g}: {answer[:200]!r}'),)  # fmt: skip
    if self.pass_threshold is not None:
      meta['passed'] = clamped >= self.pass_threshold
    return clamped, meta, errs


class LabelModel(_ModelGrader):
  """1.0 if the judge's label is in `passing_labels`, 0.0 if it is another of `labels`."""

  type = 'label_model'

  def __init__(self, spec, name, judges=None, where=None):
    super().__init__(spec, name, judges, where)
    self.labels = list(spec['labels'])
    self.passing = set(spec['passing_labels'])

  def parse(self, answer):
    label = _json_field(answer, ('result', 'label'))
    if not isinstance(label, str):
      label = _bare(answer)
    if label not in self.labels:
      # a label in prose is not a verdict ("Not correct." names `correct`): only the answer's last line, alone or
      # after "label:" / "verdict:" / "answer:" / "result:" / "grade:"
      last = (answer.strip().splitlines() or [''])[-1]
      keyed = re.fullmatch(r'\W*(?:final\s+)?(?:label|verdict|answer|result|grade)\W*[:=：＝]\s*(.+)', last, re.I)
      candidates = {label.lower(), _bare(keyed.group(1) if keyed else last).lower()}
      folded = [lb for lb in self.labels if lb.lower() in candidates]
      if len(folded) != 1:
        raise core.GradingException(
          core.MODEL_PARSE, f'judge answer is not one of the labels {self.labels}: {answer[:300]!r}'
        )
      label = folded[0]
    return (1.0 if label in self.passing else 0.0), {'label': label}, ()


_QUOTES = '*"\'`“”‘’«»「」『』【】'  # emphasis and quotes of any script's typography


def _bare(text: str) -> str:
  """`text` without surrounding space, quotes, emphasis and a final full stop ('.', CJK's '。' too)."""
  return text.strip().strip(_QUOTES).strip().rstrip('.。．').strip().strip(_QUOTES).strip()
