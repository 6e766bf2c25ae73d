"""B²-DiffuRL + DDPO (Hu et al., CVPR 2025): backward progressive training on branched rollouts
(docs/b2diffurl.md). One stage = one round = one Lightning epoch; the stage index is `round_index`."""

from __future__ import annotations

import math

import torch

from alignlab.core.advantages import group_zscore
from alignlab.core.branching import branch_sample
from alignlab.core.stages import StageZScores, select_siblings, split_step
from alignlab.errors import ConfigError, require_at_least_one
from alignlab.methods.ddpo import DDPO
from alignlab.objectives import PPOClip, TrajectoryDPO


class B2DiffuRL(DDPO):
    """DDPO whose rounds branch each prompt's rollout into K siblings over the last `split_step` steps,
    keep the best / worst sibling of each family by per-prompt z-score, and train on the branched steps only.
    The branched tail grows from `split_step_min` to `split_step_max` steps over `num_stages`.

    With an objective that trains on advantages (the paper: PPO-clip without an advantage clip in the loss, the
    z-scores being clipped before the beta weights, as the official trainer) the kept siblings carry their
    weighted z-scores; with one that trains on pairs (`method.algo=dpo`: trajectory DPO against the frozen
    reference) each family's best and worst sibling form a pair. `sample_batch_size` counts prompts (families)
    per batch: a batch holds sample_batch_size · K images. Everything else (accumulation, optimizer step,
    diagnostics) is DDPO's.
    """

    round_makes = ("advantages", "pairs")

    def __init__(
        self,
        model,
        sampler,
        reward,
        optimizer,
        prompts,
        seed: int = 0,
        num_batches_per_round: int = 32,
        num_branches: int = 5,
        branch_chunk: int | None = None,
        split_step_min: int = 14,
        split_step_max: int = 20,
        num_stages: int = 100,
        history_cnt: int = 8,
        pos_threshold: float = 0.5,
        neg_threshold: float = -0.5,
        beta1: float = 1.0,
        beta2: float = 1.0,
        train_batch_size: int = 2,
        num_inner_epochs: int = 2,
        clip_range: float = 0.1,
        objective=None,
        **ddpo_options,
    ):
        super().__init__(model, sampler, reward, optimizer, prompts, seed, num_batches_per_round=num_batches_per_round,
                         train_batch_size=train_batch_size,
                         num_inner_epochs=num_inner_epochs, clip_range=clip_range, per_prompt_stat_tracking=False,
                         objective=objective or PPOClip(clip_range, math.inf), **ddpo_options)
        steps = sampler.num_steps
        if num_branches < 2:
            raise ConfigError(f"method.num_branches must be >= 2 so that siblings can be compared, got {num_branches}")
        if not 1 <= split_step_min <= split_step_max <= steps:
            raise ConfigError(
                f"method.split_step_min and method.split_step_max must satisfy 1 <= split_step_min <= "
                f"split_step_max <= sampler.num_steps ({steps}), got {split_step_min} and {split_step_max}"
            )
        require_at_least_one("method", num_stages=num_stages, branch_chunk=branch_chunk or 1)
        if history_cnt < 0:
            raise ConfigError(f"method.history_cnt must be >= 0, got {history_cnt}")
        self.num_branches, self.branch_chunk = num_branches, branch_chunk
        self.split_step_min, self.split_step_max, self.num_stages = split_step_min, split_step_max, num_stages
        self.pos_threshold, self.neg_threshold = pos_threshold, neg_threshold
        self.beta1, self.beta2 = beta1, beta2
        self.zscores = StageZScores(history_cnt)

    def warn_if_groups_are_small(self) -> None:
        """Each family's K siblings are a group of one prompt's samples."""

    @property
    def split_step(self) -> int:
        """Number of final steps this stage branches and trains."""
        return split_step(self.round_index, self.split_step_min, self.split_step_max, self.num_stages)

    @property
    def trained_interval(self) -> tuple[int, int]:
        return self.sampler.num_steps - self.split_step, self.sampler.num_steps

    def micro_batches_per_round(self) -> int:
        """The bound, with both siblings of every family kept (one pair per family for a preference objective):
        Lightning plans every epoch with it."""
        kept = 2 if self.objective.trains_on == "advantages" else 1
        return self.num_inner_epochs * math.ceil(kept * self.samples_per_round / self.train_batch_size)

    def family_prompts(self) -> list[str]:
        """This rank's share of the round's prompts, each repeated K times (one per sibling). Noise comes from
        one generator per rank (branch_sample draws a batch's branches from one), so unlike DDPO's rows a
        data-parallel round is not the same samples as one process of the combined size."""
        prompts = self.share_of_round(self.prompts.sample(self.samples_per_round * self.world_size,
                                                          self.generator(0)))
        return [p for p in prompts for _ in range(self.num_branches)]

    def sample_batch(self, prompts: list[str], negative: torch.Tensor, generator: torch.Generator):
        """`prompts` repeats each family's prompt K times in a row: one prefix per family, then K branches."""
        model, k = self.model, self.num_branches
        items = self.item_batch(prompts[::k]) if self.sampler.needs_items else None
        traj, _ = branch_sample(self.sampler, model.unet, model.scheduler, model.encode_prompts(prompts[::k]),
                                negative, model.latent_shape(len(prompts) // k), generator, self.split_step, k,
                                self.branch_chunk, items)
        return traj

    def start_round(self) -> list[dict]:
        k = self.num_branches
        prompts = self.family_prompts()
        traj, rewards, images = self.rollout(prompts, self.sample_batch_size * k, self.generator(2))
        round_prompts, round_rewards, mine = self.gather_round(prompts, rewards)
        if self.objective.group_advantages:  # GRPO-style objectives: each family's siblings are the group
            families = [row // k for row in range(len(round_prompts))]
            z = group_zscore(families, round_rewards, self.objective.group_advantages)[mine]
        else:
            z = self.zscores.update(round_prompts, round_rewards)[mine]
        if self.objective.trains_on == "pairs":
            batches = self.pair_round(traj, rewards, z.view(-1, k))
        else:
            batches = self.sibling_round(traj, z.view(-1, k))
        self.log_rollout(images, prompts, rewards, round_rewards)
        self.stats["split_step"].append(float(self.split_step))
        return batches

    def sibling_round(self, traj, z: torch.Tensor) -> list[dict]:
        """The paper's round: each family's best sibling when z >= pos_threshold and worst when z < neg_threshold,
        with its z-score clipped and weighted by beta1 / beta2 as the advantage."""
        rows, is_best = select_siblings(z, self.pos_threshold, self.neg_threshold)
        kept_z = z.flatten()[rows].clamp(-self.adv_clip_max, self.adv_clip_max)
        weight = torch.where(kept_z > 0, self.beta1, self.beta2)  # by sign, as the official trainer does
        batches = self.micro_batches(len(rows), self.generator(1)) if len(rows) else []
        self.buffer = {"traj": traj.index(rows), "advantages": kept_z * weight,
                       "negative": self.model.encode_prompts([""]), "micro_batches": len(batches)}
        self.stats["kept_positive"].append(float(is_best.sum()))
        self.stats["kept_negative"].append(float((~is_best).sum()))
        return batches

    def pair_round(self, traj, rewards: torch.Tensor, z: torch.Tensor) -> list[dict]:
        """Preference pairs: in each family whose best AND worst siblings pass the thresholds, the two share their
        prefix and differ only on the branched steps — a natural preference pair."""
        k = self.num_branches
        families = torch.arange(z.shape[0])
        best, worst = z.argmax(dim=1), z.argmin(dim=1)
        paired = (z[families, best] >= self.pos_threshold) & (z[families, worst] < self.neg_threshold)
        winners, losers = (families * k + best)[paired], (families * k + worst)[paired]
        kept = traj.index(torch.cat([winners, losers]).to(traj.latents.device))
        batches = self.micro_batches(len(winners), self.generator(1)) if len(winners) else []
        pairs = torch.arange(len(winners), device=self.device)
        self.buffer = {"traj": kept, "winners": pairs, "losers": pairs + len(winners),
                       "negative": self.model.encode_prompts([""]), "micro_batches": len(batches)}
        self.stats["pairs"].append(float(len(winners)))
        if len(winners):
            self.stats["reward_winner"].append(rewards[winners].mean().item())
            self.stats["reward_loser"].append(rewards[losers].mean().item())
        return batches

    def keep_showcase(self, images: torch.Tensor, prompts: list[str], rewards: torch.Tensor) -> None:
        """Whole branch families, one grid row each, so siblings are seen side by side."""
        n = max(1, self.log_images // self.num_branches) * self.num_branches
        self.showcase = {"images": images[:n], "prompts": prompts[:n], "rewards": rewards[:n].tolist(),
                         "columns": self.num_branches}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["zscore_history"] = self.zscores.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.zscores.load_state_dict(checkpoint["zscore_history"])


def b2diffurl(algo: str = "ddpo", beta: float = 0.1, dpo_clip_eps: float | None = 0.1, objective=None, **kwargs):
    """`method=b2diffurl`: the paper's PPO-clip objective, or with `method.algo=dpo` trajectory DPO on
    best/worst sibling pairs (beta, dpo_clip_eps); `method.objective` replaces either."""
    if algo not in ("ddpo", "dpo"):
        raise ConfigError(f"method.algo must be ddpo or dpo, got {algo!r}")
    if objective is None and algo == "dpo":
        objective = TrajectoryDPO(beta, dpo_clip_eps)
    return B2DiffuRL(objective=objective, **kwargs)
