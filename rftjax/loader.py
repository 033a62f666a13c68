"""The one way to get a model: tokenizer, architecture and params from a config, a pretrained file or a run.

  loaded = loader.load(config, mesh=mesh)                          # config.init: a pretrained file, or random
  loaded = loader.load(run_config, mesh=mesh, workdir=W, step='best')  # a run's checkpoint (params only)
  loaded = loader.load(config, abstract=True)                      # shapes only: nothing is read or allocated

`config` is a run config (configs/*.py) or any ConfigDict with its model keys: `model` (a preset; '' = what the
init file states), `init` ('' = random, `gguf:PATH`, `gguf:NAME`, `hf:DIR`), `tokenizer` ('' = the init's own),
`chat_template`, `param_dtype` and `seed`; `model_spec(...)` builds one for the command-line tools. The trainer,
the inference tools, export and the memory planner all load through `load`, so a model means the same thing in each
(the tiny demo model's vocabulary follows its tokenizer; a run restores what it trained).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rftjax import checkpoint as checkpoint_lib
from rftjax import errors
from rftjax import graders
from rftjax import hf_config
from rftjax import lora as lora_lib
from rftjax import model as model_lib
from rftjax import presets
from rftjax import pretrained
from rftjax import runfs
from rftjax import sharding
from rftjax import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Loaded:
  cfg: model_lib.TransformerConfig
  tokenizer: tokenizer_lib.Tokenizer | None  # None only for an abstract load that did not need it
  params: Any  # pure-dict params on `mesh` (ShapeDtypeStructs when abstract)
  mesh: jax.sharding.Mesh | None
  config: ml_collections.ConfigDict  # the model keys it was loaded from (a run's whole config.json)
  step: int | None = None  # the checkpoint step, when loaded from a run


def model_spec(
  model: str = '',
  init: str = '',
  tokenizer: str = '',
  chat_template: str = '',
  param_dtype: str = 'float32',
  seed: int = 0,
) -> ml_collections.ConfigDict:
  """A config with only the model keys, for tools that load a model without a run config (`--init`, judges)."""
  return ml_collections.ConfigDict(
    dict(model=model, init=init, tokenizer=tokenizer, chat_template=chat_template, param_dtype=param_dtype, seed=seed)
  )


def check_spec(key: str, spec: str, kinds: tuple[str, ...], label: str = '') -> None:
  """`config.init` / `config.tokenizer` name a file or folder that exists (a shorthand: an installed package).
  label: what the errors name instead of `config.<key>` (a flag, a grader's field)."""
  label = label or f'config.{key}'
  kind, _, rest = spec.partition(':')
  if kind not in kinds or not rest:
    forms = ' or '.join(f'{k}:PATH' if k != 'hf' else 'hf:DIR' for k in kinds)
    shorthands = f' or gguf:NAME ({", ".join(pretrained.SHORTHANDS)})' if 'gguf' in kinds else ''
    raise errors.ConfigError(f'{label}: expected {forms}{shorthands}, found {spec!r}')
  if kind == 'gguf' and rest in pretrained.SHORTHANDS:
    try:
      pretrained.resolve(spec)
    except pretrained.MissingWeightsError as e:
      raise errors.ConfigError(f'{label}={spec!r}: {e}') from None
    return
  path = pathlib.Path(rest)
  if kind == 'hf' and not path.is_dir():
    hub = not path.is_absolute() and len(path.parts) == 2  # 'Qwen/Qwen3-0.6B': a Hub id, as transformers takes
    raise errors.ConfigError(
      f'{label}={spec!r}: no such folder {path}{"" if hub else runfs.missing_where(path)}'
      + (
        '; hf: names a local folder, and rftjax downloads nothing: fetch the model where the network is (e.g. '
        f'`huggingface-cli download {path} --local-dir DIR`) and give hf:DIR'
        if hub
        else runfs.tilde_hint(path)
      )
    )
  if kind != 'hf' and not path.is_file():
    known = f' (known gguf:NAME shorthands: {", ".join(pretrained.SHORTHANDS)})' if kind == 'gguf' else ''
    where = runfs.missing_where(path)
    raise errors.ConfigError(f'{label}={spec!r}: no such file {path}{where}{known}{runfs.tilde_hint(path)}')


def _names_a_missing_file(e: Exception) -> bool:
  """Whether a tokenizer or model error says a file or folder is not there ('... no such file', 'no such folder')."""
  return 'no such ' in str(e).lower()


def run_paths_note(workdir, e: Exception, flag: str = '--tokenizer') -> str:
  """For a file a run's config.json names that is not there: where its relative paths start, and what to do."""
  if workdir is None or not _names_a_missing_file(e):
    return ''
  return (f' (as {workdir}/config.json names it: its relative paths start in the folder the run was started in; '
          f'run this command from there, or give {flag}=...)')  # fmt: skip


def _init_note(workdir, spec: str | None) -> str:
  """For a run whose init (a LoRA run's base model) is not where its config.json says: where a relative path
  starts, or how to say the model moved (the run's identity: a resume compares it with config.json's)."""
  kind, _, where = (spec or '').partition(':')
  if workdir is None or kind not in ('hf', 'gguf') or not where or os.path.exists(where):
    return ''
  if kind == 'gguf' and where in pretrained.SHORTHANDS:  # an installed package's name: its own error says what to do
    return ''
  start = '' if os.path.isabs(where) else 'its relative paths start in the folder the run was started in; '
  return f' (as {workdir}/config.json names it: {start}if the model moved, write its new place in that file\'s "init")'


def _not_on_disk(config, workdir, asked, steps: list[int]) -> str:
  """Why the run has no checkpoint `asked`, from its own files: none written yet (its trainer still starting, or
  stopped before its first), none of those it saved there (a copy without them), a step being written (or cut
  short), one the keep policy deleted, or one that was never a checkpoint."""
  from rftjax import metrics as metrics_lib  # the run's events: which steps were saved

  folder = runfs.path(workdir)
  events = metrics_lib.read_jsonl(folder / 'events.jsonl') if (folder / 'events.jsonl').exists() else []
  saved = {metrics_lib.event_step(e) for e in events if isinstance(e.get('data'), dict) and e['data'].get('checkpoint')}
  # a step being written, or cut short: Orbax's temporary folder (N.orbax-checkpoint-tmp[-time]) on a disk, the
  # step's own folder not yet committed in a bucket
  numbered = str(asked).isdigit() or isinstance(asked, int)
  unfinished = sorted(int(p.name.split('.')[0]) for p in checkpoint_lib.unfinished_steps(folder / 'checkpoints', steps))
  if numbered and int(asked) in unfinished or not steps and unfinished:
    which = f'Step {asked} is' if numbered else f'The run has no other: step {unfinished[-1]} is'
    return f' {which} incomplete: being written, or its save was cut short (a crash, or the folder copied meanwhile)'
  holder = None if runfs.is_remote(folder) else runfs.held_by(folder)
  if not steps and holder:
    return f' The run has none yet: its trainer ({holder}) writes the first after its step-0 validation'
  if not steps and saved:
    return (f' None of the checkpoints the run saved (the last at step {max(saved):g}) is in {folder}/checkpoints: '
            'was the run folder copied without them?')  # fmt: skip
  if not steps:
    report = f'python -m rftjax.report --workdir={workdir}'
    if runfs.is_remote(folder):  # no lock to ask there
      return (' The run has none yet (its trainer writes the first after its step-0 validation), or it stopped '
              f'before that ({report} says which)')  # fmt: skip
    return f' The run has none: it stopped before its step-0 validation wrote the first ({report} says how it ended)'
  if not numbered:
    return ''
  keep = (config.get('checkpoint') or {}).get('keep_best', 3)
  if int(asked) in saved:
    return (f' Step {asked} was saved, then deleted by the keep policy (checkpoint.keep_best={keep}: the {keep} best '
            'by validation reward, and the latest; docs/checkpoints.md)')  # fmt: skip
  return (
    f' Checkpoints are written at step 0, at each validation (eval_interval={config.get("eval_interval")}), '
    'and at the last step'
  )


def check_judges(spec: dict) -> None:
  """The local judge models a grader spec names (`graders.local_models`) exist, before any loads."""
  for name in graders.local_models(spec):
    check_spec('init', name, ('gguf', 'hf'), label='a model grader\'s "model"')


def load_tokenizer(config) -> tokenizer_lib.Tokenizer:
  """`config.tokenizer`, else the tokenizer stored with `config.init`."""
  key = 'tokenizer' if config.get('tokenizer') else 'init'
  spec = config.get(key)
  if spec:
    check_spec(key, spec, ('sp', 'gguf', 'hf'))
  else:
    raise errors.ConfigError(
      'config.tokenizer: not set and there is no config.init to take one from; expected '
      'sp:PATH, gguf:PATH, gguf:NAME or hf:DIR'
    )
  try:
    return tokenizer_lib.load_tokenizer(
      spec, chat_template=config.get('chat_template') or None, thinking=bool(config.get('thinking'))
    )
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f'config.{key}={spec!r}: cannot load a tokenizer from it ({e})') from None


