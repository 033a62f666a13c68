"""Export to a Hugging Face folder (transformers, vLLM): a pretrained file as-is, or a run's trained params.

  python -m rftjax.export --init=gguf:PATH|gguf:gemma3-270m|hf:DIR --model=gemma3_270m --out=OUT [--tokenizer=SPEC]
  python -m rftjax.export --workdir=runs/x [--step=best|latest|N] --out=OUT [--dtype=bfloat16]
  python -m rftjax.export --workdir=runs/x_lora --adapter --out=OUT    # a PEFT adapter folder for the run's base

The workdir form reads the run's `config.json` (its `model`, `init`, `tokenizer`, `param_dtype`, `lora`), restores
only the trained params of the chosen checkpoint (not the optimizer state) and writes them with the run's tokenizer.
A LoRA run exports its adapters merged into the base weights (W + alpha / r * A @ B), a folder that serves like any
model; with `--adapter`, a PEFT folder (adapter_config.json + adapter_model.safetensors) that
`peft.PeftModel.from_pretrained(base_model, OUT)` loads on top of the run's base. It only reads the run, so it is
safe while training continues.
"""

from __future__ import annotations

import argparse
import sys

from rftjax import cli
from rftjax import errors
from rftjax import loader
from rftjax import lora
from rftjax import model
from rftjax import runfs
from rftjax import weights


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m rftjax.export', description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='output folder (created; model files in it are replaced)')
  p.add_argument('--init', help='gguf:PATH, gguf:gemma3-270m, gguf:smollm2-135m or hf:DIR')
  p.add_argument('--model', help='model preset (e.g. gemma3_270m); default: read from the file')
  p.add_argument('--tokenizer', help="tokenizer spec (default: the --init file, or the run's)")
  p.add_argument('--workdir', help='a run directory: export its trained params')
  p.add_argument('--step', default='best', help="with --workdir: 'best' (default), 'latest' or a step number")
  p.add_argument('--dtype', help="float32 or bfloat16 (default: the params' dtype)")
  p.add_argument('--adapter', action='store_true', help='with --workdir of a LoRA run: a PEFT adapter folder only')
  args = p.parse_args(argv)
  if bool(args.init) == bool(args.workdir):
    p.error('give exactly one of --init or --workdir')
  if args.adapter and not args.workdir:
    p.error('--adapter exports the adapters of a LoRA run: it needs --workdir')

  def body() -> int:
    if args.workdir:
      config = runfs.read_config(args.workdir)
      if args.adapter and not config.get('lora', {}).get('rank'):
        raise errors.ConfigError(
          f'--adapter: {args.workdir} is a full fine-tuning run (its config.lora.rank is 0), '
          'so it has no adapters; export it without --adapter (a whole model folder)'
        )
      if args.tokenizer:
        with config.unlocked():
          config.tokenizer = args.tokenizer
      source = args.workdir
    else:
      config = loader.model_spec(model=args.model or '', init=args.init, tokenizer=args.tokenizer or '')
      source = args.init
    # one device, params only; a folder with no tokenizer files exports the model alone
    loaded = loader.load(config, workdir=args.workdir, step=args.step, tokenizer_required=bool(args.tokenizer))
    if loaded.tokenizer is None:
      print(f'note: no tokenizer exported ({source} names none that loads)', file=sys.stderr)
    if loaded.step is not None:
      source = f'{source} step {loaded.step}'
    cfg = loaded.cfg
    if args.adapter:
      out = weights.export_peft(loaded.params['lora'], cfg, args.out, base_model=config.init, dtype=args.dtype)
      print(f'exported the adapters of {source} (rank {cfg.lora.rank}, on {config.init}) to {out}')
      return 0
    params = lora.merge(loaded.params, cfg.lora) if cfg.lora else loaded.params
    out = weights.export_hf(params, model.base_config(cfg), args.out, loaded.tokenizer, dtype=args.dtype)
    print(f'exported {source} ({cfg.name}{", adapters merged" if cfg.lora else ""}) to {out}')
    return 0

  return cli.run(body)


if __name__ == '__main__':
  cli.setup_logging()
  sys.exit(main())
