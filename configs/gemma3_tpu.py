"""Gemma 3 GRPO presets per Cloud TPU slice: `--config=configs/gemma3_tpu.py:<size>_<slice>`.

  python -m rftjax.plan  --config=configs/gemma3_tpu.py:27b_v5p32 --devices=v5p-32   # check memory first
  python -m rftjax.train --config=configs/gemma3_tpu.py:27b_v5p32 --workdir=gs://BUCKET/rftjax/27b \
      --config.init=hf:/home/me/gemma-3-27b-pt --config.data.train=... --config.data.valid=... --config.grader=...

Args (see docs/scaling.md for the memory each needs): 1b_v5e8, 1b_v6e8, 4b_v5e8, 4b_v5p8, 4b_v5p16, 4b_v6e16,
12b_v5p32, 27b_v5p32. The slice in the name is what the layout was planned for (`rftjax.plan` checks it).

`init` is a placeholder: point it at a Hugging Face checkpoint directory (`hf:DIR` holding config.json,
*.safetensors and tokenizer files of google/gemma-3-<size>-pt or -it; download them yourself, they are gated
behind Gemma's terms). On a multi-host slice every host reads the same path, so copy it to each VM's disk
(or a shared mount). `data.*` and `grader` are placeholders too.

Layout: FSDP over every chip (the weights, moments and gradients divide by the whole slice) and tensor
parallelism only within a host and only where the vocab-sized logits or the MLP activations dominate (12B/27B):
tensor=4 splits the [rows, N, 262k] float32 logits four ways. Params are bfloat16 with bfloat16 Adam moments
for the 12B/27B (float32 for the small ones); the KV cache is bfloat16 and layers are rematerialised.
"""

import dataclasses

from configs import common
from rftjax import errors


@dataclasses.dataclass(frozen=True)
class Layout:
  """One model on one slice: what `rftjax.plan` checked fits (docs/scaling.md)."""

  model: str  # rftjax.model preset
  devices: str  # the slice the layout is planned for
  mesh: tuple[int, int, int]  # (data, fsdp, tensor)
  batch_size: int  # prompts per step
  num_generations: int
  max_prompt_len: int
  max_new_tokens: int
  param_dtype: str


PRESETS = {
  '1b_v5e8': Layout('gemma3_1b', 'v5e-8', (1, 8, 1), 8, 8, 256, 256, 'float32'),
  '1b_v6e8': Layout('gemma3_1b', 'v6e-8', (1, 8, 1), 16, 8, 256, 256, 'float32'),
  '4b_v5e8': Layout('gemma3_4b', 'v5e-8', (1, 8, 1), 4, 8, 256, 256, 'bfloat16'),
  '4b_v5p8': Layout('gemma3_4b', 'v5p-8', (1, 4, 1), 8, 8, 256, 512, 'float32'),
  '4b_v5p16': Layout('gemma3_4b', 'v5p-16', (1, 8, 1), 16, 8, 256, 512, 'float32'),
  '4b_v6e16': Layout('gemma3_4b', 'v6e-16', (1, 16, 1), 16, 8, 256, 512, 'float32'),
  '12b_v5p32': Layout('gemma3_12b', 'v5p-32', (1, 4, 4), 16, 8, 512, 1024, 'bfloat16'),
  '27b_v5p32': Layout('gemma3_27b', 'v5p-32', (1, 4, 4), 8, 8, 512, 1024, 'bfloat16'),
}


def get_config(arg=None):
  if arg not in PRESETS:  # this config has no default: the layout is the point
    found = f'unknown layout {arg!r}' if arg else 'no layout'
    raise errors.ConfigError(
      f'--config=configs/gemma3_tpu.py{":" + arg if arg else ""}: {found}; expected '
      f'--config=configs/gemma3_tpu.py:LAYOUT with LAYOUT one of {", ".join(PRESETS)}'
    )
  layout = PRESETS[arg]
  c = common.base()
  c.model = layout.model
  c.init = f'hf:/path/to/{layout.model.replace("gemma3_", "gemma-3-")}-pt'  # placeholder: a local HF checkpoint dir
  c.chat_template = 'gemma'
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
  c.optimizer.learning_rate = 1e-6
  c.optimizer.warmup_steps = 10
  c.optimizer.mu_dtype = ''  # '' = the param dtype (optax's default)
  c.eval_interval = 50
  c.eval_batch_size = layout.batch_size * layout.num_generations
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = layout.mesh
  c.compute_dtype = 'bfloat16'
  c.param_dtype = layout.param_dtype
  c.remat = True
  c.progress = False  # logs of unattended TPU runs: no progress bar
  return c.lock()
