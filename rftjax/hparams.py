"""OpenAI-style hyperparameters (`n_epochs`, `batch_size`, ...) as a thin layer over rftjax's native config.

  configs/common.py:  hparams.add_openai_fields(c)                  # adds config.openai.*, all off by default
  trainer.train:      config = hparams.apply(config, len(train_examples))

A field the user set (anything but 'auto' / None) always overrides the native field it maps to. With
`config.openai.enabled = True`, the 'auto' fields are filled by the rules below as well; with it False (the default)
they leave the native fields alone. Every resolved value is logged and recorded as JSON in
`config.openai.resolved`. The mapping and the rules are documented in docs/hyperparameters.md; keep them in step.
What the resolved length, batch and temperature do not do in a run is said once, by `warn_about_run`.

  n_epochs                -> total_steps = ceil(n_epochs * n_train / batch_size)
                             auto: clamp(ceil(100 * batch_size / n_train), 1, 10) (at least ~100 steps, <= 10 epochs)
  batch_size              -> batch_size; auto: clamp(n_train / 50, 4, 64) rounded to the nearest power of 2
  learning_rate_multiplier-> optimizer.learning_rate = multiplier * BASE_LR[model]; auto: 1.0
  compute_multiplier      -> num_generations = max(2, round half up(multiplier * num_generations)); auto: 1
  eval_interval           -> eval_interval; auto: max(1, ceil(total_steps / 10))
  eval_samples            -> eval_samples; auto: unchanged
  reasoning_effort        -> sampling.max_new_tokens = round half up(REASONING_EFFORT[effort] x config's); auto: same
  seed                    -> seed (None = the config's)
"""

from __future__ import annotations

import json
import logging
import math

import ml_collections
from ml_collections import config_dict

from rftjax import errors
from rftjax import presets

log = logging.getLogger('rftjax')

# the native key each field decides: set on the command line as well, it is an error (which one did you mean?)
NATIVE = {
  'n_epochs': 'total_steps',
  'batch_size': 'batch_size',
  'learning_rate_multiplier': 'optimizer.learning_rate',
  'compute_multiplier': 'num_generations',
  'eval_interval': 'eval_interval',
  'eval_samples': 'eval_samples',
  'reasoning_effort': 'sampling.max_new_tokens',
  'seed': 'seed',
}
FIELDS = (
  'n_epochs',
  'batch_size',
  'learning_rate_multiplier',
  'compute_multiplier',
  'eval_interval',
  'eval_samples',
  'reasoning_effort',
  'seed',
)
# OpenAI's reasoning_effort as a generation budget: a multiple of the config's sampling.max_new_tokens, which is the
# 'medium' budget (OpenAI's default effort). A config sized for its task keeps its size at 'medium'; 'low' halves
# it (shorter, cheaper rollouts) and 'high' doubles it (room to reason before answering).
REASONING_EFFORT = {'low': 0.5, 'medium': 1.0, 'high': 2.0}

# LoRA learns at about 10x full fine-tuning's rate for RL ("LoRA Without Regret", Thinking Machines 2025).
LORA_FACTOR = 10.0

# Base learning rate per model preset for full fine-tuning with GRPO (AdamW, constant schedule): what
# learning_rate_multiplier=1 means. RL updates are small and noisy; ~1e-6 for 1B-class models is the common choice
# (DeepSeekMath GRPO, TRL's GRPO defaults), a little higher for sub-1B models, lower for larger ones (about
# 1/sqrt(params)). 'tiny' is the random-init CPU demo: 3e-4 is what configs/tiny.py reaches > 0.9 with.
BASE_LR = {
  'tiny': 3e-4,
  'smollm2_135m': 3e-6,
  'gemma3_270m': 3e-6,
  'smollm2_360m': 2e-6,
  'qwen2_5_0_5b': 2e-6,
  'gemma3_1b': 1e-6,
  'llama3_2_1b': 1e-6,
  'qwen2_5_1_5b': 1e-6,
  'smollm2_1_7b': 1e-6,
  'llama3_2_3b': 7e-7,
  'qwen2_5_3b': 7e-7,
  'gemma3_4b': 5e-7,
  'qwen2_5_7b': 5e-7,
  'llama3_1_8b': 5e-7,
  'gemma3_12b': 3e-7,
  'gemma3_27b': 2e-7,
}


