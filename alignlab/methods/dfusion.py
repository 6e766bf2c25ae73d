"""D-Fusion (Hu et al., ICML 2025): visually consistent preference pairs (docs/dfusion.md).

Per prompt, n samples are ranked; each of the top n/4 references is fused into two of the bottom n/2
bases: the target denoises from the base's noise while its self-attention reads the reference's keys
and values under the reference's item mask — as well aligned as the reference, looking like the
base, and with a trajectory to train on.
- `algo=dpo` (default): pairs (winner = target, loser = base), trajectory DPO or Diffusion-DPO;
- `algo=ddpo`: the targets join the rollout and PPO-clip trains on per-prompt normalised rewards;
one round builder for both (the objective decides which the round makes).
"""

from __future__ import annotations

import math

import torch

from alignlab.core.attention import capture_layers
from alignlab.core.fusion import KVFusion, fused_targets, self_attention_layers
from alignlab.core.pairs import dfusion_pairs, grouped_pairs
from alignlab.samplers.ddim import Trajectory
from alignlab.core.token_spans import ItemBatch
from alignlab.errors import ConfigError
from alignlab.methods.dpo import DPO
from alignlab.objectives import PPOClip

FUSED_BLOCKS = {"mid": "mid_block", "up": "up_blocks", "down": "down_blocks"}


def fused_steps(steps_left, num_steps: int) -> tuple[int, int]:
    """The step indices [start, end) whose steps left after them, num_steps - i - 1, lie in [low, high): the
    official `inject_t`, counted from the end, so "0-18" fuses steps 2-19 of 20 and every step of 10."""
    if len(steps_left) != 2 or not 0 <= int(steps_left[0]) <= int(steps_left[1]):
        raise ConfigError(f"method.fuse_steps_left must be [low, high] with 0 <= low <= high, got {list(steps_left)}")
    low, high = int(steps_left[0]), int(steps_left[1])
    return max(0, num_steps - high), max(0, num_steps - low)


