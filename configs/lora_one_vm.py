"""LoRA GRPO on one machine: Gemma 3 4B-27B and Qwen3 1.7B-14B where the people this is for have them.

  python -m rftjax.plan  --config=configs/lora_one_vm.py:gemma3_27b_v5e8            # check memory first
  python -m rftjax.train --config=configs/lora_one_vm.py:gemma3_27b_v5e8 --workdir=gs://BUCKET/rftjax/27b \\
      --config.init=hf:/home/me/gemma-3-27b-it --config.data.train=... --config.data.valid=... --config.grader=...

Layouts (docs/scaling.md has what each needs per device, as `rftjax.plan` computes it): a frozen bfloat16 base with
float32 rank-16 adapters on every linear of attention and MLP (docs/lora.md), G = 8 completions per prompt, prompts of
up to 512 tokens and 1024 new tokens on the TPUs. The 262k-vocabulary logits of Gemma dominate the train step, so the
Gemma layouts split it into microbatches; the adapters' moments are a few MB, the base needs no second copy for the
KL reference. `init`, `data.*` and `grader` are placeholders; download the Hugging Face checkpoint yourself
(`hf:DIR` with config.json, *.safetensors and tokenizer files).
"""

from configs import common

L = common.Layout
LAYOUTS = {
  # one v5e chip (16 GiB HBM): 2 prompts x 8 completions per step, the train step one completion at a time
  'gemma3_4b_v5e1': L('gemma3_4b', 'v5e-1', (1, 1, 1), 2, 8, 512, 1024, 'bfloat16', 16, 16),
  # a v5e-8 (8 chips, one host): FSDP, and tensor parallelism to split the 262k-vocabulary logits
  'gemma3_12b_v5e8': L('gemma3_12b', 'v5e-8', (1, 4, 2), 8, 8, 512, 1024, 'bfloat16', 8, 16),
  'gemma3_27b_v5e8': L('gemma3_27b', 'v5e-8', (1, 2, 4), 4, 8, 512, 1024, 'bfloat16', 16, 16),
  'qwen3_8b_v5e8': L('qwen3_8b', 'v5e-8', (1, 8, 1), 8, 8, 512, 1024, 'bfloat16', 8, 16),
  # a 24 GB CPU box (one device): float32 weights and compute, shorter sequences
  'qwen3_1_7b_cpu24g': L('qwen3_1_7b', 'cpu24g-1', (1, 1, 1), 4, 8, 256, 512, 'float32', 8, 16),
}
INIT = {'gemma3': 'hf:/path/to/gemma-3-{size}-it', 'qwen3': 'hf:/path/to/Qwen3-{size}'}


def get_config(arg=None):
  c = common.from_layout('lora_one_vm', arg, LAYOUTS, '')
  family, size = c.model.split('_', 1)
  c.init = INIT[family].format(size=size.replace('_', '.').upper() if family == 'qwen3' else size)  # placeholder
  c.chat_template = 'gemma' if family == 'gemma3' else 'qwen3'
  if arg.endswith('cpu24g'):
    c.compute_dtype = 'float32'  # CPUs run float32 matmuls faster than bfloat16 (docs/platform.md)
    c.sampling.cache_dtype = ''
  return c.lock()