def lora_config(config) -> lora_lib.LoRAConfig | None:
  """`config.lora` as a LoRAConfig, or None for full fine-tuning (rank 0, or a config without the keys)."""
  spec = config.get('lora')
  if not spec or not spec.get('rank'):
    return None
  return lora_lib.LoRAConfig(rank=int(spec.rank), alpha=float(spec.alpha), targets=tuple(spec.targets))


def model_config(config, tok: tokenizer_lib.Tokenizer | None) -> model_lib.TransformerConfig:
  """The architecture: preset `config.model` (checked against the init file when weights are read), or the one
  the init file states when no preset is named, with `config.lora`'s adapters. The tiny demo model's vocabulary
  follows its tokenizer."""
  if config.get('model'):
    if config.model not in presets.PRESETS:
      raise errors.ConfigError(
        f'config.model: unknown preset {config.model!r}'
        f'{errors.did_you_mean(config.model, presets.PRESETS)}; known: '
        f'{", ".join(sorted(presets.PRESETS))}'
      )
    cfg = presets.get_config(config.model)
  elif config.get('init'):
    from rftjax import weights  # heavy (gguf, safetensors); only needed for pretrained models

    try:
      cfg = weights.config_from_file(config.init)
    except (OSError, ValueError) as e:  # an hf:DIR without config.json, not a GGUF file, an unknown architecture
      raise errors.ConfigError(f'config.init={config.init!r}: {e}') from None
  else:
    raise errors.ConfigError('config.model: not set, and there is no config.init file to read the architecture from')
  if cfg.family == 'tiny' and tok is not None:
    cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
  return dataclasses.replace(cfg, lora=lora_config(config))


