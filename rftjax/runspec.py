"""A run config, checked once and translated into the frozen description the training loop runs from.

  config = runspec.resolve(config, len(train_examples))  # OpenAI-style fields applied, then `check`
  spec = runspec.build(config, tokenizer)                 # RunSpec: model, loss and step, samplers, rollout options

`check` is every test a config value must pass: types, ranges, choices, divisibility by the mesh and the hosts,
the files `init` and `tokenizer` name. It runs before anything slow (no model is loaded, nothing is written), and
each failure is one `ConfigError` naming the `config.` key, what was found and what was expected. The trainer reads
the learning algorithm from the `RunSpec` only; `plan` runs the same checks for a slice it does not run on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax

from rftjax import cli
from rftjax import episodes as episodes_lib
from rftjax import errors
from rftjax import graders
from rftjax import grpo
from rftjax import hparams
from rftjax import loader
from rftjax import lora as lora_lib
from rftjax import model as model_lib
from rftjax import presets
from rftjax import response_format
from rftjax import rollout
from rftjax import sampler as sampler_lib
from rftjax import sharding
from rftjax import tokenizer as tokenizer_lib
from rftjax import tools as tools_lib
from rftjax import train_step

log = logging.getLogger('rftjax')

DTYPES = ('float32', 'bfloat16')
SCHEDULES = ('constant', 'cosine')


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
  """Multi-turn episodes with tools (config.max_episode_steps > 1), docs/tools.md."""

  max_steps: int  # model turns
  tool_tokens: int  # width of one tool turn
  tools: tuple  # tools.ToolSpec
  timeout_s: float
  max_error_share: float = 0.5  # config.tools_max_error_share


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What the loop runs: every field derived from the config once, by `build`."""

  model: model_lib.TransformerConfig
  step: train_step.StepConfig  # loss, temperature, dtypes, remat, microbatches, mu
  rollout: rollout.RolloutConfig  # G, prompts per host, advantages, overlong shaping, dynamic sampling
  train_sampler: sampler_lib.Sampler
  eval_sampler: sampler_lib.Sampler
  uses_reference: bool  # beta > 0: reference logprobs are part of the loss
  total_steps: int
  eval_interval: int
  eval_samples: int  # completions per validation prompt
  eval_batch_size: int
  episodes: EpisodeSpec | None = None  # None: one completion per row


