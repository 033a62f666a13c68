"""Loading a model for inference, batched completion, and a local judge for model graders.

  loaded = inference.load(workdir='runs/tiny', step='best')        # a run's checkpoint (params only kept)
  loaded = inference.load(init='gguf:smollm2-135m')                 # pretrained weights (weights.load)
  loaded = inference.load(init='', model='tiny', tokenizer='sp:...')  # random init, for tests
  outs = inference.complete(loaded, prompt_ids, max_new_tokens=32)  # [{'tokens', 'text', 'logprobs', ...}]
  inference.register_local_judge('my-judge', loaded)                # score_model/label_model with model=my-judge

The one place the CLIs (sample, evaluate) get a model from; the trainer builds its own state. A run's workdir is
read only: `config.json` says which model, tokenizer and chat template it used, `checkpoints/<step>/` holds the
state. The step is resolved by a read-only `Checkpointer`; only the params are read (an Orbax partial restore into
the params' mesh shardings), never the optimizer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import threading
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from rftjax import checkpoint as checkpoint_lib
from rftjax import graders
from rftjax import model as model_lib
from rftjax import runfs
from rftjax import sampler as sampler_lib
from rftjax import sharding
from rftjax import tokenizer as tokenizer_lib

log = logging.getLogger('rftjax')


class InferenceError(ValueError):
  """The model cannot be loaded as asked; the message names the file, flag or config key."""


@dataclasses.dataclass(frozen=True)
class Loaded:
  cfg: model_lib.TransformerConfig
  tokenizer: tokenizer_lib.Tokenizer
  params: Any  # pure-dict params pytree, placed on `mesh`
  run_config: ml_collections.ConfigDict | None  # the run's config.json (None when loaded from `init`)
  step: int | None  # the restored checkpoint step (None when loaded from `init`)
  mesh: jax.sharding.Mesh | None = None
  compute_dtype: str = 'float32'

  @property
  def pad_id(self) -> int:
    tok = self.tokenizer
    return tok.pad_id if tok.pad_id is not None else tok.eos_id

  @property
  def rows_multiple(self) -> int:
    """Batch rows must be a multiple of this (the data x fsdp mesh size)."""
    return 1 if self.mesh is None else self.mesh.shape['data'] * self.mesh.shape['fsdp']


def read_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  path = runfs.path(workdir) / 'config.json'
  if not path.is_file():
    raise InferenceError(f'{path}: no such file; --workdir must be a run directory written by rftjax.train')
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise InferenceError(f'{path}: not valid JSON ({e})') from None


def _default_mesh(mesh_cfg=None) -> jax.sharding.Mesh:
  """The run's own mesh when this host has the devices for it, else FSDP over every device."""
  if mesh_cfg is not None:
    try:
      return sharding.make_mesh(mesh_cfg)
    except ValueError as e:
      log.info(
        'run mesh %s does not fit here (%s); using fsdp over all %d devices', dict(mesh_cfg), e, jax.device_count()
      )
  return sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1})


def _model_config(model: str, tok: tokenizer_lib.Tokenizer) -> model_lib.TransformerConfig:
  cfg = model_lib.get_config(model)
  if cfg.family == 'tiny':  # the demo model's vocabulary follows its tokenizer (as in trainer.setup_model)
    cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
  return cfg


def _load_tokenizer(spec: str, chat_template: str | None, where: str) -> tokenizer_lib.Tokenizer:
  if not spec:
    raise InferenceError(f'{where}: no tokenizer: give a tokenizer spec (sp:PATH, gguf:PATH, hf:DIR) or an init')
  try:
    return tokenizer_lib.load_tokenizer(spec, chat_template=chat_template or None)
  except (OSError, ValueError) as e:
    raise InferenceError(f'{where}: cannot load tokenizer {spec!r}: {e}') from None


