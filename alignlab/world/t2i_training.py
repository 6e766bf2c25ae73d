"""Pre-training of the world text-to-image model: a text encoder that reads the scene, then the UNet.

Like SD, the UNet learns on top of a pre-trained, frozen text encoder (text_training.py); its caption
embeddings are computed once. v-prediction on rendered scenes. Clean captions give the model capacity (it can
draw every composition); captions that are wrong at a controlled rate per category (caption noise) make it
sample the wrong composition a known fraction of the time (misalignment). The shipped recipe (`train_world_t2i`)
runs T2I (clean, then noisy) and then T2I_RELATIONS, which trains on plain relations until the UNet follows them
(after T2I it placed objects at chance) and then applies caption noise again. Captions are
dropped 10% of the time so classifier-free guidance works, as in SD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from alignlab.world.contrasts import scene_for_caption
from alignlab.world.grammar import all_specs
from alignlab.world.model import assemble, build_world, save_weights, world_components
from alignlab.world.pretraining import CATEGORY_WEIGHTS, LoopConfig, sample_specs, train_loop
from alignlab.world.render import MIN_OFFSET, render_batch
from alignlab.world.text_training import TEXT, train_text_encoder

CAPTION_DROPOUT = 0.1
# Probability that a pre-training caption of the category describes another scene (contrasts.EDITS), set from
# the clean model's accuracy (docs/world.md): counting came out 0.75-0.85 right and two objects and colour
# attribution 0.4-0.6; position, at 0.1-0.25, already misses often enough.
CAPTION_NOISE = {"two_objects": 0.2, "colour_attr": 0.2, "position": 0.0, "counting": 0.4}


@dataclass(frozen=True)
class Phase:
    """One UNet pre-training phase: its loop, the caption noise per category, the batch's category mix, and
    the least offset (px) by which a position render holds its relation."""

    stage: str
    loop: LoopConfig
    caption_noise: Mapping[str, float] = field(default_factory=dict)
    category_weights: Mapping[str, float] = field(default_factory=lambda: CATEGORY_WEIGHTS)
    min_offset: int = MIN_OFFSET


# The first stage, from random weights; each phase starts from the previous one's EMA weights.
T2I = (
    Phase("t2i", LoopConfig(steps=2700, lr=1e-3, warmup=200, ema_decay=0.999, batch_size=64)),
    Phase("t2i_noisy", LoopConfig(steps=600, lr=3e-4, warmup=50, ema_decay=0.999, batch_size=64), CAPTION_NOISE),
)


# The later stages' batch mix: position captions at 0.4 instead of 0.25, the category they train.
POSITION_HEAVY = {"single_object": 0.15, "two_objects": 0.1, "counting": 0.15, "colour_attr": 0.2, "position": 0.4}
# The last stage's caption noise, picked by two probes from ft_wide's weights (docs/world.md, "World v2.1"):
# these rates put every composite category inside 0.2-0.6; at 0.4 (position 0.3) two objects and position fell
# to 0.13 and 0.11.
RELATIONS_CAPTION_NOISE = {"two_objects": 0.15, "colour_attr": 0.2, "position": 0.1, "counting": 0.3}
# Later stages, each from the previous one's saved weights: first clean captions with every relation render at
# least 10 px apart (4 before), plain in every image, until the UNet follows relations; then caption noise again.
FINE_TUNE = LoopConfig(steps=1800, lr=3e-4, warmup=50, ema_decay=0.995, batch_size=64)
T2I_RELATIONS = (
    Phase("ft_wide", FINE_TUNE, {}, POSITION_HEAVY, min_offset=10),
    Phase("ft_noisy", replace(FINE_TUNE, steps=400), RELATIONS_CAPTION_NOISE, POSITION_HEAVY, min_offset=10),
)


def train_world_t2i(out_dir: Path, first: tuple[Phase, ...] = T2I, then: tuple[Phase, ...] = T2I_RELATIONS,
                    text: LoopConfig = TEXT) -> Path:
    """The shipped recipe (make world): the phases of `first` from random weights, then each phase of `then` from
    the previous one's saved fp16 weights (in out_dir/<stage>/), as the shipped weights were made; returns the
    last weights directory."""
    weights = train_t2i(out_dir, first, text)
    for phase in then:
        weights = train_t2i(out_dir / phase.stage, (phase,), start=weights)
    return weights


def train_t2i(out_dir: Path, phases: tuple[Phase, ...] = T2I, text: LoopConfig = TEXT,
              start: Path | None = None) -> Path:
    """Train (or resume) and write the EMA weights as fp16 safetensors to out_dir/weights; returns that dir.
    `start`: continue the UNet of these world weights with their text encoder (not retrained) instead of
    training both from random weights (the later stages of `train_world_t2i`, and world_probe's unet-more)."""
    if start is None:
        unet, text_encoder = world_components(phases[0].loop.seed)
        model = assemble(unet, text_encoder)
        train_text_encoder(text_encoder, model.tokenizer, out_dir, text)
    else:
        model = build_world(str(start))
        unet, text_encoder = model.unet, model.text_encoder
    prompts = ["", *(s.prompt for s in all_specs())]
    row = {prompt: i for i, prompt in enumerate(prompts)}
    embeddings = torch.cat([model.encode_prompts(prompts[i:i + 256]) for i in range(0, len(prompts), 256)])

    def phase_loss(phase: Phase):
        def loss_fn(rng, generator) -> torch.Tensor:
            captions = sample_specs(rng, phase.loop.batch_size, phase.category_weights)
            scenes = [scene_for_caption(spec, rng, phase.caption_noise) for spec in captions]
            images = render_batch(scenes, rng, min_offset=phase.min_offset) * 2 - 1
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

    for phase in phases:
        ema = train_loop(phase.stage, {"unet": unet}, phase_loss(phase), phase.loop, out_dir)
        ema.copy_to(unet.parameters())
    save_weights(out_dir / "weights", unet, text_encoder)
    return out_dir / "weights"
