"""DDPO (Black et al.): fresh rollouts, per-prompt normalised rewards as advantages, trained by PPO-clip
(alignlab/objectives/ppo_clip.py) on every denoising step or a window of them (docs/design.md)."""

from __future__ import annotations

import logging
import math

import torch

from alignlab.errors import ConfigError, require_at_least_one, require_positive
from alignlab.methods.base import RLMethod
from alignlab.objectives import PPOClip

log = logging.getLogger("alignlab")


class DDPO(RLMethod):
    def __init__(
        self,
        model,
        sampler,
        reward,
        optimizer,
        prompts,
        seed: int = 0,
        sample_batch_size: int = 8,
        num_batches_per_round: int = 4,
        train_batch_size: int = 4,
        gradient_accumulation_steps: int = 1,
        num_inner_epochs: int = 1,
        timestep_fraction: float = 1.0,
        step_window: list[int] | None = None,
        early_share: float | None = None,
        clip_range: float = 1e-4,
        adv_clip_max: float = 5.0,
        max_grad_norm: float = 1.0,
        train_cfg: bool = True,
        per_prompt_stat_tracking: bool = True,
        stat_buffer_size: int = 16,
        stat_min_count: int = 16,
        log_images: int = 16,
        images_per_prompt: int | None = None,
        objective=None,
    ):
        """`objective`: PPO-clip with DDPO's advantage clip unless a subclass gives another."""
        super().__init__(model, sampler, reward, optimizer, prompts, seed, log_images,
                         gradient_accumulation_steps, max_grad_norm, objective or PPOClip(clip_range, adv_clip_max))
        require_at_least_one("method", sample_batch_size=sample_batch_size, num_batches_per_round=num_batches_per_round,
                             train_batch_size=train_batch_size, num_inner_epochs=num_inner_epochs,
                             gradient_accumulation_steps=gradient_accumulation_steps)
        # DDPO's own settings, whichever objective trains (B²-DiffuRL clips its z-scores with adv_clip_max)
        require_positive("method", clip_range=clip_range, adv_clip_max=adv_clip_max)
        if not 0 < timestep_fraction <= 1:
            raise ConfigError(f"method.timestep_fraction must be in (0, 1], got {timestep_fraction}")
        if step_window is not None and not (len(step_window) == 2 and 0 <= step_window[0] < step_window[1]
                                            <= sampler.num_steps):
            raise ConfigError(f"method.step_window must be [first, end] with 0 <= first < end <= sampler.num_steps "
                              f"({sampler.num_steps}), got {list(step_window)}")
        if early_share is not None:
            if step_window is not None:
                raise ConfigError("method.step_window and method.early_share both pick the trained steps: set one "
                                  "(the other to null)")
            if not 0 < early_share <= 1:
                raise ConfigError(f"method.early_share must be in (0, 1], got {early_share}")
            step_window = [0, math.ceil(early_share * sampler.num_steps)]  # where the composition is decided
        self.step_window = tuple(step_window) if step_window is not None else None
        self.sample_batch_size, self.num_batches_per_round = sample_batch_size, num_batches_per_round
        self.train_batch_size = train_batch_size
        self.num_inner_epochs, self.timestep_fraction = num_inner_epochs, timestep_fraction
        self.adv_clip_max = adv_clip_max
        self.train_guidance = sampler.guidance_scale if train_cfg else 1.0
        self.track_prompts(per_prompt_stat_tracking, stat_buffer_size, stat_min_count)
        self.images_per_prompt = images_per_prompt
        if images_per_prompt is not None and (images_per_prompt < 1 or self.samples_per_round % images_per_prompt):
            raise ConfigError(f"method.images_per_prompt must divide the round's {self.samples_per_round} images "
                              f"(sample_batch_size x num_batches_per_round), got {images_per_prompt}")
        self.warn_if_groups_are_small()
        self.buffer: dict = {}

    def warn_if_groups_are_small(self) -> None:
        """An objective with group advantages compares each sample with the round's others of its prompt: a
        round that draws a random prompt per image from many prompts has few."""
        if self.objective.group_advantages and self.images_per_prompt is None \
                and len(self.prompts.train) * 2 > self.samples_per_round:
            log.warning("%s compares each sample with the round's other samples of its prompt, and a round of %d "
                        "images drawn from %d prompts has few: set method.images_per_prompt (e.g. 8)",
                        type(self.objective).__name__, self.samples_per_round, len(self.prompts.train))

    @property
    def samples_per_round(self) -> int:
        return self.sample_batch_size * self.num_batches_per_round

    @property
    def trained_interval(self) -> tuple[int, int]:
        """`step_window` (or early_share's), else every step."""
        return self.step_window or (0, self.sampler.num_steps)

    def micro_batches_per_round(self) -> int:
        return self.num_inner_epochs * math.ceil(self.samples_per_round / self.train_batch_size)

    def round_length(self) -> int:
        """This round's own count (fewer than planned when samples were dropped)."""
        return self.buffer["micro_batches"]

    def start_round(self) -> list[dict]:
        if self.images_per_prompt:  # groups of images per prompt (GRPO's), distinct prompts where there are enough
            prompts, traj, rewards, images = self.grouped_rollout(self.samples_per_round // self.images_per_prompt,
                                                                 self.images_per_prompt, self.sample_batch_size)
        else:  # DDPO: a random prompt per image
            prompts = self.share_of_round(self.prompts.sample(self.samples_per_round * self.world_size,
                                                              self.generator(0)))
            generators = [self.generator(2, row) for row in range(len(prompts))]
            traj, rewards, images = self.rollout(prompts, self.sample_batch_size, generators)
        keep = torch.isfinite(rewards)  # a sample whose reward is NaN/inf is dropped (counted by rollout)
        if not bool(keep.all()):
            rows = keep.nonzero()[:, 0]
            traj, rewards, images = traj.index(rows.to(traj.latents.device)), rewards[rows], images[rows.cpu()]
            prompts = [prompts[i] for i in rows.tolist()]
        batches = self.micro_batches(len(prompts), self.generator(1))
        round_prompts, round_rewards, mine = self.gather_round(prompts, rewards)
        self.buffer = {"traj": traj, "advantages": self.advantages(round_prompts, round_rewards)[mine],
                       "negative": self.model.encode_prompts([""]), "micro_batches": len(batches)}
        self.log_rollout(images, prompts, rewards, round_rewards)
        return batches