# ---- checks ----------------------------------------------------------------------------------------------------
def _get(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _fail(key: str, found, expected: str):
  raise errors.ConfigError(f'config.{key}: expected {expected}, found {found!r}')


def _int(config, key: str, minimum: int, why: str = '', maximum: int = hparams.INT_LIMIT) -> int:
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    _fail(key, value, f'an integer >= {minimum}{why}')
  if value > maximum:  # a typo (batch_size=10**20 ran out of memory minutes later), as for OpenAI fields
    _fail(key, value, f'an integer from {minimum} to {maximum}{why}')
  return value


def _num(config, key: str, low: float | None = None, high: float | None = None, *, open_low=False, why=''):
  value = _get(config, key)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if ok and low is not None:
    ok = value > low if open_low else value >= low
  if ok and high is not None:
    ok = value <= high
  if not ok:
    bounds = [f'{">" if open_low else ">="} {low:g}' if low is not None else '', f'<= {high:g}' if high else '']
    _fail(key, value, ' '.join(['a finite number', ' and '.join(b for b in bounds if b)]).strip() + why)
  return float(value)


def _choice(config, key: str, choices) -> str:
  value = _get(config, key)
  if value not in choices:
    hint = errors.did_you_mean(value, choices) if isinstance(value, str) else ''
    raise errors.ConfigError(f'config.{key}: expected one of {", ".join(map(repr, choices))}, found {value!r}{hint}')
  return value


def _bool(config, key: str) -> bool:
  value = _get(config, key)
  if not isinstance(value, bool):
    _fail(key, value, 'True or False')
  return value


def check(config, *, devices: int | None = None, processes: int | None = None, inputs: bool = True) -> None:
  """Raises ConfigError for the first unusable value. `devices` / `processes` default to this machine's;
  `inputs=False` skips what names the user's files (init, tokenizer, data, grader): planning for another machine."""
  devices = jax.device_count() if devices is None else devices
  processes = jax.process_count() if processes is None else processes
  if config.get('model') and config.model not in presets.PRESETS:
    _choice(config, 'model', tuple(sorted(presets.PRESETS)))
  if not config.get('model') and not config.get('init'):
    _fail('model', config.get('model'), 'a preset name when config.init is empty (random weights)')
  if inputs and config.get('init'):
    loader.check_spec('init', config.init, ('gguf', 'hf'))
    from rftjax import weights  # reads the file's header only

    try:
      weights.config_from_file(config.init, config.get('model') or None)
    except weights.ArchitectureMismatch as e:
      raise errors.ConfigError(f'config.model={config.model!r}: {e}') from None
    except (OSError, ValueError) as e:  # an hf:DIR without config.json (a PEFT adapter's), not a GGUF file
      raise errors.ConfigError(f'config.init={config.init!r}: {e}') from None
  if inputs and config.get('tokenizer'):
    loader.check_spec('tokenizer', config.tokenizer, ('sp', 'gguf', 'hf'))
  if inputs and not config.get('tokenizer') and not config.get('init'):
    _fail('tokenizer', config.get('tokenizer'), 'a tokenizer (sp:PATH, gguf:PATH, hf:DIR) when config.init is empty')
  if config.get('chat_template'):
    _choice(config, 'chat_template', tokenizer_lib.TEMPLATES)
  _bool(config, 'thinking')
  if _int(config, 'lora.rank', 0, ' (0 = full fine-tuning)'):
    _num(config, 'lora.alpha', 0, open_low=True)
    targets = config.lora.targets
    if isinstance(targets, str) or not targets or any(t not in lora_lib.LINEARS for t in targets):
      _fail('lora.targets', targets, f'a non-empty tuple of names from {", ".join(lora_lib.LINEARS)}')
    if not config.get('init'):
      _fail(
        'init',
        config.get('init'),
        'pretrained weights (gguf:PATH, gguf:NAME or hf:DIR) when config.lora.rank '
        '> 0: adapters train on a frozen base, which random weights are not',
      )
  for key in ('data.train', 'data.valid') if inputs else ():
    if not _get(config, key):
      _fail(key, _get(config, key), 'the path of a JSONL file')
  _int(config, 'data.max_prompt_len', 1)
  if config.data.get('skip_long_prompts') is not None:
    _bool(config, 'data.skip_long_prompts')
  _int(config, 'data.valid_limit', 0, ' (0 = every validation example)')
  if inputs:
    response_format.load(config.get('response_format'))
  if inputs and config.get('grader') in (None, ''):
    _fail('grader', config.get('grader'), 'a grader dict or the path of a grader JSON file')
  _int(config, 'seed', 0, ' (a JAX key holds 32 bits: larger seeds repeat)', maximum=cli.MAX_SEED)
  _int(config, 'total_steps', 0)
  batch = _int(config, 'batch_size', 1)
  g = _int(config, 'num_generations', 2, ' (GRPO compares the completions of one prompt)')

  _num(config, 'sampling.temperature', 0, why=' (0 = greedy)')
  _num(config, 'sampling.top_p', 0, 1, open_low=True)
  _int(config, 'sampling.top_k', 0, ' (0 = off)')
  for key in ('sampling.temperature', 'eval_temperature'):
    if 0 < (_get(config, key) or 0) < sampler_lib.MIN_TEMPERATURE:
      _fail(key, _get(config, key), f'0 (greedy) or a number >= {sampler_lib.MIN_TEMPERATURE:g}')
  new_tokens = _int(config, 'sampling.max_new_tokens', 1)
  if config.sampling.cache_dtype:
    _choice(config, 'sampling.cache_dtype', DTYPES)
  if isinstance(config.sampling.stop, str) or not all(isinstance(s, str) and s for s in config.sampling.stop):
    _fail('sampling.stop', config.sampling.stop, 'a tuple of non-empty strings')
  steps = _int(config, 'max_episode_steps', 1, ' (1 = one completion per prompt)')
  _int(config, 'sampling.tool_tokens', 8)
  _num(config, 'tool_timeout_s', 0, open_low=True)
  _num(config, 'tools_max_error_share', 0, 1)
  _choice(config, 'tool_server', ('', 'example'))
  if inputs and tools_lib.load_tools(config.get('tools')) and steps < 2:
    _fail('max_episode_steps', steps, '>= 2 when config.tools is set (a tool output needs a turn to be read in)')

  _num(config, 'grpo.beta', 0, why=' (0 = no KL term)')
  _choice(config, 'grpo.kl_estimator', grpo.KL_ESTIMATORS)
  _num(config, 'grpo.epsilon', 0, open_low=True)
  _num(config, 'grpo.epsilon_high', 0, why=' (0 = the same as grpo.epsilon)')
  _int(config, 'grpo.num_iterations', 1)
  advantage = _choice(config, 'grpo.advantage', grpo.ADVANTAGE_METHODS)
  _choice(config, 'grpo.scale_rewards', grpo.ADVANTAGE_SCALES)
  _choice(config, 'grpo.loss_aggregation', grpo.AGGREGATIONS)
  _choice(config, 'grpo.importance_level', grpo.IMPORTANCE_LEVELS)
  if config.grpo.dual_clip and _num(config, 'grpo.dual_clip') <= 1:
    _fail('grpo.dual_clip', config.grpo.dual_clip, '0 (off) or a number > 1')
  _num(config, 'grpo.tis_cap', 0, why=' (0 = off)')
  _num(config, 'grpo.entropy_coef')
  _bool(config, 'grpo.dynamic_sampling')
  _int(config, 'grpo.max_resample_rounds', 0)
  _bool(config, 'grpo.mask_truncated')
  overlong = _int(config, 'grpo.overlong_buffer', 0, ' (0 = off)')
  if overlong >= new_tokens:
    _fail('grpo.overlong_buffer', overlong, f'fewer tokens than config.sampling.max_new_tokens={new_tokens}')
  _num(config, 'grpo.overlong_penalty', 0)
  if advantage == 'gdpo' and overlong:
    _fail('grpo.overlong_buffer', overlong, '0 with grpo.advantage=gdpo (the penalty is not a sub-grader)')
  grader = config.get('grader')
  if advantage == 'gdpo' and (inputs or (grader and not isinstance(grader, str))):  # plan reads no file, but a dict
    gdpo_weights(config)

  _num(config, 'optimizer.learning_rate', 0, open_low=True)
  _int(config, 'optimizer.warmup_steps', 0)
  _choice(config, 'optimizer.schedule', SCHEDULES)
  for key in ('optimizer.b1', 'optimizer.b2'):  # 1: Adam's bias correction divides by 1 - b ** t = 0
    if _num(config, key, 0, 1) == 1:
      _fail(key, _get(config, key), 'a finite number >= 0 and < 1')
  _num(config, 'optimizer.weight_decay', 0)
  _num(config, 'optimizer.max_grad_norm', 0, open_low=True)
  if config.optimizer.get('mu_dtype'):
    _choice(config, 'optimizer.mu_dtype', DTYPES)

  _int(config, 'eval_interval', 1)
  _num(config, 'eval_temperature', 0, why=' (0 = greedy)')
  _int(config, 'eval_samples', 1)
  eval_greedy = hparams.greedy(config, 'eval_temperature')
  if config.eval_samples > 1 and eval_greedy:
    log.warning(
      'eval_samples=%d with %s: greedy decoding gives each validation prompt the same completion %d times; set '
      'config.eval_temperature above 0 (and sampling.top_k to 0 or above 1) for k different samples',
      config.eval_samples, eval_greedy, config.eval_samples,
    )  # fmt: skip
  _int(config, 'eval_batch_size', 1)
  _int(config, 'checkpoint.keep_best', 0)
  _bool(config, 'checkpoint.async_save')
  _int(config, 'grading.num_workers', 0, ' (0 = one per CPU core)')
  _num(config, 'grading.timeout_s', 0, open_low=True)
  _num(config, 'grading.max_error_share', 0, 1)
  _num(config, 'grading.step_budget_s', 0, why=' (0 = no cap)')
  _int(config, 'grading.memory_mb', graders.pool.MIN_MEMORY_MB, ' (MB of address space for each grader worker)')
  _int(config, 'grading.model_threads', 1)
  _bool(config, 'grading.allow_unsandboxed')
  _bool(config, 'guard.enabled')
  _bool(config, 'guard.stop')
  _int(config, 'guard.patience', 1, ' (evaluations in a row)')
  _int(config, 'guard.step_patience', 1, ' (training steps in a row)')
  _int(config, 'guard.no_signal_steps', 0, ' (training steps in a row; 0 = off)')
  _num(config, 'guard.min_delta', 0)
  _num(config, 'guard.sigmas', 0, why=' (0 = min_delta alone)')
  _num(config, 'guard.gap', 0, why=' (0 = off)')
  _num(config, 'guard.entropy_low', 0, 1, why=' (0 = off)')
  _num(config, 'guard.solved_reward')
  if config.guard.entropy_high and _num(config, 'guard.entropy_high', 0) <= 1:
    _fail('guard.entropy_high', config.guard.entropy_high, '0 (off) or a number > 1')
  _num(config, 'guard.truncated_frac', 0, 1, why=' (0 = off)')
  _choice(config, 'compute_dtype', DTYPES)
  _choice(config, 'param_dtype', DTYPES)
  _bool(config, 'remat')
  micro = _int(config, 'train_microbatches', 1)
  _num(config, 'sync_interval_s', 0, open_low=True)

  sizes = sharding.resolve_mesh_shape(config.mesh, devices)
  shards = sizes['data'] * sizes['fsdp']
  rows = batch * g
  by = functools.partial(hparams.deciding_key, config)  # an OpenAI job's field when one decided the value
  if rows % shards:
    raise errors.ConfigError(
      f'{by("batch_size")} x {by("num_generations")} = {batch} x {g} = {rows} rows: expected '
      f'a multiple of the mesh data x fsdp = {shards}, which splits them'
    )
  if rows % (micro * shards):
    raise errors.ConfigError(
      f'config.train_microbatches={micro}: {rows} rows do not split into {micro} '
      f'microbatches that data x fsdp = {shards} divides'
    )
  if batch % processes:
    raise errors.ConfigError(
      f'{by("batch_size")}={batch}: expected a multiple of the {processes} processes '
      '(each host samples and grades its own prompts)'
    )


def grader_at(config, explicit=()) -> str | None:
  """Where the run's grader was written: `method.reinforcement.grader` when an OpenAI job file gave it (errors name
  its fields by their path there), else None (`grader`)."""
  from_job = config.get('openai') and config.openai.get('job') and 'grader' not in set(explicit)
  return 'method.reinforcement.grader' if from_job else None


def check_grader(config, examples, explicit=()) -> None:
  """The run's grader (`resolve` put its content in config.grader) against its data, before anything slow: every
  field, user code this machine cannot sandbox, every `{{item...}}` path on every line; a job file's grader is named
  by its path there (trainer and preflight alike)."""
  at = grader_at(config, explicit)
  graders.check_runnable(graders.build(config.grader, where=at), config.grading.allow_unsandboxed)
  graders.check_items(config.grader, [(ex.source, ex.item) for ex in examples], at)
  graders.say_if_ignoring_sample(config.grader, at)


def encode(config, examples, tok, fmt, key: str) -> tuple[list, list[list[int]]]:
  """(examples, prompt ids) of a data split `key` names, as the run trains on them: its prompts longer than
  data.max_prompt_len an error, or left out with `data.skip_long_prompts` (data.encode_prompts, data.fitting)."""
  from rftjax import data as data_lib

  skip = bool(config.data.get('skip_long_prompts'))
  return data_lib.fitting(
    examples, data_lib.encode_prompts(examples, tok, config.data.max_prompt_len, fmt, skip_long=skip), key
  )


def gdpo_weights(config) -> dict[str, float]:
  """{sub-grader: weight} of the run's multi grader, for grpo.advantage=gdpo; ConfigError when it has none."""
  grader = graders.build(graders.load(config.grader))
  weights = grader.linear_weights() if isinstance(grader, graders.spec.Multi) else None
  if weights is None:
    found = (
      f'calculate_output {grader.spec["calculate_output"]!r}' if grader.type == 'multi' else f'a {grader.type} grader'
    )
    raise errors.ConfigError(
      "config.grpo.advantage='gdpo': expected a multi grader whose calculate_output is a weighted sum of its "
      f'sub-graders (e.g. 0.7 * a + 0.3 * b), found {found}'
    )
  return weights


def resolve(config, num_train_examples: int, explicit=(), quiet: bool = False):
  """A copy of `config` with the OpenAI-style fields applied (hparams.apply; `explicit`: the keys set on the command
  line, which win), checked, and the grader's content in `grader` (its file, if any, in `grader_file`), so that the
  run's config.json keeps what the run was graded with. `quiet`: nothing logged (a first pass, to check the keys,
  before the number of prompts that train is known: `resolve_kept`)."""
  config = hparams.apply(config, num_train_examples, explicit, quiet=quiet).copy_and_resolve_references()
  check(config)
  if not quiet:
    hparams.warn_about_run(config, num_train_examples)
  if 'grpo.scale_rewards' in explicit and config.grpo.advantage != 'grpo' and not quiet:
    log.warning(
      'grpo.scale_rewards=%s is ignored with grpo.advantage=%s, which has its own scaling (docs/grpo.md); use '
      "grpo.advantage='grpo' for that scale",
      config.grpo.scale_rewards,
      config.grpo.advantage,
    )
  spec = graders.load(config.grader)
  with config.unlocked(), config.ignore_type():
    if isinstance(config.grader, str):
      config.grader_file = config.grader
    config.grader = spec
    config.response_format = response_format.load(config.get('response_format'))  # its content, like the grader
  return config


def skips_prompts(config) -> bool:
  """Whether prompts too long are left out (data.skip_long_prompts): then the training examples that count for the
  OpenAI-style fields are known only after encoding, and `resolve` runs first `quiet`, then again (`resolve_kept`)."""
  return bool(config.data.get('skip_long_prompts'))


def resolve_kept(config, num_kept: int, explicit, tok):
  """(config, spec) resolved again on the `num_kept` training prompts that are not too long (`n_epochs` counts
  passes over the data that trains, the auto batch size its size); with the log lines the first pass left out."""
  config = resolve(config, num_kept, explicit)
  return config, build(config, tok)


# ---- the run description ---------------------------------------------------------------------------------------
def build(config, tok: tokenizer_lib.Tokenizer) -> RunSpec:
  """The RunSpec of a checked config (see `resolve`); `tok` supplies stop and pad ids and the tiny model's vocab."""
  cfg = loader.model_config(config, tok)
  if cfg.lora and cfg.lora.rank > cfg.d_model:  # every adapted product has d_model on one side: a rank past it adds
    _fail('lora.rank', cfg.lora.rank, f"an integer from 1 to {cfg.name}'s d_model, {cfg.d_model}")  # only memory
  s, o = config.sampling, config.grpo
  try:
    stop_ids, stop_seqs = sampler_lib.stop_tokens(tok, tuple(s.stop))
  except ValueError as e:
    raise errors.ConfigError(f'config.sampling.stop: {e}') from None
  steps = config.max_episode_steps
  if steps > 1:  # the tool turn's frame, checked before the model loads (it is first needed at the first call)
    try:
      fits = episodes_lib.max_calls(tok, s.tool_tokens)
    except ValueError as e:
      raise errors.ConfigError(f'config.max_episode_steps={steps} needs tool turns, and {e}') from None
    if not fits:
      need = episodes_lib.frame_tokens(tok, 1) + 1
      raise errors.ConfigError(
        f'config.sampling.tool_tokens={s.tool_tokens} cannot hold the chat template around one tool output; '
        f'expected at least {need} (the template takes {need - 1} tokens around each turn of outputs)'
      )
  # an episode's completion is its whole transcript after the prompt: length limits count every token of it
  width = episodes_lib.completion_width(s.max_new_tokens, steps, s.tool_tokens) if steps > 1 else s.max_new_tokens
  loss = grpo.LossConfig(
    epsilon=o.epsilon,
    epsilon_high=o.epsilon_high or None,
    beta=o.beta,
    kl_estimator=o.kl_estimator,
    aggregation=o.loss_aggregation,
    max_tokens=width,
    importance_level=o.importance_level,
    dual_clip=o.dual_clip or None,
    tis_cap=o.tis_cap or None,
    entropy_coef=o.entropy_coef,
  )
  step = train_step.StepConfig(
    model=cfg,
    loss=loss,
    temperature=s.temperature,
    compute_dtype=config.compute_dtype,
    remat=config.remat,
    microbatches=config.train_microbatches,
    num_iterations=o.num_iterations,
  )
  rollouts = rollout.RolloutConfig(
    num_generations=config.num_generations,
    prompts=config.batch_size // jax.process_count(),
    max_new_tokens=width,
    advantage=o.advantage,
    scale_rewards=o.scale_rewards if o.advantage == 'grpo' else None,
    overlong_buffer=o.overlong_buffer,
    overlong_penalty=o.overlong_penalty,
    mask_truncated=o.mask_truncated,
    dynamic_sampling=o.dynamic_sampling,
    max_resample_rounds=o.max_resample_rounds,
    max_error_share=config.grading.max_error_share,
    gdpo_weights=tuple(gdpo_weights(config).items()) if o.advantage == 'gdpo' else (),
    microbatches=config.train_microbatches,
    key_costs=rollout.key_costs(cfg),
  )
  samplers = [
    sampler_lib.Sampler(
      cfg,
      config.data.max_prompt_len,
      s.max_new_tokens,
      stop_ids,
      tok.pad_id,
      sampler_lib.SamplingParams(temperature, s.top_p, s.top_k),
      cache_dtype=s.cache_dtype or 'float32',
      compute_dtype=config.compute_dtype,
      group_size=group,
      stop_seqs=stop_seqs,
      context_len=(
        episodes_lib.context_len(config.data.max_prompt_len, s.max_new_tokens, steps, s.tool_tokens) if steps > 1 else 0
      ),
    )
    for temperature, group in ((s.temperature, config.num_generations), (config.eval_temperature, config.eval_samples))
  ]
  positions = samplers[0].slots
  if positions > cfg.max_seq_len:  # RoPE runs on, but past what the model was trained on (and memory grows)
    log.warning(
      'config.data.max_prompt_len + sampling.max_new_tokens%s = %d positions, more than %s context of %d '
      '(max_seq_len): the model never saw positions past it; expected at most %d',
      ' (and the turns of an episode)' if samplers[0].context_len else '',
      positions,
      f"{cfg.name}'s",
      cfg.max_seq_len,
      cfg.max_seq_len,
    )
  return RunSpec(
    model=cfg,
    step=step,
    rollout=rollouts,
    train_sampler=samplers[0],
    eval_sampler=samplers[1],
    uses_reference=o.beta > 0,
    total_steps=config.total_steps,
    eval_interval=config.eval_interval,
    eval_samples=config.eval_samples,
    eval_batch_size=config.eval_batch_size,
    episodes=EpisodeSpec(
      steps,
      s.tool_tokens,
      tools_lib.load_tools(config.get('tools')),
      config.tool_timeout_s,
      config.tools_max_error_share,
    )
    if steps > 1
    else None,
  )
