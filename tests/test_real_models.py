"""rftjax on real pretrained weights equals transformers on the same dequantized GGUF (marker: real_weights).

For Gemma 3 270M (base) and SmolLM2-135M-Instruct, from the pip-installed GGUFs:
  * logits on a short prompt and on a 600-token prompt (past Gemma's 512-token sliding window) match
    transformers' own GGUF loading (PyTorch, CPU, float32) within 1e-3 of the logit range;
  * 64 greedy tokens from rftjax's sampler equal transformers' `generate`;
  * `weights.export_hf` writes a folder that transformers loads as-is, giving the same logits, and whose tokenizer
    (AutoTokenizer) encodes like rftjax's.

Slow parts are cached under $RFTJAX_TEST_CACHE/real_models/, keyed on the GGUF's sha256: the converted float32 weights
(safetensors) and transformers' reference outputs (transformers spends ~30 s parsing a GGUF vocabulary). Delete the
folder, or set RFTJAX_REFRESH_REFERENCE=1, to recompute the reference with transformers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rftjax import gguf_io
from rftjax import hf_config
from rftjax import model as model_lib
from rftjax import pretrained
from rftjax import sampler as sampler_lib
from rftjax import tokenizer as tokenizer_lib
from rftjax import weights

pytestmark = pytest.mark.real_weights

CACHE = pathlib.Path(os.environ['RFTJAX_TEST_CACHE']) / 'real_models'
TOLERANCE = 1e-3  # max |rftjax - transformers| / (max - min of transformers' logits)
LONG_LEN = 600
LONG_KEEP = 32  # positions compared at the end of the long prompt (all past the sliding window)
NEW_TOKENS = 64

PARAGRAPH = (
  'The old lighthouse keeper climbed the spiral stairs every evening, counting the steps as his father '
  'had taught him: one hundred and twelve, never more, never fewer. From the lamp room he could see the '
  'fishing boats returning, the gulls circling the harbour, and the long grey line of the northern '
  'cliffs. He wrote the weather in a small leather book, and on quiet nights he read old letters. '
)


@dataclasses.dataclass(frozen=True)
class Case:
  preset: str
  init: str
  messages: tuple | None  # chat prompt for the greedy test (instruct models); else `text`
  text: str


CASES = {
  'gemma3_270m': Case(
    'gemma3_270m', 'gguf:gemma3-270m', None, 'Q: What is 2 + 3?\nA: 5\nQ: What is 7 + 6?\nA: 13\nQ: What is 12 + 9?\nA:'
  ),
  'smollm2_135m': Case(
    'smollm2_135m', 'gguf:smollm2-135m', ({'role': 'user', 'content': 'What is 12 + 9? Answer in one sentence.'},), ''
  ),
}


def _sha256(path: pathlib.Path) -> str:
  stamp = CACHE / f'{path.name}.{path.stat().st_size}.{path.stat().st_mtime_ns}.sha256'
  if stamp.is_file():
    return stamp.read_text().strip()
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      h.update(chunk)
  CACHE.mkdir(parents=True, exist_ok=True)
  tmp = stamp.with_name(f'{stamp.name}.tmp{os.getpid()}')  # test workers may race (pytest -n 2)
  tmp.write_text(h.hexdigest())
  os.replace(tmp, stamp)
  return h.hexdigest()


def _gguf_path(init: str) -> pathlib.Path:
  try:
    return pathlib.Path(pretrained.resolve(init).partition(':')[2])
  except pretrained.MissingWeightsError as e:
    pytest.skip(str(e))


def _load_params(cfg, path: pathlib.Path, sha: str):
  """weights.load from the GGUF, or the cached conversion of the very same file."""
  import safetensors.numpy

  # Keyed on the loader's own source too: a change to weights.py / gguf_io.py re-runs the real conversion.
  code = hashlib.sha256(b''.join(pathlib.Path(m.__file__).read_bytes() for m in (weights, gguf_io))).hexdigest()
  cached = CACHE / f'{cfg.name}-{sha[:16]}-{code[:8]}-params.safetensors'
  for stale in CACHE.glob(f'{cfg.name}-{sha[:16]}-*-params.safetensors'):
    if stale != cached:
      stale.unlink(missing_ok=True)
  if cached.is_file():
    flat = safetensors.numpy.load_file(cached)
    tree: dict = {}
    for key, value in flat.items():
      *parents, leaf = key.split('.')
      node = tree
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = jnp.asarray(value)
    return tree, 'cache'
  params = weights.load(f'gguf:{path}', cfg)
  flat = {'.'.join(k.key for k in keys): np.asarray(v) for keys, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  tmp = cached.with_name(f'{cached.name}.tmp{os.getpid()}')
  safetensors.numpy.save_file(flat, tmp)
  os.replace(tmp, cached)
  return params, 'gguf'


def _reference(case: Case, path: pathlib.Path, sha: str, prompts: dict) -> dict:
  """transformers' outputs for the prompts, loaded from the GGUF by transformers itself (cached)."""
  import transformers

  key = json.dumps(
    {
      'prompts': {k: list(map(int, v)) for k, v in prompts.items()},
      'new': NEW_TOKENS,
      'keep': LONG_KEEP,
      'transformers': transformers.__version__,
    }
  )
  key = hashlib.sha256(key.encode()).hexdigest()[:12]
  cached = CACHE / f'{case.preset}-{sha[:16]}-reference-{key}.npz'
  if cached.is_file() and not os.environ.get('RFTJAX_REFRESH_REFERENCE'):
    return dict(np.load(cached))
  import torch

  torch.set_num_threads(max(1, os.cpu_count() or 1))
  tm = transformers.AutoModelForCausalLM.from_pretrained(
    str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
  ).eval()
  with torch.no_grad():
    out = {
      'short': tm(torch.tensor([prompts['short']])).logits[0].numpy(),
      'long': tm(torch.tensor([prompts['long']]), logits_to_keep=LONG_KEEP).logits[0].numpy(),
    }
    ids = torch.tensor([prompts['greedy']])
    gen = tm.generate(
      ids,
      attention_mask=torch.ones_like(ids),
      do_sample=False,
      max_new_tokens=NEW_TOKENS,
      min_new_tokens=0,
      eos_token_id=None,
      pad_token_id=0,
    )
    out['greedy'] = gen[0, ids.shape[1] :].numpy()
  CACHE.mkdir(parents=True, exist_ok=True)
  tmp = cached.with_name(f'{cached.stem}.tmp{os.getpid()}.npz')
  np.savez(tmp, **out)
  os.replace(tmp, cached)
  return out