def add_openai_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds `config.openai` (call from configs/common.py before the config is locked). Fields take a number, a
  numeric string (`--config.openai.n_epochs=3`), 'auto' or None."""
  o = ml_collections.ConfigDict()
  o.enabled = False  # True: 'auto' fields are resolved by the rules too, not only the fields set by hand
  for name in FIELDS:
    # type object: the same field holds 'auto' and, once overridden, a number
    o[name] = config_dict.FieldReference(None if name == 'seed' else 'auto', field_type=object)
  o.resolved = ''  # written by apply(): JSON of every value it resolved, kept in the run's config.json
  o.suffix = ''  # an OpenAI job's suffix: names the run in reports and the exported model
  o.metadata = '{}'  # an OpenAI job's metadata, as JSON (kept in config.json)
  o.job = ''  # the --openai_job file the run came from, if any
  with config.unlocked():
    config.openai = o
  return config


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def deciding_key(config, native: str) -> str:
  """The key that decided `native` in a resolved config: its OpenAI-style field when one did (in the job file that
  gave it, if one did), else itself."""
  resolved = json.loads(config.get('openai', {}).get('resolved') or '{}')
  field = next((f for f, n in NATIVE.items() if n == native), None)
  if native in resolved and field is not None:
    job = config.openai.get('job')
    return f'method.reinforcement.hyperparameters.{field} in {job}' if job else f'config.openai.{field}'
  return f'config.{native}'


def base_learning_rate(model: str, init: str = '') -> float:
  """BASE_LR[model]; for a preset not in the table (or none: the architecture of the `init` file), 1e-6 *
  sqrt(1.2e9 / num_params) clamped to [1e-7, 1e-5]."""
  if model in BASE_LR:
    return BASE_LR[model]
  if model:
    n = presets.get_config(model).num_params()
  else:
    from rftjax import loader  # a missing file is the one line config.init gives everywhere
    from rftjax import weights  # reads the file's header only

    loader.check_spec('init', init, ('gguf', 'hf'))
    try:
      found = weights.config_from_file(init)
    except (OSError, ValueError) as e:  # an hf:DIR without config.json or weights, not a GGUF file
      raise errors.ConfigError(f'config.init={init!r}: {e}') from None
    if found.name in BASE_LR:  # a file of a preset's architecture (gguf:gemma3-270m is gemma3_270m): its rate
      return BASE_LR[found.name]
    n = found.num_params()
  return min(1e-5, max(1e-7, 1e-6 * math.sqrt(1.2e9 / n)))


def auto_batch_size(n_train: int) -> int:
  x = min(64.0, max(4.0, n_train / 50))
  return int(2 ** round(math.log2(x)))


def auto_n_epochs(n_train: int, batch_size: int) -> int:
  return int(min(10, max(1, math.ceil(100 * batch_size / n_train))))


INT_LIMIT = 2**31 - 1  # batch sizes, intervals, seeds: beyond it a value is a typo (1e20 prompts per step)


def _value(o, name: str, kind):
  """The user's value as `kind` (int/float), or None for 'auto' / None / ''."""
  raw = o.get(name)
  if raw is None or (isinstance(raw, str) and raw.strip().lower() in ('auto', '')):
    return None
  try:
    if isinstance(raw, bool):
      raise ValueError
    value = float(raw)
    if not math.isfinite(value) or (kind is int and not (value == int(value) and abs(value) <= INT_LIMIT)):
      raise ValueError
    value = int(value) if kind is int else value
  except (TypeError, ValueError):
    expected = f'an integer up to {INT_LIMIT}' if kind is int else 'a finite number'
    raise errors.ConfigError(f"config.openai.{name}: expected {expected} or 'auto', got {raw!r}") from None
  return value


def _effort(raw) -> str | None:
  """None for 'auto', and for the API's 'default' (the config's own budget; `report --format=openai` writes it)."""
  if raw is None or (isinstance(raw, str) and raw.strip().lower() in ('auto', 'default', '')):
    return None
  if raw not in REASONING_EFFORT:
    raise errors.ConfigError(
      f"config.openai.reasoning_effort: expected one of {', '.join(REASONING_EFFORT)}, 'default' or 'auto', got {raw!r}"
    )
  return raw


