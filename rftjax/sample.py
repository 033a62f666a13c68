"""Completions for a file of prompts, from a run's checkpoint or from pretrained / random weights.

  python -m rftjax.sample --workdir=runs/tiny [--step=best|latest|N] --prompts=p.jsonl --out=out.jsonl
  python -m rftjax.sample --init=gguf:smollm2-135m --prompts=p.jsonl --out=out.jsonl --max_new_tokens=64

A prompt line is either the training format `{"messages": [...]}` (rendered with the chat template) or
`{"text": "..."}` (raw text, BOS as the tokenizer adds it). Each output line keeps the input line's fields and adds
`completion` (text), `tokens` (ids through the stop token), `logprobs` (per token, under the temperature-scaled
policy), `truncated` and `source` (file:line). Greedy by default (--temperature=0). Progress goes to stderr.
See docs/cli.md.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import re
import sys

import jax
from etils import epath

from rftjax import cli
from rftjax import data as data_lib
from rftjax import errors
from rftjax import inference
from rftjax import loader
from rftjax import multihost
from rftjax import response_format
from rftjax import runfs
from rftjax import tokenizer as tokenizer_lib

log = logging.getLogger('rftjax')


def add_model_flags(p: argparse.ArgumentParser) -> None:
  """Flags shared by the inference CLIs: which model to load, and how long and in what batches it samples."""
  p.add_argument('--workdir', help='a run directory (config.json + checkpoints/)')
  # default None, read as 'best': so that a --step given with --init is refused rather than ignored
  p.add_argument(
    '--step',
    default=None,
    help="with --workdir, the checkpoint: 'best' (default), 'latest', a number, or 0 (or 'init'): the initial model",
  )
  p.add_argument('--init', help="instead of --workdir: 'gguf:PATH', 'gguf:smollm2-135m', 'hf:DIR', or '' (random)")
  p.add_argument('--model', help="model preset (default: the run's, or what the --init file states)")
  p.add_argument('--tokenizer', help="tokenizer spec (default: the run's, or the --init file's)")
  p.add_argument(
    '--chat_template', choices=tokenizer_lib.TEMPLATES, help="a named chat template (default: the tokenizer's)"
  )
  p.add_argument(
    '--max_new_tokens',
    type=int,
    default=None,
    help="tokens per completion, >= 1 (default: the run's sampling.max_new_tokens, else 128)",
  )
  p.add_argument(
    '--batch_size',
    type=int,
    default=None,
    help="prompts per compiled batch, >= 1 (default: the run's eval_batch_size, else 32)",
  )
  p.add_argument(
    '--stop',
    action='append',
    type=escaped,
    help="an extra stop string (one token or several), repeatable; escapes work: --stop='\\n' (default: the "
    "run's config.sampling.stop)",
  )
  # several hosts (a pod slice: automatic; elsewhere: the same command on each, with these three flags)
  p.add_argument('--coordinator', help='host:port of process 0, to run on several hosts as one')
  p.add_argument('--num_processes', type=int, help='with --coordinator: how many processes')
  p.add_argument('--process_id', type=int, help="with --coordinator: this process's index")


def escaped(text: str) -> str:
  """A flag's backslash escapes (`\\n`, `\\t`, `\\u3002`) resolved; other characters stay as typed (unicode_escape
  alone reads a non-ASCII character's UTF-8 bytes as Latin-1: '。' would become 'ã\\x80\\x82')."""
  text = text.encode('latin-1', 'backslashreplace').decode('unicode_escape')
  if not text:  # before the model loads (argparse words it as "argument --stop: ...")
    raise argparse.ArgumentTypeError("found '', expected a non-empty string")
  return text


def load_from_args(args, before=None) -> loader.Loaded:
  """The model --workdir/--step or --init (with --model, --tokenizer, --chat_template) name, on this machine (and
  the others of a multi-host run, which JAX joins here). before: called with (the model's config, its tokenizer)
  once the tokenizer has loaded, before the weights do: the prompts' checks that need the chat template fail there,
  not minutes later. Errors name the flags that set a key (`--model=...`), not `config.model`."""
  multihost.initialize('auto', args.coordinator, args.num_processes, args.process_id)
  flags = [key for key in ('model', 'tokenizer', 'chat_template', 'init') if getattr(args, key, None)]
  try:
    if args.workdir is not None:
      config = runfs.read_config(args.workdir)
      with config.unlocked():
        for key in ('model', 'tokenizer', 'chat_template'):
          if getattr(args, key):
            config[key] = getattr(args, key)
      step = 'best' if args.step is None else args.step
      where = dict(mesh=loader.inference_mesh(config.get('mesh')), workdir=args.workdir, step=step)
    else:
      if not args.init and not (args.model and args.tokenizer):
        raise errors.ConfigError('--init="" (random weights) needs --model=<preset> and --tokenizer=<spec>')
      config = loader.model_spec(
        model=args.model or '', init=args.init, tokenizer=args.tokenizer or '', chat_template=args.chat_template or ''
      )
      where = dict(mesh=loader.inference_mesh())
    tok = loader.load_tokenizer(config)
    if before is not None:
      before(config, tok)
    return loader.load(config, tokenizer=tok, **where)
  except errors.ConfigError as e:
    message = str(e)
    for key in flags:  # the value came from the flag: say so
      message = re.sub(rf'^config\.{key}\b', f'--{key}', message)
    if not message.startswith('--'):  # a file the run's config.json names (loader.load gets the tokenizer here)
      message += loader.run_paths_note(args.workdir, e)
    raise errors.ConfigError(message) from None


