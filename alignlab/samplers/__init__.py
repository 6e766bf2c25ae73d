"""Samplers: the `sampler=` config group (`ddim`, `asyn`). Every method, evaluation and benchmark draws its
images through one of these, so a new sampler plugs in everywhere by keeping this contract:

- `num_steps`, `guidance_scale`, `eta` (> 0: every step is Gaussian, so it has a log-probability);
- `needs_items`: True when `sample`/`denoise` need the prompts' item words (`items=`, an ItemBatch);
- `sample(unet, scheduler, prompt_embeds, negative_embeds, latent_shape, generator) -> Trajectory`:
  a full rollout from fresh noise drawn from `generator`, recording every latent and step log-probability;
- `denoise(..., latents, ..., generator, start, end) -> Trajectory`: steps [start, end) from a given state,
  so a shared prefix can be continued in several branches (B²-DiffuRL);
- `step_log_prob(unet, scheduler, trajectory, step, negative_embeds, guidance_scale) -> Tensor`: re-scores
  stored steps under the current weights (the policy-gradient and DPO losses).

`generation.py` is the one path from prompts to scored images (sample, decode, score) built on `sample`.
"""

from alignlab.samplers.asyn import AsynSampler
from alignlab.samplers.ddim import DDIMSampler, Trajectory

__all__ = ["AsynSampler", "DDIMSampler", "Trajectory"]
