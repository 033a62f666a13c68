"""Chat templates: OpenAI-style `messages` (and function `tools`) -> the prompt text a model was trained on.

Two kinds, one entry point each:
  JinjaTemplate.render   the model's own Jinja template, as shipped in a GGUF (`tokenizer.chat_template`) or an HF
                         folder (`chat_template.jinja`, `chat_templates/*.jinja`, or `tokenizer_config.json`'s
                         "chat_template"). Rendered the way transformers' `apply_chat_template` does
                         (transformers/utils/chat_template_utils.py): jinja2's ImmutableSandboxedEnvironment with
                         trim_blocks, lstrip_blocks and loop controls; a `tojson` filter that is plain `json.dumps`
                         (ensure_ascii=False); globals `raise_exception` and `strftime_now`; variables `messages`,
                         `tools`, `documents`, `add_generation_prompt`, the tokenizer's special tokens (`bos_token`,
                         `eos_token`, ...) and any extra keyword (`enable_thinking`). Templates come from model hubs and
                         are untrusted code: the sandbox is why jinja2 is pinned at 3.1.6 (sandbox escape fixes).
  render_named           rftjax's hand-written templates `gemma`, `chatml`, `qwen3`, `llama3`, `plain`.

Messages (`check_messages`): roles system, user, assistant, tool, with string content. An assistant message may
carry `tool_calls` ([{"type": "function", "id"?, "function": {"name", "arguments": object or JSON string}}]) instead
of, or beside, its content; a tool message may name `tool_call_id` and `name`. Keys whose value is None are dropped
first, as transformers does (OpenAI sends `"content": null` beside tool calls).

Tools (`chat_completions_tools`): rftjax data rows carry Responses-style function tools
`{"type": "function", "name", "description", "parameters"}`; HF templates read the chat-completions shape
`{"type": "function", "function": {"name", "description", "parameters"}}`. Both shapes are accepted; the result is
always the latter. Host-side only.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
import traceback
from collections.abc import Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import jinja2.utils
import numpy as np

TEMPLATES = ('gemma', 'chatml', 'qwen3', 'llama3', 'plain')
# The token that closes a turn in each template; generation stops on it as well as on EOS.
TURN_END = {'gemma': '<end_of_turn>', 'qwen3': '<|im_end|>', 'chatml': '<|im_end|>', 'llama3': '<|eot_id|>'}
ROLES = ('system', 'user', 'assistant', 'tool')


# ---------------------------------------------------------------------------------------------------------------
# Checking messages and tools.

_CALL_SHAPE = '{"type": "function", "id"?: str, "function": {"name": str, "arguments": object or JSON string}}'


def _check_tool_calls(calls, at: str) -> None:
  if not isinstance(calls, (list, tuple)):
    raise ValueError(f'{at}.tool_calls must be a list of {_CALL_SHAPE}, got {type(calls).__name__}')
  for j, call in enumerate(calls):
    where = f'{at}.tool_calls[{j}]'
    fn = call.get('function') if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or call.get('type', 'function') != 'function':
      raise ValueError(f'{where} must be {_CALL_SHAPE}, got {call!r:.200}')
    if not isinstance(fn.get('name'), str) or not fn['name']:
      raise ValueError(f'{where}.function.name must be a non-empty string, got {fn.get("name")!r:.80}')
    if not isinstance(fn.get('arguments'), (Mapping, str)):
      raise ValueError(
        f'{where}.function.arguments must be an object or a JSON string, got {fn.get("arguments")!r:.80}'
      )
    if not isinstance(call.get('id', ''), str):
      raise ValueError(f'{where}.id must be a string, got {call["id"]!r:.80}')


def check_messages(messages: Sequence[Mapping]) -> list[dict]:
  """Validated shallow copies of `messages` without None-valued keys; ValueError names the first bad one."""
  if not messages:
    raise ValueError('chat: empty messages list')
  out = []
  for i, m in enumerate(messages):
    at = f'messages[{i}]'
    if not isinstance(m, Mapping):
      raise ValueError(f'{at} must be an object with "role" and "content", got {type(m).__name__}')
    m = {k: v for k, v in m.items() if v is not None}
    role, content = m.get('role'), m.get('content')
    if role not in ROLES:
      raise ValueError(f'{at} must be {{"role": {"|".join(ROLES)}, "content": str}}, got role {role!r}: {m!r:.200}')
    if m.get('tool_calls') is not None and role != 'assistant':
      raise ValueError(f'{at}: only assistant messages carry tool_calls; this one is a {role} message')
    if role == 'assistant' and 'tool_calls' in m:
      _check_tool_calls(m['tool_calls'], at)
      if not m['tool_calls'] and content is None:
        raise ValueError(f'{at}: an assistant message needs string content or at least one tool call')
      if content is not None and not isinstance(content, str):
        raise ValueError(f'{at}.content must be a string (or absent beside tool_calls), got {type(content).__name__}')
    elif not isinstance(content, str):
      extra = ' (or tool_calls)' if role == 'assistant' else ''
      raise ValueError(f'{at} must be {{"role": {role!r}, "content": str{extra}}}, got {m!r:.200}')
    if role == 'tool':
      for key in ('tool_call_id', 'name'):
        if not isinstance(m.get(key, ''), str):
          raise ValueError(f'{at}.{key} must be a string, got {m[key]!r:.80}')
    out.append(m)
  return out


def chat_completions_tools(tools: Sequence[Mapping] | None) -> list[dict] | None:
  """Function tools in the chat-completions shape HF templates read; None for no tools (None or [])."""
  if tools is None:
    return None
  if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
    raise ValueError(f'tools must be a list of function tools, got {type(tools).__name__}')
  out = []
  for i, tool in enumerate(tools):
    at = f'tools[{i}]'
    if not isinstance(tool, Mapping) or tool.get('type', 'function') != 'function':
      raise ValueError(
        f'{at}: only function tools can be written into a prompt; expected {{"type": "function", "name": str, '
        f'"description": str, "parameters": {{JSON schema}}}}, got {tool!r:.200}'
      )
    fn = tool['function'] if 'function' in tool else {k: v for k, v in tool.items() if k != 'type'}
    if isinstance(fn, Mapping):  # the OpenAI SDK writes unset optional fields ("parameters", "strict") as null
      fn = {k: v for k, v in fn.items() if v is not None}
    if not isinstance(fn, Mapping) or not isinstance(fn.get('name'), str) or not fn['name']:
      raise ValueError(f'{at}: a function tool needs a non-empty string "name", got {tool!r:.200}')
    if not isinstance(fn.get('parameters', {}), Mapping):
      raise ValueError(f'{at}.parameters must be a JSON schema object, got {fn["parameters"]!r:.80}')
    # The chat-completions shape passes through as given: key order shows in templates' `tool | tojson`.
    if 'function' in tool:
      out.append({'type': 'function', **{k: fn if k == 'function' else v for k, v in tool.items()}})
    else:
      out.append({'type': 'function', 'function': fn})
  return out or None


def uses_tools(messages: Sequence[Mapping], tools: Sequence[Mapping] | None) -> bool:
  """Whether rendering needs a tool-aware template: tools given, a tool result, or an assistant tool call."""
  return bool(tools) or any(m.get('role') == 'tool' or m.get('tool_calls') for m in messages)


# ---------------------------------------------------------------------------------------------------------------
# Named templates (plain Python).


def _hermes_call(call: Mapping) -> str:
  """A tool call as a model writes it in the plain format. String arguments are written verbatim, as Qwen's and
  Hermes' templates do, so what the model produced round-trips unchanged."""
  fn = call['function']
  args = fn['arguments']
  args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
  return f'<tool_call>{{"name": {json.dumps(fn["name"], ensure_ascii=False)}, "arguments": {args}}}</tool_call>'


