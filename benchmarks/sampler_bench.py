"""Sampler throughput: rftjax's `Sampler` vs transformers' `generate` on the same CPU, same weights, same prompts.

  python benchmarks/sampler_bench.py --model gemma3_270m --batch 1,8,32 --prompt_len 64 --new_tokens 64 --repeats 3
  python benchmarks/sampler_bench.py --model gemma3_270m --batch 64 --num_generations 8 ...   # 8 prompts x G=8

Both sides run the same pip-installed GGUF (rftjax via `weights.load`, transformers via its own GGUF loader), in
float32, greedy, with EOS stopping disabled so every row generates exactly `--new_tokens` tokens (rftjax
`stop_ids=()`; transformers `eos_token_id=None`, `min_new_tokens=max_new_tokens`). Prompts are real tokenized text
of varying length (the longest `--prompt_len`), left-padded to `--prompt_len` with the tokenizer's pad id and passed
to both sides as the same token and mask arrays. torch gets as many threads as JAX's CPU client uses (the cores this
process may run on). Per batch size: rftjax is compiled (timed separately: lower + XLA compile) and both sides get
one untimed warm-up call; then `--repeats` timed calls alternate rftjax / transformers so that load from other jobs
hits both alike, and the median is reported. Throughput = batch x new_tokens / seconds (prefill included).
With `--num_generations G` each batch is batch/G distinct prompts, each completed G times (GRPO's rollouts):
rftjax's sampler with `group_size=G` (one prefill per prompt) against `generate(num_return_sequences=G)`, both
sampling at temperature 1 without top-k/top-p (transformers allows G > 1 only when sampling), so the outputs
differ and only their lengths are checked.

Roofline: at the start the benchmark measures this machine's f32 matmul rate (jitted 2048x2048 matmul) and
memory bandwidth (a jitted sum over 1 GiB); a shape's roofline time is the prefill's FLOPs at that rate plus, per
new token, the larger of the decode step's FLOPs at that rate and its bytes (all weights once, the KV cache read,
a shared prompt's keys once per group) at that bandwidth. "% roofline" = roofline time / measured time.
The markdown table is printed last; the JSON (with nproc, load averages, versions) goes to `--out`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rftjax import gguf_io  # noqa: E402
from rftjax import pretrained  # noqa: E402
from rftjax import sampler as sampler_lib  # noqa: E402
from rftjax import tokenizer as tokenizer_lib  # noqa: E402
from rftjax import weights  # noqa: E402

MODELS = {'gemma3_270m': 'gguf:gemma3-270m', 'smollm2_135m': 'gguf:smollm2-135m'}

TEXT = (
  'The old lighthouse keeper climbed the spiral stairs every evening, counting the steps as his father had '
  'taught him: one hundred and twelve, never more, never fewer. From the lamp room he could see the fishing '
  'boats returning, the gulls circling the harbour, and the long grey line of the northern cliffs. He wrote '
  'the weather in a small leather book, and on quiet nights he read old letters from his sister, who had '
  'moved to the city years ago and now worked in a bakery near the river. In spring the storms eased, the '
  'ferry came twice a week, and children from the village climbed the hill to ask about the light. '
)


def log(msg: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def load_params(cfg, path: pathlib.Path):
  """weights.load from the GGUF, or the float32 conversion tests/test_real_models.py cached for this very file and
  this very loader code (read only; never written here)."""
  cache = pathlib.Path(os.environ.get('RFTJAX_TEST_CACHE', pathlib.Path.home() / '.cache' / 'rftjax-tests'))
  cache = cache / 'real_models'
  st = path.stat()
  stamp = cache / f'{path.name}.{st.st_size}.{st.st_mtime_ns}.sha256'
  if stamp.is_file():
    sha = stamp.read_text().strip()
    code = hashlib.sha256(b''.join(pathlib.Path(m.__file__).read_bytes() for m in (weights, gguf_io))).hexdigest()
    cached = cache / f'{cfg.name}-{sha[:16]}-{code[:8]}-params.safetensors'
    if cached.is_file():
      import safetensors.numpy

      tree: dict = {}
      for key, value in safetensors.numpy.load_file(cached).items():
        *parents, leaf = key.split('.')
        node = tree
        for p in parents:
          node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value, jnp.float32)
      return tree, f'cache:{cached.name}'
  return weights.load(f'gguf:{path}', cfg), 'gguf'


def make_prompts(tok, batch: int, prompt_len: int) -> list[list[int]]:
  """`batch` different windows of real text; lengths from prompt_len down to ~3/4 of it (row 0 is the longest)."""
  body = tok.encode(TEXT * 8, add_bos=False)
  bos = [tok.bos_id] if tok.add_bos else []
  spread = max(1, prompt_len // 4 + 1)
  prompts = []
  for i in range(batch):
    n = prompt_len - (i * 5) % spread - len(bos)
    start = (i * 13) % (len(body) - prompt_len)
    prompts.append(bos + body[start : start + n])
  return prompts


def cpu_name() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def median(xs):
  return statistics.median(xs) if xs else None


def machine_peaks(repeats: int = 7) -> dict:
  """This machine's f32 matmul FLOP/s and memory read bandwidth, measured now (medians)."""
  a = jnp.ones((2048, 2048), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  big = jnp.ones((1 << 28,), jnp.float32)  # 1 GiB
  total = jax.jit(jnp.sum)

  def timed(f, x):
    jax.block_until_ready(f(x))
    ts = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(f(x))
      ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

  flops = 2 * 2048**3 / timed(mm, a)
  bandwidth = big.nbytes / timed(total, big)
  del big
  return {'matmul_flop_s': flops, 'mem_bytes_s': bandwidth}


def roofline_s(cfg, params, rows: int, prompts: int, prompt_len: int, new_tokens: int, peaks: dict) -> float:
  """Seconds this shape needs at the machine's peaks (docstring at the top)."""
  sizes = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in params.items()}
  unembed = cfg.vocab_size * cfg.d_model
  body = sum(sizes.values()) - sizes['embed'] - sizes.get('lm_head', 0)  # per-token matmul weights
  weight_bytes = 4 * (body + unembed)
  prefill = 2 * body * prompts * prompt_len + 2 * unembed * prompts
  slots = prompts * prompt_len + rows * new_tokens  # a shared prompt's keys are held (and read) once
  kv_bytes = 2 * 4 * cfg.num_layers * slots * cfg.num_kv_heads * cfg.head_dim
  step = max(2 * (body + unembed) * rows / peaks['matmul_flop_s'], (weight_bytes + kv_bytes) / peaks['mem_bytes_s'])
  return prefill / peaks['matmul_flop_s'] + new_tokens * step


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--model', default='gemma3_270m', choices=sorted(MODELS))
  ap.add_argument('--batch', default='1,8,32', help='comma-separated batch sizes')
  ap.add_argument('--prompt_len', type=int, default=32)
  ap.add_argument('--new_tokens', type=int, default=32)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--num_generations', type=int, default=1, help='G: rows are batch/G prompts, each completed G times')
  ap.add_argument('--out', default=None, help='default: benchmarks/results/sampler_<model>.json')
  ap.add_argument('--skip_hf', action='store_true', help='rftjax only (no transformers)')
  args = ap.parse_args()
  batches = [int(b) for b in args.batch.split(',') if b.strip()]
  g = args.num_generations
  if any(b % g for b in batches):
    ap.error(f'--batch: every batch size must be a multiple of --num_generations={g}')
  suffix = f'_g{g}' if g > 1 else ''
  out_path = pathlib.Path(args.out or pathlib.Path(__file__).parent / 'results' / f'sampler_{args.model}{suffix}.json')

  load_start = os.getloadavg()
  t_start = time.time()
  threads = len(os.sched_getaffinity(0))  # what XLA's CPU client sizes its intra-op pool by
  path = pathlib.Path(pretrained.resolve(MODELS[args.model]).partition(':')[2])
  cfg = weights.config_from_file(f'gguf:{path}', args.model)
  tok = tokenizer_lib.load_tokenizer(f'gguf:{path}')
  pad_id = int(tok.pad_id if tok.pad_id is not None else 0)
  t0 = time.time()
  params, params_from = load_params(cfg, path)
  log(f'rftjax params from {params_from} in {time.time() - t0:.1f} s')
  peaks = machine_peaks()
  log(f'machine: {peaks["matmul_flop_s"] / 1e9:.0f} GFLOP/s f32 matmul, {peaks["mem_bytes_s"] / 1e9:.1f} GB/s reads')

  hf = None
  if not args.skip_hf:
    import torch
    import transformers

    torch.set_num_threads(threads)
    t0 = time.time()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    hf_load_s = time.time() - t0
    log(
      f'transformers model from GGUF in {hf_load_s:.1f} s '
      f'(attn={hf.config._attn_implementation}, torch threads={torch.get_num_threads()})'
    )

  all_prompts = make_prompts(tok, max(batches) // g, args.prompt_len)
  rows = []
  for b in batches:
    distinct = all_prompts[: b // g]
    tokens, mask = sampler_lib.pad_prompts([p for p in distinct for _ in range(g)], args.prompt_len, pad_id)
    row: dict = {
      'batch': b,
      'prompts': b // g,
      'num_generations': g,
      'prompt_lens': [len(p) for p in distinct],
      'load_before': os.getloadavg(),
      'roofline_s': roofline_s(cfg, params, b, b // g, args.prompt_len, args.new_tokens, peaks),
    }
    sampler = sampler_lib.Sampler(
      cfg,
      args.prompt_len,
      args.new_tokens,
      (),
      pad_id,
      sampler_lib.SamplingParams(temperature=1.0 if g > 1 else 0.0),
      group_size=g,
    )
    jt, jm, rng = jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0)

    # rftjax: compile (ahead of time, timed apart), then an untimed warm-up through the public call.
    t0 = time.perf_counter()
    lowered = sampler_lib._start.lower(sampler, params, jt, jm, rng, False)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    jax.block_until_ready(sampler(params, jt, jm, rng))
    t3 = time.perf_counter()
    row.update(rftjax_lower_s=t1 - t0, rftjax_compile_s=t2 - t1, rftjax_first_call_s=t3 - t2)
    log(f'batch {b}: rftjax lower {t1 - t0:.1f} s, compile {t2 - t1:.1f} s, first call {t3 - t2:.2f} s')

    if hf is not None:
      import torch

      ids, am = torch.from_numpy(tokens[::g].astype(np.int64)), torch.from_numpy(mask[::g].astype(np.int64))

      def hf_generate():
        with torch.inference_mode():
          return hf.generate(
            ids,
            attention_mask=am,
            do_sample=g > 1,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            eos_token_id=None,
            pad_token_id=pad_id,
            temperature=1.0 if g > 1 else None,
            top_p=1.0 if g > 1 else None,
            top_k=0 if g > 1 else None,
            num_return_sequences=g,
          )

      t0 = time.perf_counter()
      hf_generate()
      row['hf_first_call_s'] = time.perf_counter() - t0
      log(f'batch {b}: transformers warm-up {row["hf_first_call_s"]:.1f} s')

    ours_s, hf_s = [], []
    for r in range(args.repeats):
      t0 = time.perf_counter()
      out = jax.block_until_ready(sampler(params, jt, jm, rng))
      ours_s.append(time.perf_counter() - t0)
      if hf is not None:
        t0 = time.perf_counter()
        gen = hf_generate()
        hf_s.append(time.perf_counter() - t0)
      log(f'batch {b} repeat {r}: rftjax {ours_s[-1]:.2f} s' + (f', transformers {hf_s[-1]:.2f} s' if hf_s else ''))
    ours_tokens = np.asarray(out.tokens)
    assert ours_tokens.shape == (b, args.new_tokens) and bool(np.all(np.asarray(out.lengths) == args.new_tokens))
    n_tok = b * args.new_tokens
    row.update(rftjax_s=ours_s, rftjax_median_s=median(ours_s), rftjax_tok_s=n_tok / median(ours_s))
    row['roofline_share'] = row['roofline_s'] / median(ours_s)
    if hf is not None:
      hf_tokens = gen[:, args.prompt_len :].numpy()
      assert hf_tokens.shape == (b, args.new_tokens), hf_tokens.shape
      same = ours_tokens == hf_tokens if g == 1 else np.zeros_like(ours_tokens, bool)
      first_diff = [int(np.argmin(s)) if not s.all() else args.new_tokens for s in same]
      row.update(
        hf_s=hf_s,
        hf_median_s=median(hf_s),
        hf_tok_s=n_tok / median(hf_s),
        ratio=median(hf_s) / median(ours_s),
        greedy_rows_identical=int(sum(s.all() for s in same)),
        greedy_mean_tokens_before_first_difference=float(np.mean(first_diff)),
      )
    row['load_after'] = os.getloadavg()
    rows.append(row)

  import jaxlib

  info = {
    'model': args.model,
    'gguf': path.name,
    'params_from': params_from,
    'prompt_len': args.prompt_len,
    'new_tokens': args.new_tokens,
    'repeats': args.repeats,
    'num_generations': g,
    'peaks': peaks,
    'dtype': 'float32',
    'decoding': 'greedy, no EOS stop' if g == 1 else 'temperature 1 sampling, no EOS stop',
    'pad_id': pad_id,
    'machine': {
      'nproc': os.cpu_count(),
      'affinity_cpus': threads,
      'cpu': cpu_name(),
      'platform': platform.platform(),
      'loadavg_start': load_start,
      'loadavg_end': os.getloadavg(),
      'jax_devices': [str(d) for d in jax.devices()],
    },
    'versions': {
      'python': platform.python_version(),
      'jax': jax.__version__,
      'jaxlib': jaxlib.__version__,
      'numpy': np.__version__,
    },
    'total_s': None,
    'rows': rows,
  }
  if hf is not None:
    import torch
    import transformers

    info['versions'].update(torch=torch.__version__, transformers=transformers.__version__)
    info['hf'] = {
      'load_s': hf_load_s,
      'attn_implementation': hf.config._attn_implementation,
      'torch_threads': torch.get_num_threads(),
    }
  info['total_s'] = time.time() - t_start
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text(json.dumps(info, indent=1) + '\n')
  log(f'wrote {out_path}')

  la0, la1 = load_start[0], info['machine']['loadavg_end'][0]
  print(
    f'\n{args.model}, float32 {"greedy" if g == 1 else "sampling at temperature 1"}, prompt {args.prompt_len} '
    f'(left-padded), {args.new_tokens} new tokens, '
    f'{"G=" + str(g) + " completions per prompt, " if g > 1 else ""}'
    f'median of {args.repeats}; {threads} CPU threads; load average {la0:.2f} -> {la1:.2f} on nproc='
    f'{os.cpu_count()}; machine {peaks["matmul_flop_s"] / 1e9:.0f} GFLOP/s, {peaks["mem_bytes_s"] / 1e9:.1f} GB/s\n'
  )
  if hf is not None:
    print(
      '| batch | rftjax tok/s | transformers tok/s | ratio (rftjax / HF) | rftjax compile s | rftjax s | HF s '
      '| identical greedy rows | roofline s | % roofline |'
    )
    print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for r in rows:
      same = f'{r["greedy_rows_identical"]}/{r["batch"]}' if g == 1 else 'sampled'
      print(
        f'| {r["batch"]} | {r["rftjax_tok_s"]:.1f} | {r["hf_tok_s"]:.1f} | {r["ratio"]:.2f}x '
        f'| {r["rftjax_lower_s"] + r["rftjax_compile_s"]:.1f} | {r["rftjax_median_s"]:.2f} '
        f'| {r["hf_median_s"]:.2f} | {same} '
        f'| {r["roofline_s"]:.2f} | {100 * r["roofline_share"]:.0f}% |'
      )
  else:
    print('| batch | rftjax tok/s | rftjax compile s | rftjax s | roofline s | % roofline |')
    print('|---:|---:|---:|---:|---:|---:|')
    for r in rows:
      print(
        f'| {r["batch"]} | {r["rftjax_tok_s"]:.1f} | {r["rftjax_lower_s"] + r["rftjax_compile_s"]:.1f} '
        f'| {r["rftjax_median_s"]:.2f} | {r["roofline_s"]:.2f} | {100 * r["roofline_share"]:.0f}% |'
      )


if __name__ == '__main__':
  main()
