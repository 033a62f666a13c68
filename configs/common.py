"""Defaults every run config starts from. Each config file calls `base()` and sets a few fields."""

import dataclasses

import ml_collections
from ml_collections import config_dict

from rftjax import errors
from rftjax import graders
from rftjax import guard
from rftjax import hparams


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = 'tiny'  # a preset name from rftjax.presets.PRESETS
  c.init = ''  # '' = random init; 'gguf:PATH', 'hf:DIR', or a shorthand like 'gguf:gemma3-270m'
  c.tokenizer = ''  # '' = the init's own tokenizer; 'sp:PATH', 'gguf:PATH', 'hf:DIR'
  c.chat_template = ''  # '' = the tokenizer's default; 'plain', 'gemma', 'chatml', 'qwen3', 'llama3'
  c.thinking = False  # qwen3 template: True lets the model reason in <think> first (longer completions)

  c.lora = ml_collections.ConfigDict()  # docs/lora.md
  c.lora.rank = 0  # 0 = full fine-tuning; r > 0 trains rank-r adapters on a frozen base (needs a pretrained init)
  c.lora.alpha = 32.0  # the update is alpha / rank * (x @ A) @ B
  c.lora.targets = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')  # linears with adapters; embeddings stay frozen

  c.data = ml_collections.ConfigDict()
  c.data.train = ''
  c.data.valid = ''
  c.data.max_prompt_len = 64  # tokens; a longer prompt is an error at start-up naming its line
  c.data.skip_long_prompts = False  # True: such prompts are left out, with a warning, instead
  c.data.valid_limit = 0  # evaluate on the first N validation examples only; 0 = all
  # a grader dict, or the path of a grader JSON file (either kind on any config: the field takes both)
  c.grader = config_dict.FieldReference(None, field_type=object)
  # OpenAI's response_format ({"type": "json_schema", ...}, or a JSON file path): completions must be JSON matching
  # it; the schema goes into the prompt and a completion that fails scores 0 (docs/openai_jobs.md)
  c.response_format = config_dict.FieldReference(None, field_type=object)

  c.seed = 0
  c.total_steps = 100
  c.batch_size = 16  # prompts per step
  c.num_generations = 8  # G: completions per prompt

  c.sampling = ml_collections.ConfigDict()
  c.sampling.temperature = 1.0
  c.sampling.stop = ()  # extra stop strings (any length, matched on their tokens), e.g. ('\n',); EOS and turn end stop
  c.sampling.top_p = 1.0
  c.sampling.top_k = 0
  c.sampling.max_new_tokens = 32
  c.sampling.cache_dtype = ''  # KV cache dtype; '' = float32 ('bfloat16' halves the cache on TPU)

  c.sampling.tool_tokens = 128  # episodes: room for one tool turn (outputs cut to fit, counted in metrics)

  # Agentic episodes (docs/tools.md): the model calls tools over HTTP between turns. A list of
  # {"name", "server_url", "headers"} (or a JSON file of one); every tool a data row offers must be here.
  c.tools = config_dict.FieldReference((), field_type=object)
  c.max_episode_steps = 1  # model turns per episode; 1 = one completion, as without tools
  c.tool_timeout_s = 60.0  # per HTTP attempt; 5xx, timeouts and connection errors are retried 3 times
  c.tools_max_error_share = 0.5  # stop the run when more tool calls than this fail for good in one batch
  c.tool_server = ''  # 'example': start rftjax.tool_server on a free 127.0.0.1 port; '{tool_server}' in URLs is it

  c.grpo = ml_collections.ConfigDict()
  c.grpo.beta = 0.0  # KL weight; 0 loads no reference model
  c.grpo.kl_estimator = 'k3'
  c.grpo.epsilon = 0.2
  c.grpo.epsilon_high = 0.28
  c.grpo.num_iterations = 1  # mu: updates per sampled batch
  c.grpo.advantage = 'grpo'  # 'grpo' | 'dr_grpo' | 'rloo' | 'gdpo' (docs/grpo.md)
  c.grpo.scale_rewards = 'group'  # 'group' | 'batch' | 'none'; advantage='grpo' only (the others scale their own way)
  c.grpo.loss_aggregation = 'token_mean'  # 'token_mean' | 'sequence_mean' | 'constant'
  c.grpo.importance_level = 'token'  # 'token' | 'sequence' (GSPO)
  c.grpo.dual_clip = 0.0  # 0 = off; c > 1 bounds the loss of negative-advantage tokens at c*|A|
  c.grpo.tis_cap = 0.0  # 0 = off; truncated importance sampling between sampler and trainer logprobs
  c.grpo.entropy_coef = 0.0  # entropy bonus
  c.grpo.dynamic_sampling = False  # DAPO: drop groups whose rewards are all equal, sample more prompts
  c.grpo.max_resample_rounds = 3  # bound on the extra sampling rounds dynamic sampling may take per step
  c.grpo.mask_truncated = False  # DAPO overlong filtering: truncated completions get no loss
  c.grpo.overlong_buffer = 0  # tokens; > 0 = DAPO soft overlong penalty over the last this-many tokens
  c.grpo.overlong_penalty = 1.0  # the penalty at max_new_tokens

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-6
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = 'constant'  # 'constant' | 'cosine'
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.0
  c.optimizer.max_grad_norm = 1.0
  c.optimizer.mu_dtype = ''  # Adam first-moment dtype; '' = the param dtype

  c.eval_interval = 10
  c.eval_temperature = 0.0  # 0 = greedy
  c.eval_samples = 1  # completions per validation prompt (averaged); > 1 wants eval_temperature > 0
  c.eval_batch_size = 64  # rows; rounded up to whole groups of eval_samples on every data shard and host

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep_best = 3
  c.checkpoint.async_save = True

  c.grading = ml_collections.ConfigDict()
  c.grading.num_workers = 0  # 0 = one per CPU core
  c.grading.timeout_s = graders.pool.TRAIN_TIMEOUT_S  # 10 s per sample (rftjax.grade's default is OpenAI's 120 s)
  c.grading.max_error_share = 0.5  # stop the run when more gradings than this fail in one step
  c.grading.step_budget_s = 600.0  # the most one step's grading may take; what is left then scores 0 (0 = no cap)
  c.grading.memory_mb = 2048  # address space of each python/code/math grader's worker (OpenAI's python grader: 2 GB)
  c.grading.model_threads = 16  # requests in flight at once to model judges and endpoint graders (a provider's limit)
  c.grading.allow_unsandboxed = False  # True runs python/code graders even where they cannot be isolated

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1
  c.mesh.fsdp = -1  # -1 = all remaining devices
  c.mesh.tensor = 1

  c.compute_dtype = 'float32'
  c.param_dtype = 'float32'
  c.remat = False
  c.train_microbatches = 1  # gradient accumulation: rows per step / this must divide by data x fsdp
  c.progress = True
  c.sync_interval_s = 60.0  # gs:// workdir: upload metrics/samples/TensorBoard this often (and at evals, saves, exit)
  c.devices = ''  # the slice the config was planned for, as `plan --devices` takes it ('v5e-8'); '': none
  hparams.add_openai_fields(c)  # OpenAI-style n_epochs / batch_size / ... (docs/hyperparameters.md)
  guard.add_guard_fields(c)  # collapse alarms: warnings, and with guard.stop=True a clean stop (docs/guard.md)
  return c.lock()  # a field that does not exist is an error where a config sets it (a typo ran on the default)