def _render_plain(messages: list[dict]) -> str:
  """The last user message, then what followed it: assistant text (plus its tool calls) verbatim, tool results in
  <tool_response> tags. Tools are never listed: a base model has no convention for them (docs/tokenizers.md)."""
  users = [i for i, m in enumerate(messages) if m['role'] == 'user']
  if not users:
    tool = next((i for i, m in enumerate(messages) if m['role'] == 'tool'), None)
    if tool is not None:
      raise ValueError(f'plain template: messages[{tool}] is a tool result, but no user message comes before it')
    raise ValueError('plain template: no user message')
  out = [messages[users[-1]]['content']]
  for i in range(users[-1] + 1, len(messages)):
    m = messages[i]
    if m['role'] == 'assistant':
      out.append(m.get('content', '') + ''.join(_hermes_call(c) for c in m.get('tool_calls', ())))
    elif m['role'] == 'tool':
      out.append(f'<tool_response>{m["content"]}</tool_response>')
    else:
      raise ValueError(
        f'plain template: messages[{i}] is a {m["role"]} message after the last user message; only assistant and '
        'tool messages may follow it'
      )
  return ''.join(out)


# Jinja twins of the named templates, written into exported tokenizer_config.json files (weights.py; what
# transformers / vLLM run) by `jinja_twin`, which adds BOS exactly where rftjax's encode_prompt does; tests check
# both render the same text.
JINJA_TWINS = {
  'gemma': (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] + '\\n\\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + m['content'] | trim"
    " + '<end_of_turn>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
  ),
  'chatml': (
    "{%- for m in messages -%}{%- if loop.first and m['role'] != 'system' and DEFAULT -%}"
    "{{ '<|im_start|>system\\n' + DEFAULT + '<|im_end|>\\n' }}{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
  ),
  'qwen3': (
    "{%- for m in messages -%}{%- set content = m['content'] -%}"
    "{%- if m['role'] == 'assistant' -%}{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + content + '<|im_end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- if not (enable_thinking if enable_thinking is defined else THINKING) -%}{{ '<think>\\n\\n</think>\\n\\n' }}"
    '{%- endif -%}{%- endif -%}'
  ),
  'llama3': (
    "{%- for m in messages -%}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    '{%- endif -%}'
  ),
  # the last user message, then assistant text and Hermes tool calls verbatim, tool results in tags (plain's format)
  'plain': (
    "{%- set ns = namespace(last=0) -%}{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
    '{%- set ns.last = loop.index0 -%}{%- endif -%}{%- endfor -%}'
    "{%- for m in messages[ns.last:] -%}{%- if m['role'] == 'tool' -%}"
    "{{ '<tool_response>' + m['content'] + '</tool_response>' }}{%- else -%}{{ m['content'] or '' }}"
    "{%- for c in m['tool_calls'] or [] -%}{{ '<tool_call>{\"name\": ' + c['function']['name'] | tojson + "
    "', \"arguments\": ' + (c['function']['arguments'] if c['function']['arguments'] is string else "
    "c['function']['arguments'] | tojson) + '}</tool_call>' }}{%- endfor -%}{%- endif -%}{%- endfor -%}"
  ),
}


