"""Defaults for an OpenAI job file whose `model` is an init spec (`gguf:...`, `hf:DIR`), used when no --config is given:

  python -m rftjax.train --openai_job=job.json --workdir=runs/job
The job fills in the model, data, grader and hyperparameters (docs/openai_jobs.md); what is left here is what an
instruct model of a few hundred million parameters needs on one host: short answers, eight samples per prompt, and
the validation and checkpointing every run has. `model` is empty: the architecture is read from the init file.
"""

from configs import common


def get_config(arg=None):
  common.check_variant(arg, ())
  c = common.base()
  c.model = ''  # read from the job's init file
  c.init = 'gguf:smollm2-135m'  # replaced by the job's model
  c.data.max_prompt_len = 256
  c.num_generations = 8
  c.sampling.temperature = 1.0
  c.sampling.max_new_tokens = 256  # reasoning_effort 'medium'; 'low' halves it, 'high' doubles it
  c.grpo.loss_aggregation = 'token_mean'
  c.optimizer.warmup_steps = 5
  c.eval_batch_size = 32
  c.grading.num_workers = 0
  c.openai.enabled = True  # 'auto' hyperparameters follow rftjax's documented rules
  return c.lock()