def _positive(name: str, value, minimum=0, strict=True):
  if value is not None and (value <= minimum if strict else value < minimum):
    raise errors.ConfigError(f'config.openai.{name}: must be {">" if strict else ">="} {minimum}, got {value!r}')
  return value


def apply(
  config: ml_collections.ConfigDict, num_train_examples: int, explicit=(), quiet: bool = False
) -> ml_collections.ConfigDict:
  """Returns a copy of `config` with config.openai resolved into native fields (see the module docstring).

  `explicit`: the dotted native keys the user set on the command line. An 'auto' rule never overrides one of them,
  and a field set by hand that decides one of them is an error naming both keys."""
  if 'openai' not in config:
    return config
  if num_train_examples < 1:
    raise errors.ConfigError(f'hparams.apply: num_train_examples must be >= 1, got {num_train_examples}')
  c = config.copy_and_resolve_references()
  o, n = c.openai, int(num_train_examples)
  auto = bool(o.enabled)
  user = {
    'n_epochs': _positive('n_epochs', _value(o, 'n_epochs', float)),
    'batch_size': _positive('batch_size', _value(o, 'batch_size', int)),
    'learning_rate_multiplier': _positive('learning_rate_multiplier', _value(o, 'learning_rate_multiplier', float)),
    'compute_multiplier': _positive('compute_multiplier', _value(o, 'compute_multiplier', float)),
    'eval_interval': _positive('eval_interval', _value(o, 'eval_interval', int)),
    'eval_samples': _positive('eval_samples', _value(o, 'eval_samples', int)),
    'reasoning_effort': _effort(o.get('reasoning_effort')),
    'seed': _positive('seed', _value(o, 'seed', int), strict=False),
  }
  for field, native in NATIVE.items():
    if user[field] is not None and native in explicit:
      raise errors.ConfigError(
        f'config.openai.{field}={o[field]!r} and config.{native}={_get(c, native)!r} both '
        f'decide {native}; give only one of them'
      )
  auto_sets = lambda field: auto and NATIVE[field] not in explicit  # an explicit native key wins over 'auto'
  resolved: dict[str, dict] = {}

  def note(field: str, value, how: str) -> None:
    resolved[field] = {'value': value, 'from': how}
    if not quiet:
      log.info('hparams: %s = %s (%s)', field, value, how)

  with c.ignore_type():
    if user['batch_size'] is not None:
      c.batch_size = user['batch_size']
      note('batch_size', c.batch_size, f'openai.batch_size={user["batch_size"]}')
    elif auto_sets('batch_size'):
      c.batch_size = auto_batch_size(n)
      note('batch_size', c.batch_size, f'auto: clamp({n} / 50, 4, 64) rounded to a power of 2')

    epochs, how = user['n_epochs'], f'openai.n_epochs={user["n_epochs"]}'
    if epochs is None and auto_sets('n_epochs'):
      epochs, how = auto_n_epochs(n, c.batch_size), f'auto: clamp(ceil(100 * {c.batch_size} / {n}), 1, 10)'
    if epochs is not None:
      c.total_steps = int(math.ceil(epochs * n / c.batch_size))
      note(
        'total_steps',
        c.total_steps,
        f'ceil(n_epochs {epochs:g} x {n} examples / batch_size {c.batch_size}); n_epochs {how}',
      )

    mult = user['learning_rate_multiplier']
    if mult is not None or auto_sets('learning_rate_multiplier'):
      m = 1.0 if mult is None else mult
      base = base_learning_rate(c.model, c.get('init', '')) * (LORA_FACTOR if c.get('lora', {}).get('rank') else 1)
      c.optimizer.learning_rate = float(m * base)
      note(
        'optimizer.learning_rate',
        c.optimizer.learning_rate,
        f'{"auto: " if mult is None else ""}multiplier {m:g} x base {base:g} for model {c.model or c.init}',
      )

    mult = user['compute_multiplier']
    if mult is not None:
      g = max(2, int(math.floor(mult * c.num_generations + 0.5)))
      note(
        'num_generations',
        g,
        f'max(2, round half up(compute_multiplier {mult:g} x num_generations {c.num_generations}))',
      )
      c.num_generations = g

    if user['eval_interval'] is not None:
      c.eval_interval = user['eval_interval']
      note('eval_interval', c.eval_interval, f'openai.eval_interval={user["eval_interval"]}')
    elif auto_sets('eval_interval'):
      c.eval_interval = max(1, math.ceil(c.total_steps / 10))
      note('eval_interval', c.eval_interval, f'auto: max(1, ceil(total_steps {c.total_steps} / 10))')

    if user['eval_samples'] is not None:
      c.eval_samples = user['eval_samples']
      note('eval_samples', c.eval_samples, f'openai.eval_samples={user["eval_samples"]}')
      if c.eval_samples > 1 and not c.eval_temperature and 'eval_temperature' not in explicit:
        # k greedy completions of one prompt are one completion k times: sample them as the rollouts are
        c.eval_temperature = c.sampling.temperature
        note('eval_temperature', c.eval_temperature, f'eval_samples {c.eval_samples} > 1: sampling.temperature')

    effort = user['reasoning_effort']
    if effort is not None:
      budget = max(1, math.floor(REASONING_EFFORT[effort] * c.sampling.max_new_tokens + 0.5))  # half up
      note('sampling.max_new_tokens', budget, f'reasoning_effort {effort}: {REASONING_EFFORT[effort]:g} x '
           f'{c.sampling.max_new_tokens}')  # fmt: skip
      c.sampling.max_new_tokens = budget

    if user['seed'] is not None:
      c.seed = user['seed']
      note('seed', c.seed, f'openai.seed={user["seed"]}')

    c.openai.resolved = json.dumps(resolved)
  return c