@dataclasses.dataclass(frozen=True)
class Layout:
  """One model on one slice: what `rftjax.plan` checked fits (docs/scaling.md)."""

  model: str  # rftjax.model preset
  devices: str  # the slice the layout is planned for (rftjax.plan --devices)
  mesh: tuple[int, int, int]  # (data, fsdp, tensor)
  batch_size: int  # prompts per step
  num_generations: int
  max_prompt_len: int
  max_new_tokens: int
  param_dtype: str
  train_microbatches: int = 1
  lora_rank: int = 0  # 0 = full fine-tuning


def from_layout(name: str, arg, layouts: dict[str, Layout], init: str) -> ml_collections.ConfigDict:
  """A run config for `layouts[arg]`: the model on the slice it was planned for, bfloat16 compute and KV cache,
  remat. `init`, `data.*` and `grader` are placeholders to point at your files."""
  del name  # the message names no file (a copy elsewhere named the original): the --config flag's check adds it
  if arg not in layouts:  # these configs have no default: the layout is the point
    found = f'unknown layout {arg!r}' if arg else 'no layout'
    raise errors.VariantError(f'{found}; expected the file name then :LAYOUT, LAYOUT one of {", ".join(layouts)}')
  layout = layouts[arg]
  c = base()
  c.model = layout.model
  c.init = init  # placeholder: a local HF checkpoint dir
  c.data.train = 'data/train.jsonl'  # placeholder
  c.data.valid = 'data/valid.jsonl'  # placeholder
  c.data.max_prompt_len = layout.max_prompt_len
  c.grader = None  # placeholder: a grader dict or JSON path (docs/graders.md)
  c.devices = layout.devices  # the slice this layout was planned for (informational; `rftjax.plan --devices` decides)
  c.total_steps = 500
  c.batch_size = layout.batch_size
  c.num_generations = layout.num_generations
  c.sampling.max_new_tokens = layout.max_new_tokens
  c.sampling.cache_dtype = 'bfloat16'  # half the KV cache of float32
  c.lora.rank = layout.lora_rank
  c.optimizer.learning_rate = 1e-5 if layout.lora_rank else 1e-6  # LoRA wants ~10x full fine-tuning's rate
  c.optimizer.warmup_steps = 10
  c.eval_interval = 50
  c.eval_batch_size = layout.batch_size * layout.num_generations
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = layout.mesh
  c.compute_dtype = 'bfloat16'
  c.param_dtype = layout.param_dtype
  c.train_microbatches = layout.train_microbatches
  c.remat = True
  return c


def check_variant(*args) -> None:
  """check_variant(arg, variants), big_vision's parse_arg check: an unknown `--config=FILE:VARIANT` is an error, not
  the default. The message names no file (a copy of this config elsewhere named the original): the --config flag's
  check adds it. (A config copied from an older rftjax passes its name first: still taken.)"""
  arg, variants = args[-2:]
  if arg not in (None, '', *variants):
    raise errors.VariantError(f'unknown variant {arg!r}; expected one of: {", ".join(variants)} (or none)')


def smoke_test(c: ml_collections.ConfigDict, max_new_tokens: int) -> None:
  """The `:test` variant of a real-weights config: two GRPO steps on a handful of prompts, for the test suite.
  8 rows (4 prompts x 2 samples) so the batch splits over the suite's 8 fake CPU devices."""
  c.total_steps = 2
  c.eval_interval = 2
  c.batch_size = 4
  c.num_generations = 2
  c.sampling.max_new_tokens = max_new_tokens
  c.eval_batch_size = 8
  c.data.valid_limit = 8
  c.progress = False
