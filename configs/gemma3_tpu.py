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
for the 12B/27B and the 4B on v5e-8's 16 GiB chips (float32 for the others); the KV cache is bfloat16 and layers
are rematerialised.
"""

from configs import common


PRESETS = {
  '1b_v5e8': common.Layout('gemma3_1b', 'v5e-8', (1, 8, 1), 8, 8, 256, 256, 'float32'),
  '1b_v6e8': common.Layout('gemma3_1b', 'v6e-8', (1, 8, 1), 16, 8, 256, 256, 'float32'),
  '4b_v5e8': common.Layout('gemma3_4b', 'v5e-8', (1, 8, 1), 4, 8, 256, 256, 'bfloat16'),
  '4b_v5p8': common.Layout('gemma3_4b', 'v5p-8', (1, 4, 1), 8, 8, 256, 512, 'float32'),
  '4b_v5p16': common.Layout('gemma3_4b', 'v5p-16', (1, 8, 1), 16, 8, 256, 512, 'float32'),
  '4b_v6e16': common.Layout('gemma3_4b', 'v6e-16', (1, 16, 1), 16, 8, 256, 512, 'float32'),
  '12b_v5p32': common.Layout('gemma3_12b', 'v5p-32', (1, 4, 4), 16, 8, 512, 1024, 'bfloat16'),
  '27b_v5p32': common.Layout('gemma3_27b', 'v5p-32', (1, 4, 4), 8, 8, 512, 1024, 'bfloat16'),
}


def get_config(arg=None):
  c = common.from_layout('gemma3_tpu', arg, PRESETS, '')
  c.init = f'hf:/path/to/{c.model.replace("gemma3_", "gemma-3-")}-pt'  # placeholder: a local HF checkpoint dir
  c.chat_template = 'gemma'
  return c.lock()
