"""DPO on diffusion models from self-generated preference pairs (the naive baseline of D-Fusion).

Each round samples `samples_per_prompt` images for `prompts_per_round` prompts, ranks them by reward
and pairs them (`make_pairs`; D-Fusion overrides it to build visually consistent targets). Objectives
(`method.loss`, alignlab/objectives):
- `trajectory`: DPO per denoising step against the frozen reference (adapters disabled), each side's
  log-ratio clipped to log(1 ± ε) — the reading of D-Fusion's training that needs trajectories;
- `diffusion_dpo`: Wallace et al.'s loss on the final latents, re-noised at a shared random t.
"""

from __future__ import annotations

import math

import torch

from alignlab.core.pairs import best_worst_pairs, grouped_pairs
from alignlab.errors import ConfigError, require_at_least_one
from alignlab.methods.base import RLMethod
from alignlab.objectives import DiffusionDPO, TrajectoryDPO
from alignlab.samplers.ddim import Trajectory

LOSSES = ("trajectory", "diffusion_dpo")


class DPO(RLMethod):
    round_makes = ("pairs",)

    def __init__(
        self,
        model,
        sampler,
        reward,
        optimizer,
        prompts,
        seed: int = 0,
        prompts_per_round: int = 2,
        samples_per_prompt: int = 4,
        sample_batch_size: int = 8,
        train_batch_size: int = 2,
        gradient_accumulation_steps: int = 1,
        num_inner_epochs: int = 2,
        timestep_fraction: float = 1.0,
        loss: str = "trajectory",
        beta: float = 0.1,
        clip_eps: float | None = 0.1,
        beta_dpo: float = 2500.0,
        max_grad_norm: float = 1.0,
        train_cfg: bool = True,
        log_images: int = 16,
        objective=None,
    ):
        """`objective`: the one `loss` names unless another is given."""
        if loss not in LOSSES:
            raise ConfigError(f"method.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if objective is None:
            objective = TrajectoryDPO(beta, clip_eps) if loss == "trajectory" else DiffusionDPO(beta_dpo)
        super().__init__(model, sampler, reward, optimizer, prompts, seed, log_images,
                         gradient_accumulation_steps, max_grad_norm, objective)
        require_at_least_one("method", prompts_per_round=prompts_per_round, samples_per_prompt=samples_per_prompt,
                             sample_batch_size=sample_batch_size, train_batch_size=train_batch_size,
                             num_inner_epochs=num_inner_epochs)
        if samples_per_prompt < 2:
            raise ConfigError(f"method.samples_per_prompt must be >= 2 to form pairs, got {samples_per_prompt}")
        if not 0 < timestep_fraction <= 1:
            raise ConfigError(f"method.timestep_fraction must be in (0, 1], got {timestep_fraction}")
        self.prompts_per_round, self.samples_per_prompt = prompts_per_round, samples_per_prompt
        self.sample_batch_size, self.train_batch_size = sample_batch_size, train_batch_size
        self.num_inner_epochs, self.timestep_fraction = num_inner_epochs, timestep_fraction
        self.train_guidance = sampler.guidance_scale if train_cfg else 1.0
        self.buffer: dict = {}

    # -- pairs ----------------------------------------------------------------------------------
    @property
    def pairs_per_prompt(self) -> int:
        return self.samples_per_prompt // 2

    def micro_batches_per_round(self) -> int:
        pairs = self.prompts_per_round * self.pairs_per_prompt
        return self.num_inner_epochs * math.ceil(pairs / self.train_batch_size)

    def make_pairs(self, prompts, traj, rewards, images) -> tuple[Trajectory, torch.Tensor, torch.Tensor]:
        """(trajectories, winner rows, loser rows); naive: best vs worst within each prompt's group."""
        winners, losers = grouped_pairs(rewards, self.samples_per_prompt, best_worst_pairs)
        self.stats["reward_winner"].append(rewards[winners].mean().item())
        self.stats["reward_loser"].append(rewards[losers].mean().item())
        self.keep_showcase(images, prompts, rewards)
        return traj, winners, losers

    def start_round(self) -> list[dict]:
        prompts, traj, rewards, images = self.grouped_rollout(self.prompts_per_round, self.samples_per_prompt,
                                                             self.sample_batch_size)
        _, round_rewards, _ = self.gather_round(prompts, rewards)  # pairs are per prompt, within a rank
        self.record_round_rewards(round_rewards)
        traj, winners, losers = self.make_pairs(prompts, traj, rewards, images)
        self.buffer = {"traj": traj, "winners": winners.to(self.device), "losers": losers.to(self.device),
                       "negative": self.model.encode_prompts([""])}
        return self.micro_batches(len(winners), self.generator(1))