@functools.partial(jax.jit, static_argnames=('cfg', 'keep'))
def _logits(params, tokens, cfg, keep=0):
  """Logits of one unpadded sequence; `keep` > 0: only the last `keep` positions."""
  t = tokens.shape[1]
  positions = jnp.arange(t, dtype=jnp.int32)[None]
  mask = jnp.ones((1, t), bool)
  hidden, _ = model_lib.forward(params, cfg, tokens, positions, mask, return_hidden=True)
  if keep:
    hidden = hidden[:, -keep:]
  return model_lib.unembed(params, cfg, hidden)[0]


def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / (ref.max() - ref.min()))


RESULTS: dict = {}


@pytest.fixture(scope='module', params=sorted(CASES))
def real(request):
  case = CASES[request.param]
  path = _gguf_path(case.init)
  sha = _sha256(path)
  cfg = weights.config_from_file(f'gguf:{path}', case.preset)
  tok = tokenizer_lib.load_tokenizer(f'gguf:{path}')
  long_ids = tok.encode_text(PARAGRAPH * 8)[:LONG_LEN]
  assert len(long_ids) == LONG_LEN
  greedy = tok.encode_prompt(list(case.messages)) if case.messages else tok.encode_text(case.text)
  prompts = {
    'short': tok.encode_text('The capital of France is Paris, and the capital of Italy is'),
    'long': long_ids,
    'greedy': greedy,
  }
  t0 = time.time()
  params, source = _load_params(cfg, path, sha)
  t1 = time.time()
  ref = _reference(case, path, sha, prompts)
  t2 = time.time()
  RESULTS[case.preset] = {'params_from': source, 'load_s': round(t1 - t0, 1), 'reference_s': round(t2 - t1, 1)}
  yield dict(case=case, cfg=cfg, tok=tok, params=params, prompts=prompts, ref=ref, path=path)
  CACHE.mkdir(parents=True, exist_ok=True)
  (CACHE / 'last_results.json').write_text(json.dumps(RESULTS, indent=2))
  print(f'\n{case.preset}: {RESULTS[case.preset]}')