def max_new_tokens(args, loaded: loader.Loaded) -> int:
  """--max_new_tokens, else the run's `sampling.max_new_tokens` (what its validation used), else 128."""
  if args.max_new_tokens is not None:  # never `or`: 0 is refused by cli.check_inference_flags, not read as unset
    return args.max_new_tokens
  return int(loaded.config.get('sampling', {}).get('max_new_tokens') or 128)


def batch_size(args, loaded: loader.Loaded) -> int:
  """--batch_size, else the run's `eval_batch_size`, else 32."""
  if args.batch_size is not None:
    return args.batch_size
  return int(loaded.config.get('eval_batch_size') or 32)


def write_out(path, rows: list[dict]) -> None:
  """data.write_jsonl, where a failed write (checked by cli.check_out before the work, but the disk can fill or a
  folder appear meanwhile) is one line naming --out and exit 1 (write_jsonl leaves no temp file behind)."""
  try:
    data_lib.write_jsonl(path, rows)
  except OSError as e:
    raise errors.OutputError(f'--out={path}: cannot write it ({e.strerror or e})') from None


def read_prompts(path: str | pathlib.Path) -> list[tuple[dict, data_lib.Example]]:
  """(the line as a dict, its Example) per non-blank line; a `{"text": ...}` line is an Example with `text`."""
  given, path = path, epath.Path(path)  # local or gs://
  if not path.is_file():
    raise data_lib.DataError(f'{path}: no such file{runfs.missing_where(given)} (--prompts){runfs.tilde_hint(given)}')
  out = []
  for where, line in data_lib.lines(path):
    try:
      obj = data_lib.loads(line, where)
    except data_lib.DataError:
      obj = None  # parse_line words the error
    if isinstance(obj, dict) and 'messages' not in obj and 'text' in obj:
      if not isinstance(obj['text'], str):
        raise data_lib.DataError(f'{where}: "text" must be a string, got {type(obj["text"]).__name__}')
      out.append((obj, data_lib.Example(messages=(), item=obj, source=where, text=obj['text'])))
    else:
      try:
        ex = data_lib.parse_line(line, where)
      except data_lib.DataError as e:
        raise data_lib.DataError(f'{e} (a prompt line is {{"messages": [...]}} or {{"text": "..."}})') from None
      out.append((obj, ex))
  if not out:
    raise data_lib.DataError(f'{path}: no prompts (the file is empty)')
  return out


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m rftjax.sample', description=__doc__.split('\n')[0])
  add_model_flags(p)
  p.add_argument('--prompts', required=True, help='JSONL: {"messages": [...]} or {"text": "..."} per line')
  p.add_argument('--out', required=True, help='output JSONL, one line per prompt')
  p.add_argument('--temperature', type=float, default=0.0, help='>= 0; 0 = greedy')
  p.add_argument('--top_p', type=float, default=None, help="in (0, 1]; 1 = off (default: the run's, else 1)")
  p.add_argument('--top_k', type=int, default=None, help="0 = off, >= 0 (default: the run's, else 0)")
  p.add_argument('--seed', type=int, default=0, help='the sampling rng (with --temperature > 0)')
  args = p.parse_args(argv)
  cli.check_inference_flags(p, args)
  return args


def main(argv=None) -> int:
  """Returns the exit status: 0, or 2 with the reason on stderr (argparse errors raise SystemExit(2))."""
  args = parse_args(argv)

  def body() -> int:
    cli.check_out(args.out, inputs={'--prompts': args.prompts})  # a bad --out fails before the sampling
    prompts = read_prompts(args.prompts)  # bad input fails before the model loads
    ids = []

    def encode(config, tok):  # the chat template's and the tools' checks too
      if int(config.get('max_episode_steps') or 1) > 1:
        log.warning(
          "this run trained multi-turn episodes with tools; rftjax.sample writes each prompt's first turn and calls "
          'no tool (a tool call ends it): rftjax.evaluate runs whole episodes'
        )
      fmt = response_format.make(config.get('response_format'))  # a run trained to answer in JSON
      ids.extend(data_lib.encode_prompts([ex for _, ex in prompts], tok, response_format=fmt))

    loaded = load_from_args(args, before=encode)
    sampler = inference.make_sampler(
      loaded,
      ids,
      max_new_tokens=max_new_tokens(args, loaded),
      temperature=args.temperature,
      top_p=args.top_p,
      top_k=args.top_k,
      stop=args.stop,
    )
    outs = inference.complete(
      sampler,
      loaded.params,
      ids,
      loaded.tokenizer,
      mesh=loaded.mesh,
      batch_size=batch_size(args, loaded),
      rng=jax.random.key(args.seed),
      progress=cli.progress('sampling'),
    )
    rows = [
      {
        **obj,
        'source': ex.source,
        'completion': o['text'],
        'tokens': o['tokens'],
        'logprobs': o['logprobs'],
        'truncated': o['truncated'],
      }
      for (obj, ex), o in zip(prompts, outs)
    ]
    multihost.on_process_0(write_out, args.out, rows)  # a failure is every host's (exit 1)
    if jax.process_index() == 0:
      print(f'wrote {len(rows)} completions to {args.out}', file=sys.stderr)
    return 0

  return cli.run(body)


if __name__ == '__main__':
  cli.command(main)