# What data.py does to an OpenAI row before any template sees it (`developer` is `system`, text parts joined, null
# content ''), in Jinja: an exported template starts with it, so a server given the same row renders the prompt the
# model was trained on. It writes nothing and ends without trimming, so the template's own text starts unchanged.
SERVING_PRELUDE = (
  '{%- set rftjax_ns = namespace(messages=[]) -%}'
  '{%- for rftjax_m in messages -%}'
  "{%- set rftjax_c = rftjax_m['content'] if rftjax_m['content'] is defined and rftjax_m['content'] is not none "
  "else '' -%}"
  "{%- if rftjax_c is not string -%}{%- set rftjax_c = rftjax_c | map(attribute='text') | join('') -%}{%- endif -%}"
  "{%- set rftjax_role = 'system' if rftjax_m['role'] == 'developer' else rftjax_m['role'] -%}"
  '{%- set rftjax_ns.messages = rftjax_ns.messages + [dict(rftjax_m, role=rftjax_role, content=rftjax_c)] -%}'
  '{%- endfor -%}'
  '{%- set messages = rftjax_ns.messages %}'
)


def for_serving(text: str, *, thinking: bool) -> str:
  """Template `text` as an export writes it: SERVING_PRELUDE first, and in a template that reads `enable_thinking`,
  the run's switch as the value when a request gives none (Qwen3's thinks by default; rftjax trained with
  `thinking`, False unless set). A template an export wrote already (a run on an exported folder) gets them once:
  they are taken off first."""
  if text.startswith(SERVING_PRELUDE):
    text = text[len(SERVING_PRELUDE) :]
    text = next((text[len(d) :] for d in map(_thinking_default, (False, True)) if text.startswith(d)), text)
  return SERVING_PRELUDE + (_thinking_default(thinking) + text if 'enable_thinking' in text else text)


