"""DPO on diffusion models from self-generated preference pairs (the naive baseline of D-Fusion).

Each round samples `samples_per_prompt` images for `prompts_per_round` prompts, ranks them by reward
and pairs them (`make_pairs`; D-Fusion overrides it to build visually consistent targets). Losses:
- `trajectory`: DPO per denoising step against the frozen reference (adapters disabled), each side's
  log-ratio clipped to log(1 ± ε) — the reading of D-Fusion's training that needs trajectories;
- `diffusion_dpo`: Wallace et al.'s loss on the final latents, re-noised at a shared random t.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from alignlab.core.dpo import diffusion_dpo_loss, trajectory_dpo_loss
from alignlab.core.pairs import best_worst_pairs, grouped_pairs
from alignlab.samplers.ddim import Trajectory, guided_noise
from alignlab.errors import ConfigError
from alignlab.methods.base import RLMethod
from alignlab.models import frozen_reference

LOSSES = ("trajectory", "diffusion_dpo")


class DPO(RLMethod):
    needs_reference = True

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
    ):
        super().__init__(model, sampler, reward, optimizer, prompts, seed, log_images,
                         gradient_accumulation_steps, max_grad_norm)
        if loss not in LOSSES:
            raise ConfigError(f"method.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        for key, value in [("prompts_per_round", prompts_per_round), ("samples_per_prompt", samples_per_prompt),
                           ("sample_batch_size", sample_batch_size), ("train_batch_size", train_batch_size),
                           ("num_inner_epochs", num_inner_epochs)]:
            if value < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {value}")
        if samples_per_prompt < 2:
            raise ConfigError(f"method.samples_per_prompt must be >= 2 to form pairs, got {samples_per_prompt}")
        if not 0 < timestep_fraction <= 1:
            raise ConfigError(f"method.timestep_fraction must be in (0, 1], got {timestep_fraction}")
        self.prompts_per_round, self.samples_per_prompt = prompts_per_round, samples_per_prompt
        self.sample_batch_size, self.train_batch_size = sample_batch_size, train_batch_size
        self.num_inner_epochs, self.timestep_fraction = num_inner_epochs, timestep_fraction
        self.loss_kind, self.beta, self.clip_eps, self.beta_dpo = loss, beta, clip_eps, beta_dpo
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
        if self.loss_kind == "trajectory":
            self.buffer["ref_log_probs"] = self.reference_log_probs(traj)
        return self.micro_batches(len(winners), self.generator(1))

    @torch.no_grad()
    def reference_log_probs(self, traj: Trajectory) -> torch.Tensor:
        """log π_ref of every stored step under the frozen model, computed once per round."""
        negative = self.model.encode_prompts([""])
        rows, steps = traj.log_probs.shape
        out = torch.empty_like(traj.log_probs)
        with frozen_reference(self.model):
            for first in range(0, rows, self.sample_batch_size):
                part = traj.index(slice(first, first + self.sample_batch_size))
                for j in range(steps):
                    step = torch.full((len(part.log_probs),), j, device=out.device)
                    out[first : first + len(step), j] = self.sampler.step_log_prob(
                        self.model.unet, self.model.scheduler, part, step, negative, self.train_guidance)
        return out

    @property
    def train_timesteps(self) -> int:
        return max(1, int(self.sampler.num_steps * self.timestep_fraction))

    def backward_passes_per_micro_batch(self) -> int:
        return self.train_timesteps if self.loss_kind == "trajectory" else 1

    def micro_batches(self, pairs: int, generator: torch.Generator) -> list[dict]:
        steps, keep = self.sampler.num_steps, self.train_timesteps
        train_t = self.model.scheduler.config.num_train_timesteps
        batches = []
        for _ in range(self.num_inner_epochs):
            order = torch.randperm(pairs, generator=generator)
            step_order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(pairs)])
            for first in range(0, pairs, self.train_batch_size):
                rows = order[first : first + self.train_batch_size]
                batch = {"pairs": rows, "steps": step_order[rows, :keep]}
                if self.loss_kind == "diffusion_dpo":
                    batch["t"] = torch.randint(train_t, (len(rows),), generator=generator)
                    batch["noise"] = torch.randn((len(rows), *self.buffer["traj"].latents.shape[2:]),
                                                 generator=generator)
                batches.append(batch)
        return batches

    # -- update ---------------------------------------------------------------------------------
    def train_micro_batch(self, batch: dict, batch_idx: int) -> None:
        start = time.perf_counter()
        win, lose = self.buffer["winners"][batch["pairs"]], self.buffer["losers"][batch["pairs"]]
        if self.loss_kind == "trajectory":
            self.trajectory_update(win, lose, batch["steps"])
        else:
            self.diffusion_dpo_update(win, lose, batch["t"], batch["noise"])
        self.after_micro_batch(batch_idx)
        self.stats["time_update"].append(time.perf_counter() - start)

    def trajectory_update(self, win: torch.Tensor, lose: torch.Tensor, steps: torch.Tensor) -> None:
        rows = torch.cat([win, lose])
        traj, ref = self.buffer["traj"].index(rows), self.buffer["ref_log_probs"][rows]
        scale = 1.0 / (self.grad_accum * steps.shape[1])
        half = len(win)
        for column in steps.T:
            both = torch.cat([column, column])
            log_prob = self.sampler.step_log_prob(self.model.unet, self.model.scheduler, traj, both,
                                                  self.buffer["negative"], self.train_guidance)
            ref_lp = ref[torch.arange(len(rows), device=both.device), both]
            stats = trajectory_dpo_loss(log_prob[:half], ref_lp[:half], log_prob[half:], ref_lp[half:],
                                        self.beta, self.clip_eps)
            self.manual_backward(stats.loss * scale)
            self.record(stats)

    def diffusion_dpo_update(self, win, lose, t, noise) -> None:
        rows = torch.cat([win, lose])
        traj = self.buffer["traj"]
        x0 = traj.final[rows]
        t2, noise2 = torch.cat([t, t]), torch.cat([noise, noise])
        noisy = self.model.scheduler.add_noise(x0, noise2, t2)
        target = noise2 if self.model.scheduler.config.prediction_type == "epsilon" \
            else self.model.scheduler.get_velocity(x0, noise2, t2)
        embeds = traj.prompt_embeds[rows]

        def errors():
            pred = guided_noise(self.model.unet, noisy, t2, embeds, self.buffer["negative"], 1.0)
            return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

        model_err = errors()
        with torch.no_grad(), frozen_reference(self.model):
            ref_err = errors()
        half = len(win)
        stats = diffusion_dpo_loss(model_err[:half], model_err[half:], ref_err[:half], ref_err[half:], self.beta_dpo)
        self.manual_backward(stats.loss / self.grad_accum)
        self.record(stats)

    def record(self, stats) -> None:
        self.stats["loss"].append(stats.loss.item())
        self.stats["dpo_accuracy"].append(stats.accuracy.item())
        self.stats["dpo_margin"].append(stats.margin.item())