def abstract_params(cfg: model_lib.TransformerConfig, dtype, mesh) -> Any:
  """ShapeDtypeStructs of the params in their mesh shardings (the restore target; no memory)."""
  shapes = model_lib.param_shapes(cfg, jnp.dtype(dtype))
  shardings = sharding.param_shardings(shapes, model_lib.param_axes(cfg), mesh)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def restore_params(ckpt_dir: pathlib.Path, step: int, abstract, model_name: str = '') -> Any:
  """Only the params of checkpoint `step`: an Orbax partial restore of its `state` item (layout in
  docs/checkpoints.md), so the optimizer moments (2x the params with Adam) are never read or allocated."""
  path = runfs.path(ckpt_dir) / str(step) / 'state'
  target = {'params': abstract}
  args = ocp.args.PyTreeRestore(
    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
  )
  try:
    with ocp.PyTreeCheckpointer() as reader:
      return reader.restore(path, args=args)['params']
  except (ValueError, KeyError, FileNotFoundError) as e:  # a model that does not match the checkpoint
    raise InferenceError(
      f'{path}: cannot restore the params of model {model_name!r} (does the model preset match the run?): {e}'
    ) from None


def load(
  *,
  workdir: str | pathlib.Path | None = None,
  step: int | str | None = 'best',
  init: str | None = None,
  model: str | None = None,
  tokenizer: str | None = None,
  chat_template: str | None = None,
  mesh: jax.sharding.Mesh | None = None,
  param_dtype: str | None = None,
  seed: int = 0,
) -> Loaded:
  """A model for inference: from a run's checkpoint (`workdir`, `step`) or from `init` (see module docstring).

  `step`: 'best' (highest validation reward kept), 'latest', or a step number. `model`, `tokenizer` and
  `chat_template` override what the run's config.json says. With `init`, `model` defaults to the architecture
  the file states; `init=''` is a random init of preset `model` (needs `tokenizer`).
  """
  if (workdir is None) == (init is None):
    raise InferenceError('give exactly one of --workdir (a run) or --init (gguf:PATH, hf:DIR, or "" for random)')
  if workdir is not None:
    workdir = runfs.path(workdir)
    run = read_run_config(workdir)
    where = f'{workdir / "config.json"}'
    tok = _load_tokenizer(
      tokenizer or run.get('tokenizer') or run.get('init'),
      chat_template if chat_template is not None else run.get('chat_template'),
      where,
    )
    cfg = _model_config(model or run.model, tok)
    mesh = mesh if mesh is not None else _default_mesh(run.get('mesh'))
    ckpt_dir = workdir / 'checkpoints'
    if not ckpt_dir.is_dir():
      raise InferenceError(f'{ckpt_dir}: no checkpoints yet (the run saves its first one after the step-0 eval)')
    ckpt = checkpoint_lib.Checkpointer(ckpt_dir, read_only=True, async_save=False)
    try:
      resolved = ckpt.resolve_step('best' if step is None else step)
    except (FileNotFoundError, ValueError) as e:
      raise InferenceError(f'--step={step}: {e}') from None
    finally:
      ckpt.close()
    dtype = param_dtype or run.get('param_dtype', 'float32')  # the target's dtype wins: restore casts
    with jax.set_mesh(mesh):
      params = restore_params(ckpt_dir, resolved, abstract_params(cfg, dtype, mesh), cfg.name)
    log.info('loaded %s step %d (%s, %d params)', workdir, resolved, cfg.name, cfg.num_params())
    return Loaded(cfg, tok, params, run, resolved, mesh, run.get('compute_dtype', 'float32'))

  mesh = mesh if mesh is not None else _default_mesh()
  tok = _load_tokenizer(tokenizer or init, chat_template, '--init/--tokenizer')
  dtype = jnp.dtype(param_dtype or 'float32')
  with jax.set_mesh(mesh):
    if init:
      from rftjax import weights  # heavy (gguf, safetensors); only needed for pretrained models

      cfg = _model_config(model, tok) if model else weights.config_from_file(init)
      params = weights.load(init, cfg, mesh, dtype=dtype)
    else:
      if not model:
        raise InferenceError('--init="" (random weights) needs --model=<preset>')
      cfg = _model_config(model, tok)
      params = model_lib.init_params(cfg, seed, mesh, dtype=dtype)
  return Loaded(cfg, tok, params, None, None, mesh)