def _thinking_default(thinking: bool) -> str:
  """What `for_serving` puts before a template that reads `enable_thinking`."""
  return (
    f'{{%- if enable_thinking is not defined %}}{{%- set enable_thinking = {str(thinking).lower()} %}}{{%- endif %}}'
  )


def jinja_twin(name: str, *, add_bos: bool, default_system: str = '', thinking: bool = False) -> str:
  """The Jinja twin of template `name` as an export writes it: BOS first when the tokenizer adds one
  (apply_chat_template tokenizes without special tokens, so the template must write it), the run's default system
  prompt and thinking switch filled in."""
  template = ('{{ bos_token }}' if add_bos else '') + JINJA_TWINS[name]
  if 'DEFAULT' in template:
    template = template.replace('DEFAULT', json.dumps(default_system or ''))
  return template.replace('THINKING', 'true' if thinking else 'false')


def render_named(
  name: str,
  messages: Sequence[Mapping],
  *,
  tools: Sequence[Mapping] | None = None,
  add_generation_prompt: bool = True,
  default_system: str | None = None,
  thinking: bool = False,
) -> str:
  """Render `messages` with a named template, then the assistant generation prompt. Never the BOS.

  Only `plain` renders tool results and tool calls (and ignores `tools`); the others refuse them.
  `thinking` (qwen3 only): False opens the answer with an empty `<think>\n\n</think>\n\n` block, which is how
  Qwen3's own template turns its reasoning mode off (`enable_thinking=False`); True leaves the model to think first.
  """
  if name not in TEMPLATES:
    raise ValueError(f'unknown chat template {name!r}; expected one of {TEMPLATES}')
  messages = check_messages(messages)
  tools = chat_completions_tools(tools)
  if name == 'plain':
    return _render_plain(messages)
  if uses_tools(messages, tools):
    raise ValueError(
      f"the {name!r} chat template cannot render tools, tool calls or tool results; use the model's own Jinja "
      "template (leave chat_template unset, config.chat_template='', with a tokenizer that ships one) or 'plain'"
    )
  if name == 'gemma':
    # Gemma has no system role: the system text opens the first user turn, then a blank line.
    prefix, turns, skipped = '', messages, 0
    if turns[0]['role'] == 'system':
      prefix, turns, skipped = turns[0]['content'] + '\n\n', turns[1:], 1
    out = []
    for i, m in enumerate(turns):
      if (m['role'] == 'user') != (i % 2 == 0):
        why = ' (a developer message is a system one)' if m['role'] == 'system' else ''
        raise ValueError(
          'gemma template: roles must alternate user/assistant/user/... after at most one system message; '
          f'messages[{i + skipped}] is {m["role"]!r}{why}'
        )
      role = 'model' if m['role'] == 'assistant' else m['role']
      out.append(f'<start_of_turn>{role}\n{prefix if i == 0 else ""}{m["content"].strip()}<end_of_turn>\n')
    body, prompt = ''.join(out), '<start_of_turn>model\n'
  elif name == 'chatml':
    out = []
    if messages[0]['role'] != 'system' and default_system is not None:
      out.append(f'<|im_start|>system\n{default_system}<|im_end|>\n')
    out += [f'<|im_start|>{m["role"]}\n{m["content"]}<|im_end|>\n' for m in messages]
    body, prompt = ''.join(out), '<|im_start|>assistant\n'
  elif name == 'qwen3':  # ChatML with no default system prompt; earlier answers lose their <think> part
    out = []
    for m in messages:
      content = m['content'].split('</think>')[-1].lstrip('\n') if m['role'] == 'assistant' else m['content']
      out.append(f'<|im_start|>{m["role"]}\n{content}<|im_end|>\n')
    body, prompt = ''.join(out), '<|im_start|>assistant\n' + ('' if thinking else '<think>\n\n</think>\n\n')
  else:  # llama3
    out = [f'<|start_header_id|>{m["role"]}<|end_header_id|>\n\n{m["content"].strip()}<|eot_id|>' for m in messages]
    body, prompt = ''.join(out), '<|start_header_id|>assistant<|end_header_id|>\n\n'
  return body + (prompt if add_generation_prompt else '')


