"""TRL's side of benchmarks/grpo_step_bench.py: GRPOTrainer steps with the settings that script passes.

Runs in an environment with trl, torch and transformers (never rftjax's requirements); it imports nothing from
rftjax. Writes one JSON line per step: step, step_s, sampling_s (model.generate), grading_s (the reward function),
training_s (the rest: logprobs, loss, backward, optimizer), completion_len_mean.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import time


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument('--gguf', required=True)
  ap.add_argument('--prompts', required=True, help='JSONL of {"prompt": text, "answer": str}')
  ap.add_argument('--steps', type=int, required=True)
  ap.add_argument('--beta', type=float, required=True)
  ap.add_argument('--settings', required=True, help='JSON: prompts, g, new_tokens, temperature, lr, warmup')
  ap.add_argument('--out', required=True)
  args = ap.parse_args()
  s = json.loads(args.settings)

  import datasets
  import torch
  import transformers
  import trl

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.manual_seed(0)
  path = pathlib.Path(args.gguf)
  tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
  # transformers dequantizes the GGUF to float32 but marks the model quantized, which Trainer refuses to fine-tune,
  # and TRL loads the KL reference from the model's path: save a plain float32 folder and start from it
  model.is_quantized, model.hf_quantizer = False, None
  if hasattr(model.config, 'quantization_config'):
    del model.config.quantization_config
  folder = pathlib.Path(args.out).parent / 'hf_model'
  model.save_pretrained(folder)
  tok.save_pretrained(folder)
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  rows = [json.loads(line) for line in pathlib.Path(args.prompts).read_text().splitlines()]
  dataset = datasets.Dataset.from_list(rows)

  clock = {'sampling_s': 0.0, 'grading_s': 0.0, 'lengths': []}
  generate = model.generate

  def timed_generate(*a, **kw):
    t0 = time.perf_counter()
    out = generate(*a, **kw)
    clock['sampling_s'] += time.perf_counter() - t0
    return out

  model.generate = timed_generate
  number = re.compile(r'-?\d+(?:\.\d+)?')

  def reward(prompts, completions, answer, **_):
    """1.0 when the last number of the completion equals the answer (what rftjax's math grader checks here)."""
    t0 = time.perf_counter()
    out = []
    for text, ref in zip(completions, answer):
      found = number.findall(text.replace(',', ''))
      out.append(1.0 if found and float(found[-1]) == float(ref) else 0.0)
    clock['lengths'] += [len(tok(c, add_special_tokens=False)['input_ids']) for c in completions]
    clock['grading_s'] += time.perf_counter() - t0
    return out

  steps: list[dict] = []

  class Timer(transformers.TrainerCallback):
    def on_step_begin(self, *_, **__):
      clock.update(sampling_s=0.0, grading_s=0.0, lengths=[], t0=time.perf_counter())

    def on_step_end(self, _args, state, *_, **__):
      wall = time.perf_counter() - clock['t0']
      lengths = clock['lengths']
      steps.append(
        {
          'step': state.global_step,
          'step_s': wall,
          'sampling_s': clock['sampling_s'],
          'grading_s': clock['grading_s'],
          'training_s': wall - clock['sampling_s'] - clock['grading_s'],
          'completion_len_mean': sum(lengths) / max(len(lengths), 1),
        }
      )
      print(json.dumps(steps[-1]), flush=True)

  config = trl.GRPOConfig(
    output_dir=str(pathlib.Path(args.out).parent / 'trl_out'),
    per_device_train_batch_size=s['prompts'] * s['g'],
    gradient_accumulation_steps=1,
    num_generations=s['g'],
    max_completion_length=s['new_tokens'],
    temperature=s['temperature'],
    top_p=1.0,
    top_k=0,
    learning_rate=s['lr'],
    warmup_steps=s['warmup'],
    lr_scheduler_type='constant_with_warmup',
    beta=args.beta,
    epsilon=0.2,
    epsilon_high=0.28,
    loss_type='dapo',  # token-mean over the batch, as rftjax's grpo.loss_aggregation='token_mean'
    max_steps=args.steps,
    logging_steps=1,
    save_strategy='no',
    report_to='none',
    use_cpu=True,
    bf16=False,
    seed=0,
    disable_tqdm=True,
    dataloader_num_workers=0,
    gradient_checkpointing=False,  # TRL turns it on by default; rftjax's config does not rematerialise either
  )
  trainer = trl.GRPOTrainer(
    model=model, reward_funcs=[reward], args=config, train_dataset=dataset, processing_class=tok, callbacks=[Timer()]
  )
  trainer.train()
  pathlib.Path(args.out).write_text(''.join(json.dumps(x) + '\n' for x in steps))


if __name__ == '__main__':
  main()