def abstract_params(cfg: model_lib.TransformerConfig, dtype, mesh) -> Any:
  """ShapeDtypeStructs of the params in their mesh shardings (a restore target; no memory); adapters included
  with `cfg.lora`."""
  shapes = model_lib.param_shapes(cfg, jnp.dtype(dtype))
  shardings = sharding.param_shardings(shapes, model_lib.param_axes(cfg), mesh)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def load(
  config,
  *,
  mesh: jax.sharding.Mesh | None = None,
  workdir: str | pathlib.Path | None = None,
  step: int | str | None = 'best',
  abstract: bool = False,
  tokenizer: tokenizer_lib.Tokenizer | None = None,
  tokenizer_required: bool = True,
) -> Loaded:
  """Tokenizer, architecture and params (see the module docstring).

  With `workdir`, the params of checkpoint `step` ('best', 'latest' or a number) are restored into their
  shardings on `mesh` (None: one device), never the optimizer state. `abstract` reads no weights and loads the
  tokenizer only where the architecture needs it (the tiny model), so it works without the files. `tokenizer`
  skips loading one that the caller already has; `tokenizer_required=False` loads the model without one when
  there is none (exporting a weights-only folder).
  """
  dtype = jnp.dtype(config.get('param_dtype') or 'float32')
  tok = tokenizer
  if tok is None and (not abstract or config.get('model') == 'tiny'):  # tiny: the vocabulary is the tokenizer's
    try:
      tok = load_tokenizer(config)
    except errors.ConfigError as e:
      # one the config names, or the init's that is not there, is needed (the tiny model's vocabulary is its
      # tokenizer's): an export would go without it, or with the wrong vocabulary, for want of the right folder
      named = bool(config.get('tokenizer'))
      missing = _names_a_missing_file(e)  # the file or folder the config names is not there (from another folder?)
      if (tokenizer_required or named or missing) and not abstract:
        raise errors.ConfigError(f'{e}{run_paths_note(workdir, e)}') from None
      log.info('no tokenizer: %s', e)
  try:
    cfg = model_config(config, tok)
  except errors.ConfigError as e:  # a run's init (a LoRA run's base) that is not where config.json says
    raise errors.ConfigError(f'{e}{_init_note(workdir, config.get("init"))}') from None
  if abstract:
    return Loaded(cfg, tok, abstract_params(cfg, dtype, mesh), mesh, config)
  if workdir is None:
    return _load(config, cfg, tok, dtype, mesh)
  asked = 'best' if step is None else step
  initial = str(asked) in ('0', 'init')
  asked = 0 if initial else asked
  for again in (False, True):  # a live run may delete the step `best` or `latest` named while it loads: once more
    ckpt = checkpoint_lib.Checkpointer(runfs.path(workdir) / 'checkpoints', read_only=True, async_save=False)
    try:  # one listing of the checkpoints folder serves both the step and its restore (requests, on gs://)
      if initial and 0 not in ckpt.all_steps():  # step 0 holds the init, as the trainer loaded it
        log.info("step 0 is not on disk (the keep policy deletes it): loading what it held, the run's init")
        return dataclasses.replace(_load(config, cfg, tok, dtype, mesh), step=0)
      try:  # the step first: a missing one is an error before minutes of loading
        step = ckpt.resolve_step(asked)
      except (FileNotFoundError, ValueError) as e:
        note = _not_on_disk(config, workdir, asked, ckpt.all_steps()) if isinstance(e, FileNotFoundError) else ''
        raise errors.ConfigError(f'--step={asked}: {e}{note}') from None
      try:
        return _load(config, cfg, tok, dtype, mesh, ckpt, f'{workdir} step {step}', step)
      except errors.ConfigError as e:
        raise errors.ConfigError(f'{e}{_init_note(workdir, config.get("init"))}') from None
      except checkpoint_lib.Gone as e:
        if again or asked not in ('best', 'latest'):
          raise errors.ConfigError(f'--step={asked}: {e}') from None
        log.info('%s; taking --step=%s again', e, asked)
    finally:
      ckpt.close()


