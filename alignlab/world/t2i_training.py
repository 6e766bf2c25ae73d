"""Pre-training of the world text-to-image model: v-prediction on rendered scenes, text encoder trained jointly.

SD's text encoder comes pre-trained from CLIP; the world's is learned together with the UNet (then
frozen, like SD's), which is the cheapest way to a text encoder that separates the world's words.
Captions are dropped 10% of the time so classifier-free guidance works, as in SD.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from alignlab.world.model import assemble, world_components
from alignlab.world.pretraining import LoopConfig, sample_specs, train_loop
from alignlab.world.render import render_batch

CAPTION_DROPOUT = 0.1
# Two phases: 1500 steps at lr 1e-3, then 600 from the first phase's EMA weights at lr 3e-4 (each with
# warmup and cosine decay), so a finished phase stays valid when training is extended.
T2I = (
    ("t2i", LoopConfig(steps=1500, lr=1e-3, warmup=200, ema_decay=0.999, batch_size=64)),
    ("t2i_refine", LoopConfig(steps=600, lr=3e-4, warmup=50, ema_decay=0.999, batch_size=64)),
)


def train_t2i(out_dir: Path, phases: tuple[tuple[str, LoopConfig], ...] = T2I) -> Path:
    """Train (or resume) and write the EMA weights as fp16 safetensors to out_dir/weights; returns that dir."""
    config = phases[0][1]
    unet, text_encoder = world_components(config.seed)
    model = assemble(unet, text_encoder)
    text_encoder.requires_grad_(True)
    tokens: dict[str, torch.Tensor] = {}

    def token_ids(prompts: list[str]) -> torch.Tensor:
        for prompt in set(prompts) - tokens.keys():
            tokens[prompt] = model.tokenizer(prompt, padding="max_length", max_length=77, truncation=True,
                                             return_tensors="pt").input_ids[0]
        return torch.stack([tokens[p] for p in prompts])

    def loss_fn(rng, generator) -> torch.Tensor:
        specs = sample_specs(rng, config.batch_size)
        images = render_batch(specs, rng) * 2 - 1
        latents = model.vae.encode(images).latent_dist.sample() * model.vae.config.scaling_factor
        prompts = ["" if drop else s.prompt for s, drop in zip(specs, rng.random(len(specs)) < CAPTION_DROPOUT,
                                                                  strict=True)]
        embeddings = text_encoder(token_ids(prompts))[0]
        timesteps = torch.randint(0, model.scheduler.config.num_train_timesteps, (len(specs),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        noisy = model.scheduler.add_noise(latents, noise, timesteps)
        target = model.scheduler.get_velocity(latents, noise, timesteps)
        return F.mse_loss(unet(noisy, timesteps, embeddings).sample, target)

    for stage, config in phases:  # loss_fn reads `config`: the current phase
        ema = train_loop(stage, {"unet": unet, "text_encoder": text_encoder}, loss_fn, config, out_dir)
        ema.copy_to(list(unet.parameters()) + list(text_encoder.parameters()))
    weights = out_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", unet), ("text_encoder", text_encoder)):
        save_file({k: v.half().contiguous() for k, v in module.state_dict().items()}, weights / f"{name}.safetensors")
    return weights
