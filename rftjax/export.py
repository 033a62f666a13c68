"""Export to a Hugging Face folder (transformers, vLLM): a pretrained file as-is, or a run's trained params.

  python -m rftjax.export --init=gguf:PATH|gguf:gemma3-270m|hf:DIR --model=gemma3_270m --out=OUT [--tokenizer=SPEC]
  python -m rftjax.export --workdir=runs/x [--step=best|latest|N] --out=OUT [--dtype=bfloat16]
  python -m rftjax.export --workdir=runs/x_lora --adapter --out=OUT    # a PEFT adapter folder for the run's base

The workdir form reads the run's `config.json` (its `model`, `init`, `tokenizer`, `param_dtype`, `lora`), restores
only the trained params of the chosen checkpoint (not the optimizer state) and writes them with the run's tokenizer.
A LoRA run exports its adapters merged into the base weights (W + alpha / r * A @ B), a folder that serves like any
model; with `--adapter`, a PEFT folder (adapter_config.json + adapter_model.safetensors) that
`peft.PeftModel.from_pretrained(base_model, OUT)` loads on top of the run's base. It only reads the run, so it is
safe while training continues. `--out` is checked before the model loads: a folder (made if missing) that is new,
empty or an earlier export's (it holds rftjax_export.json, which says what it holds), and not the model the export
reads. The export is written beside it and then takes its place whole: an interrupted one changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from typing import Any, Callable

from rftjax import cli
from rftjax import errors
from rftjax import hf_config
from rftjax import loader
from rftjax import lora
from rftjax import model
from rftjax import response_format
from rftjax import runfs
from rftjax import tokenizer as tokenizer_lib
from rftjax import weights


# What rftjax.train writes into a run directory besides config.json (which an export would replace).
RUN_FILES = ('checkpoints', 'metrics.jsonl', 'events.jsonl')
# What export writes last: a folder holding it is an export (which one it says), replaced whole by the next export.
MARKER = 'rftjax_export.json'


def check_out_folder(out, base: str | None = None) -> None:
  """`--out` may be written: missing, empty, or an earlier export's (it holds MARKER), and not `base` (the model the
  export reads, or a LoRA run's base: an export there would replace the weights the run's adapters apply to).
  Anything else is a ConfigError naming what is there: an export replaces the whole folder."""
  out = pathlib.Path(out)
  if base and base.startswith('hf:') and out.absolute().resolve() == pathlib.Path(base[3:]).absolute().resolve():
    raise errors.ConfigError(
      f'--out={out}: that is the model this export reads ({base}), which the run also needs (a LoRA run applies its '
      f'adapters to it); expected another folder, e.g. --out={out}-exported'
    )
  if (out / MARKER).is_file():  # replaced whole: said, with what it held (the base a PEFT adapter needs, say)
    try:
      held = json.loads((out / MARKER).read_text())
      what = f'{held.get("kind")} of {held.get("source")}' + (
        f' step {held["step"]}' if held.get('step') is not None else ''
      )
    except (OSError, ValueError, AttributeError):
      what = 'an earlier export'
    print(f'note: --out={out}: replacing the earlier export there ({what})', file=sys.stderr)
    return
  if not out.is_dir():
    return
  entries = sorted(p.name for p in out.iterdir())
  if not entries:
    return
  found = [f'{n}/' if (out / n).is_dir() else n for n in RUN_FILES if (out / n).exists()]
  config = out / 'config.json'
  if config.is_file():
    try:
      if runfs.config_kind(json.loads(config.read_text())) != 'export':
        found.append('config.json without model_type')
    except (OSError, ValueError):
      found.append('config.json without model_type')
  if found:
    raise errors.ConfigError(
      f'--out={out}: an rftjax run directory (it holds {", ".join(found)}); an export there would replace the '
      f"run's config.json, which evaluate, report and a resume read; expected a new folder or an earlier export's, "
      f'e.g. --out={out}-hf'
    )
  shown = ', '.join(entries[:6]) + (f', ... ({len(entries)} in all)' if len(entries) > 6 else '')
  raise errors.ConfigError(
    f'--out={out}: a folder of other files ({shown}) without {MARKER}, so no export of rftjax (an older one wrote '
    'none: delete it to reuse the name); an export replaces the whole folder; expected a new or empty folder, or an '
    'earlier export'
  )


def write_folder(out, write: Callable[[pathlib.Path], Any], provenance: dict) -> pathlib.Path:
  """Calls write(tmp) on a new folder beside `out`, adds MARKER (`provenance`: what the folder holds), then puts
  it in `out`'s place. An interrupted or failed export leaves `out` as it was; a replaced export leaves none of
  its files behind (an adapter beside merged weights made transformers apply it on load)."""
  out = pathlib.Path(out).absolute()
  if out.is_symlink():  # the export goes where the link points; renaming the link would leave the target stale
    out = out.resolve()
  out.parent.mkdir(parents=True, exist_ok=True)
  _clean_stale(out)
  mine = f'{socket.gethostname()}-{os.getpid()}'  # what _clean_stale reads: whose it is
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out.name}.partial-{mine}-', dir=out.parent))
  old = out.parent / f'.{out.name}.old-{mine}-{tmp.name.rsplit("-", 1)[-1]}'
  try:
    write(tmp)
    (tmp / MARKER).write_text(json.dumps(provenance, indent=2) + '\n')
    tmp.chmod(0o755)  # mkdtemp's folder is the user's alone; a model server may run as another
    with _stops_ignored():  # the two renames are the commit: once begun, done, and a Ctrl-C must not say otherwise
      if out.exists():
        out.rename(old)
      tmp.rename(out)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if old.exists() and not out.exists():  # between the two renames: the earlier export goes back
      old.rename(out)
    code = None if isinstance(e, OSError) else re.search(r'\(os error (\d+)\)', str(e))
    if code:  # safetensors' own error for a full disk: an OSError, which the command says in one line
      raise OSError(int(code[1]), os.strerror(int(code[1])), str(out)) from e
    raise
  while True:
    try:
      shutil.rmtree(old, ignore_errors=True)
      break
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM after the commit: the earlier export goes all the same
      continue
  return pathlib.Path(out)


@contextlib.contextmanager
def _stops_ignored():
  """Ctrl-C and SIGTERM do nothing inside the block (in the main thread, where Python runs its signal handlers; a
  blocked signal mask would not do: any thread may take the signal)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  before = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for s, handler in before.items():
      signal.signal(s, handler)