_CHATML_DEFAULT_SYSTEM = re.compile(r'<\|im_start\|>system\\n(.*?)<\|im_end\|>', re.S)


def recognise(jinja: str | None) -> tuple[str | None, str | None]:
  """(named template, chatml default system prompt) that a model's Jinja template corresponds to."""
  if not jinja:
    return None, None
  if '<start_of_turn>' in jinja:
    return 'gemma', None
  if '<|start_header_id|>' in jinja:
    return 'llama3', None
  if '<|im_start|>' in jinja and '<think>' in jinja:
    return 'qwen3', None
  if '<|im_start|>' in jinja:
    # SmolLM2 (and Qwen) insert a default system prompt when the conversation has none.
    m = _CHATML_DEFAULT_SYSTEM.search(jinja.replace('\n', '\\n'))
    # Only a literal prompt counts, not one the template assembles (`'...' + var + '...'`, `{{ ... }}`).
    literal = m and not re.search(r"\{\{|\{%|['\"]\s*\+|\+\s*['\"]", m.group(1))
    return 'chatml', (m.group(1).replace('\\n', '\n') if literal else None)
  return None, None


# ---------------------------------------------------------------------------------------------------------------
# The model's own Jinja template.


class _Refused(jinja2.TemplateError):
  """Raised by a template's own `raise_exception(...)`: its message is written for the user."""