def test_logits_match_transformers(real):
  cfg, params, prompts, ref = real['cfg'], real['params'], real['prompts'], real['ref']
  short = _logits(params, jnp.asarray([prompts['short']], jnp.int32), cfg)
  long = _logits(params, jnp.asarray([prompts['long']], jnp.int32), cfg, keep=LONG_KEEP)
  errs = {'short': _rel_err(short, ref['short']), 'long': _rel_err(long, ref['long'])}
  RESULTS[cfg.name].update({f'logits_rel_err_{k}': float(f'{v:.2e}') for k, v in errs.items()})
  assert errs['short'] < TOLERANCE and errs['long'] < TOLERANCE, errs
  # The argmax agrees everywhere too (a cheap check that the errors are noise, not a shifted position).
  np.testing.assert_array_equal(np.argmax(long, -1), np.argmax(ref['long'], -1))


def test_greedy_matches_transformers(real):
  cfg, params, prompts, ref = real['cfg'], real['params'], real['prompts'], real['ref']
  out = sampler_lib.generate(params, cfg, [prompts['greedy']], max_new_tokens=NEW_TOKENS, stop_ids=())[0]
  expected = [int(t) for t in ref['greedy']]
  first_diff = next((i for i, (a, b) in enumerate(zip(out, expected)) if a != b), None)
  RESULTS[cfg.name]['greedy_identical_tokens'] = len(out) if first_diff is None else first_diff
  assert out == expected, (
    f'greedy continuation differs from transformers at token {first_diff}: '
    f'{real["tok"].decode(out)!r} vs {real["tok"].decode(expected)!r}'
  )


def test_exported_folder_loads_in_transformers(real, tmp_path):
  import torch
  import transformers

  cfg, params, prompts, tok = real['cfg'], real['params'], real['prompts'], real['tok']
  out = weights.export_hf(params, cfg, tmp_path / 'hf', tok)
  tm = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = tm(torch.tensor([prompts['short']])).logits[0].numpy()
  ours = _logits(params, jnp.asarray([prompts['short']], jnp.int32), cfg)
  err = _rel_err(ours, theirs)
  RESULTS[cfg.name]['export_rel_err'] = float(f'{err:.2e}')
  assert err < TOLERANCE
  # rftjax can read its own export back, identically.
  again = weights.load(f'hf:{out}', weights.config_from_file(f'hf:{out}', cfg))
  np.testing.assert_array_equal(np.asarray(again['layers']['attn']['q']), np.asarray(params['layers']['attn']['q']))
  # The tokenizer files load in transformers and encode like rftjax.
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert len(hf_tok) == tok.vocab_size  # no token past the embedding (GemmaTokenizer's '<mask>', say)
  text = 'Hello world! 12 + 9 = 21.\n  Indented   spaces, émojis 🙂 and <b>tags</b>.'
  assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
  chat = [{'role': 'user', 'content': 'What is 12 + 9?'}]
  if hf_tok.chat_template:
    rendered = hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert hf_tok.encode(rendered, add_special_tokens=False) == tok.encode_prompt(chat), rendered


def test_config_from_file_without_preset(real):
  """The GGUF's own metadata plus family defaults reproduce the preset (what `--model` may be omitted for)."""
  cfg = real['cfg']
  read = weights.config_from_file(f'gguf:{real["path"]}')
  diff = {
    f.name: (getattr(read, f.name), getattr(cfg, f.name))
    for f in dataclasses.fields(cfg)
    if f.name != 'name' and hf_config.differs(getattr(read, f.name), getattr(cfg, f.name))
  }
  assert not diff
  assert read.name == cfg.name  # named after the preset it matches, for logs (export --init printed 'from_file')
  assert read.norm_eps == cfg.norm_eps  # the file's float32 as its shortest decimal: an export's config.json said
  # rms_norm_eps 9.999999747378752e-06 from the GGUF and 1e-05 from the preset