def greedy(config, temperature_key: str) -> str | None:
  """The setting ('<temperature_key>=0' or 'sampling.top_k=1', which validation samples with too) that makes
  sampling at `temperature_key` greedy, or None."""
  if _get(config, temperature_key) == 0:
    return f'{temperature_key}=0'
  return 'sampling.top_k=1' if config.sampling.top_k == 1 else None  # only the likeliest token is left


def passes(config, num_train: int) -> str:
  """'the run draws 3200 prompts (total_steps=200 x batch_size=16): 107 passes over the 30 training examples'."""
  draws = int(config.total_steps) * int(config.batch_size)
  return (f'the run draws {draws} prompts (total_steps={config.total_steps} x batch_size={config.batch_size}): '
          f'{draws / max(num_train, 1):.3g} passes over the {num_train} training examples')  # fmt: skip


def warn_about_run(config, num_train: int) -> None:
  """How many passes over the data the run makes, and what an epoch count, a warm-up, a batch larger than the data
  or greedy rollouts do not do in this run, said once its length is known."""
  if int(config.batch_size) > num_train:
    log.warning(
      'batch_size=%d is more than the %d training examples: every batch holds some prompts twice or more (each '
      'already gets num_generations=%d completions); a batch_size of at most %d draws each prompt once a batch',
      config.batch_size, num_train, config.num_generations, num_train,
    )  # fmt: skip
  greedy_key = greedy(config, 'sampling.temperature')
  if greedy_key and config.max_episode_steps == 1:
    log.warning(
      '%s: greedy decoding gives the num_generations=%d completions of a prompt the same tokens, so every group has '
      'one reward and no advantage; set sampling.temperature above 0 (1.0 is usual for GRPO) and sampling.top_k to 0 '
      'or above 1',
      greedy_key, config.num_generations,
    )  # fmt: skip
  total, warmup = int(config.total_steps), int(config.optimizer.warmup_steps)
  key = deciding_key(config, 'total_steps')
  if warmup > total and key != 'config.total_steps':  # an epoch count decided the length: the user set no steps
    log.warning(
      'optimizer.warmup_steps=%d is more than total_steps=%d (%s): the learning rate reaches at most %.3g of '
      'optimizer.learning_rate=%g; lower optimizer.warmup_steps',
      warmup, total, key, total / warmup, config.optimizer.learning_rate,
    )  # fmt: skip
  if config.grpo.dynamic_sampling and key != 'config.total_steps':
    log.warning(
      '%s counts GRPO steps of batch_size=%d prompts, but grpo.dynamic_sampling may draw up to %d batches a step '
      '(1 + grpo.max_resample_rounds): the run may pass over the data up to that many times more',
      key, config.batch_size, 1 + int(config.grpo.max_resample_rounds),
    )  # fmt: skip