def _clean_stale(out: pathlib.Path) -> None:
  """What an export killed beside `out` on this machine left (kill -9, the OOM killer: no cleanup ran; names carry
  the host and pid): its partial folder goes, and an earlier export it had moved aside goes back when `out` is
  missing. Another machine's (a shared folder) are left alone: its pid says nothing here."""
  for p in sorted(out.parent.glob(f'.{glob.escape(out.name)}.*-*-*-*')):
    m = re.fullmatch(rf'\.{re.escape(out.name)}\.(partial|old)-(.+)-(\d+)-\w+', p.name)
    if not m or m[2] != socket.gethostname() or runfs.alive(int(m[3])):
      continue
    if m[1] == 'old' and not out.exists():
      p.rename(out)
    else:
      shutil.rmtree(p, ignore_errors=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m rftjax.export', description=__doc__.split('\n\n')[0])
  p.add_argument(
    '--out',
    required=True,
    help='output folder: new, empty or an earlier export (replaced whole); other folders are refused',
  )
  p.add_argument('--init', help='gguf:PATH, gguf:gemma3-270m, gguf:smollm2-135m or hf:DIR')
  p.add_argument('--model', help='with --init: model preset (e.g. gemma3_270m); default: read from the file')
  p.add_argument('--tokenizer', help="tokenizer spec (default: the --init file, or the run's)")
  p.add_argument('--workdir', help='a run directory: export its trained params')
  # default None, read as 'best': so that a --step given with --init is refused rather than ignored
  p.add_argument(
    '--step',
    default=None,
    help="with --workdir: 'best' (default), 'latest', a step number, or 0 (or 'init'): the run's initial model",
  )
  # the dtypes weights.export_hf documents and tests/test_weights.py round-trips; a choice, because numpy casts to
  # anything (int8 wrote all-zero weights); float16 is not offered: no export test covers it
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), help="the weights' dtype (default: the params')")
  p.add_argument('--adapter', action='store_true', help='with --workdir of a LoRA run: a PEFT adapter folder only')
  args = p.parse_args(argv)
  if bool(args.init) == bool(args.workdir):
    p.error('give exactly one of --init or --workdir')
  if args.adapter and not args.workdir:
    p.error('--adapter exports the adapters of a LoRA run: it needs --workdir')
  if args.init and args.step is not None:
    p.error(f'--step={args.step} picks a checkpoint of --workdir; --init={args.init} has no checkpoints: drop --step')
  if args.workdir and args.model:
    p.error(f"--model={args.model}: with --workdir the model is the run's (its config.json names it): drop --model")
  if runfs.is_remote(args.out):  # pathlib would make it a local folder named gs:
    p.error(f'--out={args.out}: expected a local folder; copy the export to the bucket afterwards with '
            f'`gcloud storage cp -r FOLDER {args.out}`')  # fmt: skip

  def body() -> int:
    cli.check_out(args.out, folder=True)  # before loading: the model may take minutes
    if pathlib.Path(args.out).exists():  # the export is written beside it, then takes its place
      cli.check_out(pathlib.Path(args.out).absolute().parent, folder=True, label=f'--out={args.out}')
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
    check_out_folder(args.out, config.get('init') or None)
    # one device, params only; a folder with no tokenizer files exports the model alone
    step = 'best' if args.step is None else args.step
    loaded = loader.load(config, workdir=args.workdir, step=step, tokenizer_required=bool(args.tokenizer))
    if loaded.tokenizer is None:
      print(f'note: no tokenizer exported ({source} names none that loads)', file=sys.stderr)
    if loaded.step is not None:
      source = f'{source} step {loaded.step}'
    cfg = loaded.cfg
    run = args.workdir and (args.workdir if runfs.is_remote(args.workdir) else os.path.abspath(args.workdir))
    provenance = {  # paths absolute: the export is read from other folders
      'source': str(run or _absolute(args.init)),
      'step': loaded.step,
      'kind': 'adapter' if args.adapter else 'merged' if cfg.lora else 'model',
      'base': _absolute(config.get('init')) or None,
      'dtype': args.dtype,  # None: the params' own
      'exported_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
    fmt = response_format.make(config.get('response_format')) if args.workdir else None
    if fmt is not None:  # every prompt it trained on ended in this text: a server sends it too, or answers drift
      provenance['response_format'] = {
        'spec': fmt.spec,
        'instruction': fmt.instruction(),
        'appended_to': 'the last user message, after a blank line',
      }
      print(f'note: {source} was trained with config.response_format: each prompt ended in its instruction, kept in '
            f'{MARKER}; send it the same way when serving (docs/openai_jobs.md)', file=sys.stderr)  # fmt: skip
    if args.adapter:
      adapters = loaded.params['lora']

      def write_adapter(tmp):
        weights.export_peft(adapters, cfg, tmp, base_model=config.init, dtype=args.dtype)
        if loaded.tokenizer is not None:  # PEFT's AutoPeftModel and TRL read the tokenizer, and its chat template
          # (the run's: a Qwen3 base's thinks by default), from the adapter's folder, as a merged export has it
          hf = hf_config.write(model.base_config(cfg))
          tokenizer_lib.write_tokenizer_files(loaded.tokenizer, tmp, hf)

      out = write_folder(args.out, write_adapter, provenance)
      print(f'exported the adapters of {source} (rank {cfg.lora.rank}, on {config.init}) to {out}')
      if not config.init.startswith('hf:'):  # adapter_config.json names a base transformers cannot resolve
        print(
          f'note: the base is {config.init}, which only rftjax resolves; write it as a Hugging Face folder with '
          f'`python -m rftjax.export --init={config.init} --out=BASE` and load the adapters with '
          f'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), {str(out)!r}) (docs/lora.md)',
          file=sys.stderr,
        )
      return 0
    # merged at --dtype: W + alpha/r * A @ B rounded to a bfloat16 base's dtype would drop the smaller updates
    params = lora.merge(loaded.params, cfg.lora, args.dtype) if cfg.lora else loaded.params
    base = model.base_config(cfg)
    generation = _hf_json(config.get('init') or '', 'generation_config.json')  # its sampling defaults travel on
    unapplied = untrained_processors(generation or {})
    if unapplied and args.workdir:  # they change even greedy output: the served model answers otherwise
      print(f'note: the base\'s generation_config.json sets {", ".join(unapplied)}, which rftjax never applied in '
            f'training or validation; transformers and vLLM apply it by default: take it out of '
            f'{args.out}/generation_config.json to serve as validated (docs/models.md)', file=sys.stderr)  # fmt: skip
    # a converted hf: folder keeps its dtype (its params load as float32: a bfloat16 model doubled in size)
    dtype = args.dtype
    if dtype is None and args.init:
      folder = _hf_json(args.init, 'config.json') or {}
      stated = folder.get('dtype') or folder.get('torch_dtype')  # transformers 5 writes `dtype`
      dtype = stated if stated in ('float32', 'bfloat16') else None
    out = write_folder(
      args.out,
      lambda tmp: weights.export_hf(params, base, tmp, loaded.tokenizer, dtype=dtype, generation=generation),
      provenance,
    )
    print(f'exported {source} ({cfg.name}{", adapters merged" if cfg.lora else ""}) to {out}')
    return 0

  return cli.run(body)


# generation_config.json settings that change which token decoding picks, none of which rftjax's sampler applies,
# with the value each has when it does nothing
PROCESSORS = {'repetition_penalty': 1.0, 'encoder_repetition_penalty': 1.0, 'no_repeat_ngram_size': 0,
              'bad_words_ids': None, 'suppress_tokens': None, 'begin_suppress_tokens': None, 'min_length': 0,
              'min_new_tokens': 0, 'forced_bos_token_id': None, 'forced_eos_token_id': None,
              'exponential_decay_length_penalty': None, 'sequence_bias': None}  # fmt: skip


def _absolute(spec: str | None) -> str | None:
  """A model spec with its local path made absolute (`hf:models/x` -> `hf:/home/me/models/x`); a package's GGUF
  (`gguf:NAME`), a URL or a preset name as it is."""
  kind, sep, rest = (spec or '').partition(':')
  if sep and kind in ('hf', 'gguf', 'sp') and os.path.exists(rest):
    return f'{kind}:{os.path.abspath(rest)}'
  return spec


def untrained_processors(generation: dict) -> list[str]:
  """'key=value' for each of PROCESSORS that `generation` (a generation_config.json) sets to act (a forced token
  id of 0 acts: it is Gemma's pad)."""
  return [f'{k}={json.dumps(generation[k])}' for k, idle in PROCESSORS.items()
          if generation.get(k) not in (idle, None, [])]  # fmt: skip


def _hf_json(init: str, name: str) -> dict | None:
  """The JSON object `name` in an hf: folder; None for a GGUF, or a folder that is gone or lacks the file."""
  path = pathlib.Path(init[3:]) / name if init.startswith('hf:') else None
  if path is None or not path.is_file():
    return None
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f'{path}: cannot read it ({e}); expected a JSON object') from None
  return value if isinstance(value, dict) else None


if __name__ == '__main__':
  cli.command(main)
