"""Export to a Hugging Face folder (transformers, vLLM): a pretrained file as-is, or a run's trained params.

  python -m rftjax.export --init=gguf:PATH|gguf:gemma3-270m|hf:DIR --model=gemma3_270m --out=OUT [--tokenizer=SPEC]
  python -m rftjax.export --workdir=runs/x [--step=best|latest|N] --out=OUT [--dtype=bfloat16]

The workdir form reads the run's `config.json` (its `model`, `init`, `tokenizer`, `param_dtype`), restores only the
params of the chosen checkpoint (not the optimizer state) and writes them with the run's tokenizer. It only reads
the run, so it is safe while training continues.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp

from rftjax import model as model_lib
from rftjax import runfs
from rftjax import tokenizer as tokenizer_lib
from rftjax import weights


def _tokenizer(spec: str | None, chat_template: str | None = None):
  return tokenizer_lib.load_tokenizer(spec, chat_template=chat_template or None) if spec else None


def restore_params(workdir: str | pathlib.Path, step: str | int = 'best', dtype=None):
  """(params, cfg, run_config, step) from a run directory; `step`: 'best', 'latest' or a number.

  Restores just the `params` subtree of the checkpoint's train state (Orbax partial restore), so exporting a
  large model never materialises its optimizer state.
  """
  import orbax.checkpoint as ocp
  from rftjax import checkpoint as checkpoint_lib

  workdir = runfs.path(workdir)  # local or gs://
  config_path = workdir / 'config.json'
  if not config_path.is_file():
    raise FileNotFoundError(f'{config_path}: not found; --workdir must be a run directory written by rftjax.train')
  run = json.loads(config_path.read_text())
  for key in ('model',):
    if not run.get(key):
      raise ValueError(f'{config_path}: has no {key!r} field')
  cfg = model_lib.get_config(run['model'])
  tok = _tokenizer(run.get('tokenizer') or run.get('init'), run.get('chat_template'))
  if cfg.family == 'tiny' and tok is not None:  # the trainer sizes the tiny model's vocabulary the same way
    cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
  dtype = jnp.dtype(dtype or run.get('param_dtype') or 'float32')
  ckpt = checkpoint_lib.Checkpointer(workdir / 'checkpoints', read_only=True)
  which = int(step) if isinstance(step, str) and step.isdigit() else step
  step_n = ckpt.resolve_step(which)
  abstract = model_lib.param_shapes(cfg, dtype)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=device, dtype=s.dtype), abstract)
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract)
  path = ckpt.directory / str(step_n) / 'state'
  with ocp.PyTreeCheckpointer() as reader:
    state = reader.restore(
      path,
      args=ocp.args.PyTreeRestore(item={'params': target}, restore_args={'params': restore_args}, partial_restore=True),
    )
  return state['params'], cfg, run, step_n, tok


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m rftjax.export', description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='output folder (created; model files in it are replaced)')
  p.add_argument('--init', help='gguf:PATH, gguf:gemma3-270m, gguf:smollm2-135m or hf:DIR')
  p.add_argument('--model', help='model preset (e.g. gemma3_270m); default: read from the file')
  p.add_argument('--tokenizer', help="tokenizer spec (default: the --init file, or the run's)")
  p.add_argument('--workdir', help='a run directory: export its trained params')
  p.add_argument('--step', default='best', help="with --workdir: 'best' (default), 'latest' or a step number")
  p.add_argument('--dtype', help="float32 or bfloat16 (default: the params' dtype)")
  args = p.parse_args(argv)
  if bool(args.init) == bool(args.workdir):
    p.error('give exactly one of --init or --workdir')
  if args.workdir:
    params, cfg, run, step, tok = restore_params(args.workdir, args.step)
    if args.tokenizer:
      tok = _tokenizer(args.tokenizer, run.get('chat_template'))
    source = f'{args.workdir} step {step}'
  else:
    cfg = model_lib.get_config(args.model) if args.model else None
    cfg = weights.config_from_file(args.init, cfg)
    params = weights.load(args.init, cfg)
    try:
      tok = _tokenizer(args.tokenizer or args.init)
    except FileNotFoundError as e:  # an hf: folder without tokenizer files: export the model alone
      if args.tokenizer:
        raise
      print(f'note: no tokenizer exported ({e})', file=sys.stderr)
      tok = None
    source = args.init
  out = weights.export_hf(params, cfg, args.out, tok, dtype=args.dtype)
  print(f'exported {source} ({cfg.name}) to {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