def _raise_exception(message):
  raise _Refused(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # jinja2's own filter HTML-escapes <, >, & and quotes; chat templates mean plain JSON (transformers' defaults).
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
  return datetime.datetime.now().strftime(fmt)


def _dict(*args, **kwargs):
  return dict(*args, **kwargs)


# Templates call `dict(...)` and `dict.fromkeys(...)`; the builtin type itself would expose more than that.
_dict.fromkeys = dict.fromkeys


class _Namespace(jinja2.utils.Namespace):
  """`namespace(...)` refusing attribute names that start with `_`, so a template cannot reach Python internals."""

  def __init__(*args, **kwargs):  # no named `self`: `namespace(self=...)` is legal in templates
    attrs = dict(*args[1:], **kwargs)
    for name in attrs:
      _Namespace._check(name)
    jinja2.utils.Namespace.__init__(args[0], attrs)

  def __setitem__(self, name, value):
    _Namespace._check(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check(name):
    if isinstance(name, str) and name.startswith('_'):
      raise jinja2.exceptions.SecurityError(f'chat template: namespace attribute {name!r} starts with "_"')


class _GenerationTag(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}` marks assistant text for transformers' training masks. Prompts need
  no mask, so the body renders as if the tags were absent; the point is that such templates compile."""

  tags = {'generation'}

  def parse(self, parser):
    next(parser.stream)
    return parser.parse_statements(('name:endgeneration',), drop_needle=True)


@functools.cache
def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
  )
  env.filters['tojson'] = _tojson
  env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_dict, namespace=_Namespace)
  return env


@functools.lru_cache(maxsize=16)
def _compile(text: str, source: str) -> jinja2.Template:
  try:
    return _environment().from_string(text)
  except jinja2.TemplateSyntaxError as e:
    raise ValueError(
      f'{source}: the chat template is not valid Jinja: {e.message} (template line {e.lineno})'
    ) from None


def _plain(value, at: str):
  """A copy made of JSON types only: the sandbox does not know which methods of richer objects are dangerous."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, np.generic):
    return _plain(value.item(), at)
  for kind in (bool, str, int, float):  # subclasses (enums, ...) lose their extra methods
    if isinstance(value, kind):
      return kind(value) if kind is not str else str.__str__(value)
  if isinstance(value, Mapping):
    return {_plain(k, at): _plain(v, f'{at}.{k}') for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    items = (_plain(v, f'{at}[{i}]') for i, v in enumerate(value))
    return tuple(items) if isinstance(value, tuple) else list(items)
  raise ValueError(f'{at}: a {type(value).__name__} cannot go into a chat template; expected JSON data')


def _template_line(e: BaseException) -> str:
  """' (template line N)' for the innermost template frame of a rendering error, else ''."""
  lines = [n for frame, n in traceback.walk_tb(e.__traceback__) if frame.f_code.co_filename == '<template>']
  return f' (template line {lines[-1]})' if lines else ''


@dataclasses.dataclass(frozen=True)
class JinjaTemplate:
  """A model's own chat template(s): {name: text}, rendered from `default`, or from `tool_use` when tools are given
  and the model ships one (as transformers picks). `source` says where they came from, for error messages;
  `variables` are the tokenizer's special tokens a template may use (`bos_token`, `eos_token`, ...)."""

  templates: Mapping[str, str]
  source: str
  variables: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def text(self) -> str | None:
    return self.templates.get('default')

  def _pick(self, tools) -> tuple[str, str]:
    """(text, source) of the template that renders a conversation with or without tools."""
    name = 'tool_use' if tools and 'tool_use' in self.templates else 'default'
    if name not in self.templates:
      raise ValueError(
        f'{self.source}: the model names its chat templates {sorted(self.templates)} but none "default", the one '
        'rftjax renders; name one "default" or force a named template (chat_template=)'
      )
    return self.templates[name], (self.source if list(self.templates) == ['default'] else f'{self.source} ({name})')

  def check(self) -> None:
    """Compile now: a syntax error (or no `default` template) is a ValueError naming `source`."""
    _compile(*self._pick(None))
    if 'tool_use' in self.templates:
      _compile(*self._pick(True))

  def render(
    self,
    messages: Sequence[Mapping],
    *,
    tools: Sequence[Mapping] | None = None,
    add_generation_prompt: bool = True,
    **kwargs,
  ) -> str:
    """The template's text for `messages` (and `tools`, in either shape), as `apply_chat_template(...,
    tokenize=False)` renders it, BOS text included if the template writes one. Extra keywords (`enable_thinking`)
    become template variables. A template that refuses the conversation (`raise_exception`) or fails on it is a
    ValueError with its message and `source`."""
    messages = check_messages(messages)
    tools = chat_completions_tools(tools)
    # transformers copies a message's reasoning under the names templates read it by; key order shows in `tojson`.
    for i, m in enumerate(messages):
      reasoning = next((m[k] for k in ('reasoning_content', 'thinking', 'reasoning') if k in m), None)
      if reasoning is not None:
        messages[i] = {'thinking': reasoning, **m, 'reasoning_content': reasoning}
    text, source = self._pick(tools)
    template = _compile(text, source)
    context = dict(
      _plain({**self.variables, **kwargs}, 'template variables'),
      messages=_plain(messages, 'messages'),
      tools=_plain(tools, 'tools'),
      documents=None,
      add_generation_prompt=bool(add_generation_prompt),
    )
    try:
      return template.render(context)
    except _Refused as e:
      raise ValueError(f'{source}: the chat template refuses this conversation: {e.message}') from None
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
      hint = ''
      if isinstance(e, jinja2.UndefinedError) and any('content' not in m for m in messages):
        hint = '; a message without "content" may be the cause (give tool-call messages "content": "")'
      raise ValueError(
        f'{source}: the chat template failed on this conversation{_template_line(e)}: {type(e).__name__}: {e}{hint}'
      ) from None


def templates_from_config(value, source: str) -> dict[str, str]:
  """{name: text} from a `chat_template` config value: a string (the default) or [{"name", "template"}, ...]."""
  if value is None or value == '':
    return {}
  if isinstance(value, str):
    return {'default': value}
  if isinstance(value, (list, tuple)) and all(
    isinstance(t, Mapping) and isinstance(t.get('name'), str) and isinstance(t.get('template'), str) for t in value
  ):
    return {t['name']: t['template'] for t in value}
  raise ValueError(
    f'{source}: "chat_template" must be a string or a list of {{"name": str, "template": str}} objects, '
    f'got {value!r:.120}'
  )
