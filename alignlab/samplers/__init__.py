"""Samplers: the `sampler=` config group (`ddim`, `asyn`). Every method, evaluation and benchmark draws its
images through one of these, so a new sampler plugs in everywhere by keeping this contract:

- `num_steps`, `guidance_scale`, `eta` (> 0: every step is Gaussian, so it has a log-probability);
- `needs_items`: True when `sample`/`denoise` need the prompts' item words (`items=`, an ItemBatch);
- `sample(unet, scheduler, prompt_embeds, negative_embeds, latent_shape, generator) -> Trajectory`:
  a full rollout from fresh noise drawn from `generator`, recording every latent and step log-probability;
- `denoise(..., latents, ..., generator, start, end) -> Trajectory`: steps [start, end) from a given state,
  so a shared prefix can be continued in several branches (B²-DiffuRL);
- `rescore(unet, scheduler, trajectory, step, negative_embeds, guidance_scale) -> StepResult`: re-scores
  stored steps under the current weights: each step's Gaussian (mean, std) and log-probability (the
  policy-gradient and DPO losses read the log-probability, a KL to the frozen reference the means);
  `step_log_prob(...)` is its log-probability.

`generation.py` is the one path from prompts to scored images (sample, decode, score) built on `sample`.
"""

from alignlab.samplers.asyn import AsynSampler
from alignlab.samplers.ddim import DDIMSampler, Trajectory

__all__ = ["AsynSampler", "DDIMSampler", "Trajectory"]