class FusedPairs:
    """What both D-Fusion variants share: the fusion settings and building targets for a round."""

    def setup_fusion(self, samples_per_prompt: int, fuse_steps_left, fuse_blocks, capture_downscale: int | None,
                     default_threshold: float) -> None:
        if samples_per_prompt % 4:
            raise ConfigError("D-Fusion needs method.samples_per_prompt to be a multiple of 4, "
                              f"got {samples_per_prompt}")
        unknown = set(fuse_blocks) - set(FUSED_BLOCKS)
        if unknown:
            raise ConfigError(f"method.fuse_blocks: unknown block(s) {sorted(unknown)}; use {sorted(FUSED_BLOCKS)}")
        self.samples_per_prompt, self.fuse_steps = samples_per_prompt, fused_steps(fuse_steps_left,
                                                                                   self.sampler.num_steps)
        blocks = tuple(FUSED_BLOCKS[b] for b in fuse_blocks)
        self.fusion = KVFusion(self_attention_layers(self.model.unet, blocks))
        self.capture, self.capture_size = capture_layers(self.model.unet, self.model.latent_shape(1)[-2:],
                                                         capture_downscale)
        self.default_threshold = default_threshold

    def items(self, prompts: list[str]) -> ItemBatch:
        """The prompts' items with D-Fusion thresholds (the default where a prompt set gives none)."""
        batch = ItemBatch.build(self.model.tokenizer, prompts, [self.prompts.items_for(p) for p in prompts])
        batch.threshold = torch.where(batch.threshold.isnan(), torch.full_like(batch.threshold,
                                      self.default_threshold), batch.threshold)
        return batch

    @torch.no_grad()
    def fuse(self, prompts, traj, rewards, images, batch_size: int):
        """Rank, pair and fuse -> (targets, their rewards, reference rows, base rows); logs the rewards
        of references, bases and targets and keeps reference | base | target triplets for the grid."""
        references, bases = grouped_pairs(rewards, self.samples_per_prompt, dfusion_pairs)
        negative = self.model.encode_prompts([""])
        device = traj.latents.device
        targets, masks = [], []
        for first in range(0, len(bases), batch_size):
            ref_rows, base_rows = references[first : first + batch_size], bases[first : first + batch_size]
            target, mask = fused_targets(
                self.sampler, self.model.unet, self.model.scheduler, traj.index(ref_rows.to(device)),
                traj.index(base_rows.to(device)), negative, [self.generator(2, int(r)) for r in base_rows],
                self.items([prompts[i] for i in base_rows]).to(device), self.fuse_steps, self.fusion,
                self.capture, self.capture_size)
            targets.append(target)
            masks.append(mask)
        target = Trajectory.cat(targets)
        target_images = self.model.decode(target.final)
        target_rewards = self.reward(target_images, [prompts[i] for i in bases]).float().to(rewards.device)
        self.stats["reward_reference"].append(rewards[references].mean().item())
        self.stats["reward_base"].append(rewards[bases].mean().item())
        self.stats["reward_target"].append(target_rewards.mean().item())
        self.stats["mask_fraction"].append(torch.cat(masks, dim=1)[self.fuse_steps[0] :].mean().item())
        self.keep_triplets(images, target_images.cpu(), references, bases, prompts, rewards, target_rewards)
        self.keep_masks(masks[0][:, 0], prompts[int(bases[0])])
        return target, target_rewards, references, bases

    def keep_masks(self, masks: torch.Tensor, prompt: str, shown: int = 6) -> None:
        """A small grid of the first pair's fused mask at a few steps (not one PNG per step)."""
        steps = torch.linspace(0, masks.shape[0] - 1, min(shown, masks.shape[0])).round().long().unique()
        tiles = masks[steps].float().cpu()[:, None].expand(-1, 3, -1, -1)
        captions = [f"step {int(j)}" + (f" | {prompt}" if i == 0 else "") for i, j in enumerate(steps)]
        self.showcase["grids"] = {"masks": {"images": tiles, "captions": captions, "columns": len(steps)}}

    def keep_triplets(self, images, target_images, references, bases, prompts, rewards, target_rewards) -> None:
        """Sample grid rows: reference | base | target, each captioned with its reward."""
        tiles, captions = [], []
        for i in range(min(len(bases), max(1, self.log_images // 3))):
            r, b = int(references[i]), int(bases[i])
            tiles += [images[r], images[b], target_images[i]]
            captions += [f"ref {rewards[r]:.3g} | {prompts[b]}", f"base {rewards[b]:.3g}",
                         f"target {target_rewards[i]:.3g}"]
        self.showcase = {"images": torch.stack(tiles), "captions": captions, "columns": 3}


class DFusion(FusedPairs, DPO):
    """D-Fusion's round: per prompt, samples ranked by reward and fused targets built from them. With a preference
    objective (`method.algo=dpo`, the paper) winner = fused target, loser = its base; with one that trains on
    advantages (`method.algo=ddpo`: PPO-clip) the targets join the round's samples, every row with its per-prompt
    normalised reward as advantage — a target's π_old being the unfused policy's log-prob of its steps (what
    training re-scores)."""

    round_makes = ("pairs", "advantages")

    def __init__(self, *args, samples_per_prompt: int = 8, fuse_steps_left=(0, 18), fuse_blocks=("mid", "up"),
                 capture_downscale: int | None = None, default_threshold: float = 0.015,
                 per_prompt_stat_tracking: bool = True, stat_buffer_size: int = 16, stat_min_count: int = 16,
                 **kwargs):
        super().__init__(*args, samples_per_prompt=samples_per_prompt, **kwargs)
        self.setup_fusion(self.samples_per_prompt, fuse_steps_left, fuse_blocks, capture_downscale,
                          default_threshold)
        if self.objective.trains_on == "advantages":
            self.track_prompts(per_prompt_stat_tracking, stat_buffer_size, stat_min_count)

    def micro_batches_per_round(self) -> int:
        if self.objective.trains_on == "pairs":
            return super().micro_batches_per_round()
        rows = self.prompts_per_round * self.samples_per_prompt * 3 // 2  # samples + one target per base
        return self.num_inner_epochs * math.ceil(rows / self.train_batch_size)

    def make_pairs(self, prompts, traj, rewards, images):
        target, _, _, bases = self.fuse(prompts, traj, rewards, images, self.sample_batch_size)
        winners = torch.arange(len(traj.log_probs), len(traj.log_probs) + len(bases))
        return Trajectory.cat([traj, target]), winners, bases

    def start_round(self) -> list[dict]:
        if self.objective.trains_on == "pairs":
            return super().start_round()
        prompts, traj, rewards, images = self.grouped_rollout(self.prompts_per_round, self.samples_per_prompt,
                                                             self.sample_batch_size)
        target, target_rewards, _, bases = self.fuse(prompts, traj, rewards, images, self.sample_batch_size)
        target.log_probs = self.step_log_probs(target)  # under the unfused policy
        showcase = self.showcase
        prompts = prompts + [prompts[i] for i in bases]
        rewards = torch.cat([rewards, target_rewards])
        batches = self.micro_batches(len(prompts), self.generator(1))
        round_prompts, round_rewards, mine = self.gather_round(prompts, rewards)
        self.buffer = {"traj": Trajectory.cat([traj, target]),
                       "advantages": self.advantages(round_prompts, round_rewards)[mine],
                       "negative": self.model.encode_prompts([""])}
        self.log_rollout(images, prompts, rewards, round_rewards)
        self.showcase = showcase  # the triplets, not the plain samples
        return batches


def dfusion(algo: str = "dpo", clip_range: float = 1e-4, adv_clip_max: float = 5.0, objective=None, **kwargs):
    """`method=dfusion`: trajectory DPO (or `method.loss`'s) on fused pairs, or with `method.algo=ddpo` PPO-clip
    (clip_range, adv_clip_max) on samples and targets; `method.objective` replaces either."""
    if algo not in ("dpo", "ddpo"):
        raise ConfigError(f"method.algo must be dpo or ddpo, got {algo!r}")
    if objective is None and algo == "ddpo":
        objective = PPOClip(clip_range, adv_clip_max)
    return DFusion(objective=objective, **kwargs)
