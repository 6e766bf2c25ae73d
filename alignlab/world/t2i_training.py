"""Pre-training of the world text-to-image model: a text encoder that reads the scene, then the UNet.

Like SD, the UNet learns on top of a pre-trained, frozen text encoder (text_training.py); its caption
embeddings are computed once. v-prediction on rendered scenes, in two phases: first on clean captions,
so the model can draw every composition (capacity), then on captions that are wrong at a controlled rate
per category (CAPTION_NOISE), so it samples the wrong composition a known fraction of the time
(misalignment). Captions are dropped 10% of the time so classifier-free guidance works, as in SD.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from alignlab.world.contrasts import scene_for_caption
from alignlab.world.grammar import all_specs
from alignlab.world.model import assemble, build_world, save_weights, world_components
from alignlab.world.pretraining import CATEGORY_WEIGHTS, LoopConfig, sample_specs, train_loop
from alignlab.world.render import render_batch
from alignlab.world.text_training import TEXT, train_text_encoder

CAPTION_DROPOUT = 0.1
# Probability that a pre-training caption of the category describes another scene (contrasts.EDITS), set from
# the clean model's accuracy (docs/world.md): counting came out 0.75-0.85 right and two objects and colour
# attribution 0.4-0.6; position, at 0.1-0.25, already misses often enough.
CAPTION_NOISE = {"two_objects": 0.2, "colour_attr": 0.2, "position": 0.0, "counting": 0.4}
# (stage, loop settings, caption noise); the second phase starts from the first's EMA weights.
T2I = (
    ("t2i", LoopConfig(steps=2700, lr=1e-3, warmup=200, ema_decay=0.999, batch_size=64), {}),
    ("t2i_noisy", LoopConfig(steps=600, lr=3e-4, warmup=50, ema_decay=0.999, batch_size=64), CAPTION_NOISE),
)


def train_t2i(out_dir: Path, phases=T2I, text: LoopConfig = TEXT, start: Path | None = None,
              category_weights: dict = CATEGORY_WEIGHTS) -> Path:
    """Train (or resume) and write the EMA weights as fp16 safetensors to out_dir/weights; returns that dir.
    `start`: continue the UNet of these world weights with their text encoder (not retrained) instead of
    training both from random weights (a probe of more UNet steps on other data)."""
    if start is None:
        unet, text_encoder = world_components(phases[0][1].seed)
        model = assemble(unet, text_encoder)
        train_text_encoder(text_encoder, model.tokenizer, out_dir, text)
    else:
        model = build_world(str(start))
        unet, text_encoder = model.unet, model.text_encoder
    prompts = ["", *(s.prompt for s in all_specs())]
    row = {prompt: i for i, prompt in enumerate(prompts)}
    embeddings = torch.cat([model.encode_prompts(prompts[i:i + 256]) for i in range(0, len(prompts), 256)])

    def phase_loss(config: LoopConfig, caption_noise: dict[str, float]):
        def loss_fn(rng, generator) -> torch.Tensor:
            captions = sample_specs(rng, config.batch_size, category_weights)
            scenes = [scene_for_caption(spec, rng, caption_noise) for spec in captions]
            images = render_batch(scenes, rng) * 2 - 1
            latents = model.vae.encode(images).latent_dist.sample() * model.vae.config.scaling_factor
            dropped = rng.random(len(captions)) < CAPTION_DROPOUT
            rows = torch.tensor([0 if drop else row[s.prompt] for s, drop in zip(captions, dropped, strict=True)])
            timesteps = torch.randint(0, model.scheduler.config.num_train_timesteps, (len(captions),),
                                      generator=generator)
            noise = torch.randn(latents.shape, generator=generator)
            noisy = model.scheduler.add_noise(latents, noise, timesteps)
            target = model.scheduler.get_velocity(latents, noise, timesteps)
            return F.mse_loss(unet(noisy, timesteps, embeddings[rows]).sample, target)

        return loss_fn

    for stage, config, caption_noise in phases:
        ema = train_loop(stage, {"unet": unet}, phase_loss(config, caption_noise), config, out_dir)
        ema.copy_to(unet.parameters())
    save_weights(out_dir / "weights", unet, text_encoder)
    return out_dir / "weights"