# ---- completion ------------------------------------------------------------------------------------------------
def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def complete(
  loaded: Loaded,
  prompts_ids: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  temperature: float = 0.0,
  top_p: float = 1.0,
  top_k: int = 0,
  seed: int = 0,
  batch_size: int = 32,
  max_prompt_len: int | None = None,
  stop: Sequence[str] | None = None,
  progress=None,
) -> list[dict]:
  """Completes every prompt (token ids) once; returns one dict per prompt, in order:
  {'tokens': ids through the stop token, 'text': decoded (special tokens dropped), 'logprobs': per token,
   'truncated': hit max_new_tokens without a stop token}.

  Fixed shapes so one program compiles: every batch has `batch_size` rows (rounded up to the mesh's data x fsdp
  size; the last batch repeats its final prompt), prompts are left-padded to the longest one rounded up to a
  multiple of 8. Batch `i` samples with `fold_in(key(seed), i)`. `progress(done, total)` is called per batch.
  `stop`: extra single-token stop strings on top of EOS and the turn end; None = the run's `sampling.stop`.
  """
  if not prompts_ids:
    return []
  tok = loaded.tokenizer
  longest = max(len(p) for p in prompts_ids)
  if longest == 0:
    raise InferenceError('a prompt has no tokens; an empty text prompt needs a tokenizer that adds BOS')
  max_prompt_len = max_prompt_len or _round_up(longest, 8)
  batch = _round_up(max(1, min(batch_size, len(prompts_ids))), loaded.rows_multiple)
  if stop is None:
    stop = tuple((loaded.run_config or {}).get('sampling', {}).get('stop', ()))
  try:
    stop_ids = tok.stop_ids_with(stop)
  except ValueError as e:
    raise InferenceError(f'--stop: {e}') from None
  sampler = sampler_lib.Sampler(
    loaded.cfg,
    max_prompt_len,
    max_new_tokens,
    stop_ids,
    loaded.pad_id,
    sampler_lib.SamplingParams(float(temperature), float(top_p), int(top_k)),
    compute_dtype=loaded.compute_dtype,
  )
  rng = jax.random.key(seed)
  put = lambda a: jax.device_put(a, sharding.data_sharding(loaded.mesh, a.ndim))  # noqa: E731
  results = []
  with jax.set_mesh(loaded.mesh) if loaded.mesh is not None else contextlib.nullcontext():
    for i, start in enumerate(range(0, len(prompts_ids), batch)):
      chunk = [list(p) for p in prompts_ids[start : start + batch]]
      padded = chunk + [chunk[-1]] * (batch - len(chunk))
      tokens, mask = sampler_lib.pad_prompts(padded, max_prompt_len, loaded.pad_id)
      out = jax.device_get(sampler(loaded.params, put(tokens), put(mask), jax.random.fold_in(rng, i)))
      for r in range(len(chunk)):
        n = int(out.lengths[r])
        ids = [int(t) for t in out.tokens[r, :n]]
        results.append(
          {
            'tokens': ids,
            'text': tok.decode(ids),
            'logprobs': [float(x) for x in out.logprobs[r, :n]],
            'truncated': bool(out.truncated[r]),
          }
        )
      if progress is not None:
        progress(len(results), len(prompts_ids))
  return results


# ---- local judge -----------------------------------------------------------------------------------------------
def register_local_judge(
  name: str, loaded: Loaded, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0
) -> None:
  """Makes model graders (score_model / label_model) whose `model` is `name` ask `loaded` instead of an API.

  The judge renders the grader's messages with the tokenizer's chat template (`developer` becomes `system`) and
  samples one completion. The grader's `sampling_params` win over the defaults given here: `temperature`,
  `top_p`, `max_completions_tokens` (or `max_tokens`), `seed`. The default temperature is 0 (greedy), so a
  judge's score is reproducible. Calls from the grading pool's threads are serialised: the accelerator is one.
  `graders.register_judge(name, None)` unregisters.
  """
  lock = threading.Lock()
  calls = [0]

  def judge(messages: list[dict], sampling_params: dict) -> str:
    sp = dict(sampling_params or {})
    msgs = [{'role': 'system' if m['role'] == 'developer' else m['role'], 'content': m['content']} for m in messages]
    ids = loaded.tokenizer.encode_prompt(msgs)
    new = int(
      sp.get('max_completions_tokens') or sp.get('max_completion_tokens') or sp.get('max_tokens') or max_new_tokens
    )
    with lock:
      calls[0] += 1
      out = complete(
        loaded,
        [ids],
        max_new_tokens=new,
        temperature=float(sp.get('temperature', temperature)),
        top_p=float(sp.get('top_p', top_p)),
        seed=int(sp.get('seed', seed + calls[0])),
        batch_size=1,
      )
    return out[0]['text']

  graders.register_judge(name, judge)