def _load(config, cfg, tok, dtype, mesh, ckpt=None, ckpt_name=None, step=None) -> Loaded:
  """`load` past the tokenizer and architecture; `ckpt` (read-only) holds the run's trained params at `step`."""
  source = ckpt_name if ckpt is not None and not cfg.lora else config.get('init') or 'random init'
  log.info(
    'loading %s (%s params, %s%s) from %s',
    cfg.name if cfg.name != source else f'a {hf_config.model_type(cfg)} model',  # a file matching no preset: its kind
    presets.params_text(cfg.num_params()),
    dtype.name,
    f', LoRA rank {cfg.lora.rank}' if cfg.lora else '',
    source,
  )
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    if ckpt is not None and not cfg.lora:  # full fine-tuning: the checkpoint holds every param
      params = _restore(ckpt, ckpt_name, step, abstract_params(cfg, dtype, mesh))
      return Loaded(cfg, tok, params, mesh, config, step)
    base = model_lib.base_config(cfg)
    if config.get('init'):
      from rftjax import weights  # heavy (gguf, safetensors); only needed for pretrained models

      check_spec('init', config.init, ('gguf', 'hf'))
      try:
        params = weights.load(config.init, base, mesh, dtype=dtype)
      except (pretrained.MissingWeightsError, FileNotFoundError) as e:
        raise errors.ConfigError(f'config.init={config.init!r}: {e}') from None
    else:
      params = model_lib.init_params(base, int(config.get('seed') or 0), mesh, dtype=dtype)
    if not cfg.lora:
      return Loaded(cfg, tok, params, mesh, config)
    if ckpt is None:  # fresh adapters, B = 0: the model starts as the base model
      params['lora'] = model_lib.init_lora(cfg, int(config.get('seed') or 0), mesh)
      return Loaded(cfg, tok, params, mesh, config)
    # a LoRA run: the base from its init, the adapters from the checkpoint (which holds nothing else)
    trained = _restore(ckpt, ckpt_name, step, {'lora': abstract_params(cfg, dtype, mesh)['lora']})
    return Loaded(cfg, tok, {**params, **trained}, mesh, config, step)


def _restore(ckpt, ckpt_name: str, step: int, abstract) -> Any:
  """The trainable params of checkpoint `step` (a resolved number) into `abstract`'s shardings."""
  try:
    params = ckpt.restore_params(step, abstract)
  except checkpoint_lib.Gone:  # `load` says which --step, and takes best or latest once more
    raise
  except (FileNotFoundError, ValueError) as e:
    raise errors.ConfigError(f'--step={step}: {e}') from None
  log.info('loaded %s', ckpt_name)
  return params


def inference_mesh(mesh_cfg=None) -> jax.sharding.Mesh:
  """A run's own mesh when this machine has the devices for it, else FSDP over every device."""
  if mesh_cfg is not None:
    try:
      return sharding.make_mesh(mesh_cfg)
    except ValueError as e:
      log.info(
        'run mesh %s does not fit here (%s); using fsdp over all %d devices', dict(mesh_cfg), e, jax.device_count()
      )
  return sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1})
