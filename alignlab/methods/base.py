"""What every RL method shares: components, seeded rounds, rollouts with rewards, lean checkpoints."""

from __future__ import annotations

import logging
import time
import warnings
from collections import defaultdict

import lightning as L
import numpy as np
import torch
from tqdm.auto import tqdm

from alignlab.core.advantages import PerPromptStatTracker, batch_zscore, group_zscore
from alignlab.eval.judge import judge_images, oracle_stats
from alignlab.samplers.ddim import Trajectory
from alignlab.samplers.generation import decode_and_score, sample_prompts
from alignlab.core.token_spans import ItemBatch
from alignlab.errors import AlignlabError, ConfigError, require_at_least_one, require_positive
from alignlab.methods.rounds import END_OF_ROUND, is_end_of_round, round_loader
from alignlab.models import require_reference, trainable_parameters

log = logging.getLogger("alignlab")


def warn_if_cut(tokenizer, prompts: list[str]) -> list[str]:
    """Warn about (and return) the prompts longer than the text encoder reads: SD's pipeline cuts them silently."""
    limit = tokenizer.model_max_length
    cut = [p for p in dict.fromkeys(prompts) if len(tokenizer(p, truncation=False).input_ids) > limit]
    if cut:
        log.warning("%d prompt(s) are longer than the text encoder's %d tokens and are cut there, e.g. %r", len(cut),
                    limit, cut[0][:80] + ("…" if len(cut[0]) > 80 else ""))
    return cut


class RLMethod(L.LightningModule):
    """A LightningModule whose epochs are RL rounds (manual optimisation).

    A method is a round builder with an objective (alignlab/objectives): subclasses implement `start_round()`
    (rollout, rewards, targets -> `self.buffer` and a list of micro-batches) and `micro_batches_per_round()`;
    the objective prepares the round and trains each micro-batch. Randomness
    is drawn from generators seeded by (seed, round, rank, stream), so a resumed run replays exactly what
    an uninterrupted one does. `round_index` (rounds completed) is our own checkpointed counter:
    Lightning's `current_epoch` is not yet restored when a resumed run's first round starts.

    Data-parallel (trainer=ddp, docs/scaling.md): every rank draws the round's global prompt list and
    takes its share, sample rows are keyed by their global index, rewards are gathered before they are
    normalised, and every rank runs as many micro-batches as the busiest one.
    """

    round_makes = ("advantages",)  # and/or "pairs": what start_round() can put in the buffer for the objective
    evaluation_only = False  # True: nothing to train; alignlab.run calls trainer.test (method=asyndm)

    def __init__(self, model, sampler, reward, optimizer, prompts, seed: int = 0, log_images: int = 16,
                 gradient_accumulation_steps: int = 1, max_grad_norm: float = 1.0, objective=None):
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the trainable parameters only
        self.model, self.sampler, self.reward = model, sampler, reward
        self.optimizer_factory, self.prompts = optimizer, prompts
        self.seed, self.log_images = seed, log_images
        self.stats: dict[str, list[float]] = defaultdict(list)
        self.showcase: dict = {}
        self.round_index = 0
        self.grad_accum, self.max_grad_norm = gradient_accumulation_steps, max_grad_norm
        self.first_row = 0  # global index of this rank's first sample row this round (share_of_round)
        self.idle_batches = 0  # this round's padding micro-batches (round_batches)
        self.tracker = None  # per-prompt reward statistics, where a round builder normalises with them
        self.evaluation = None  # held-out evaluation at due rounds' ends (alignlab.run sets it from cfg.eval)
        self.evaluated: dict | None = None  # the last finished round's evaluation, for the callbacks to save
        self.round_row: dict[str, float] = {}  # the last finished round's metrics row, for the callbacks to write
        require_positive("method", max_grad_norm=max_grad_norm)
        self.objective = objective  # None: nothing to train (evaluation_only)
        if objective is not None and objective.trains_on not in self.round_makes:
            raise ConfigError(f"method.objective: {type(objective).__name__} trains on {objective.trains_on} and "
                              f"{type(self).__name__}'s rounds make {' or '.join(self.round_makes)}")
        if objective is not None and objective.needs_reference:
            require_reference(model)
        if sampler.needs_items and not self.evaluation_only:
            sampler.check_prompts(prompts, "train", prompts.train)  # (AsynDM checks the split it evaluates)
        warn_if_cut(model.tokenizer, prompts.train + prompts.test)

    # -- randomness ---------------------------------------------------------------------------
    def generator(self, stream: int, row: int | None = None) -> torch.Generator:
        """A CPU generator for this round and purpose (0 prompts, 1 update order, 2 noise, ...), one per rank.

        The same on every rank for stream 0 (each rank takes its share of the round's prompts) and for sample
        row `row` of this rank, which is keyed by its global index `first_row + row`: W ranks of n rows
        draw exactly the rows of one process of W·n rows."""
        shared = stream == 0 or row is not None
        key = [self.seed, self.round_index, 0 if shared else self.global_rank, stream]
        key += [] if row is None else [self.first_row + row]
        seq = np.random.SeedSequence(key)
        return torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))

    # -- data parallelism ---------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer else 1

    def share_of_round(self, rows: list) -> list:
        """This rank's equal share of the round's global `rows` (drawn alike on every rank); sets `first_row`."""
        count = len(rows) // self.world_size
        self.first_row = self.global_rank * count
        return rows[self.first_row : self.first_row + count]

    def gather_round(self, prompts: list[str], rewards: torch.Tensor) -> tuple[list[str], torch.Tensor, slice]:
        """Every rank's prompts and rewards in rank order, and where this rank's rows lie in them: per-prompt
        statistics must see the whole round, and stay identical on every rank (rank 0 checkpoints them)."""
        if self.world_size == 1:
            return prompts, rewards, slice(None)
        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, (prompts, rewards.cpu()))
        first = sum(len(p) for p, _ in parts[: self.global_rank])
        every_prompt = [prompt for part, _ in parts for prompt in part]
        every_reward = torch.cat([r for _, r in parts]).to(rewards.device)
        return every_prompt, every_reward, slice(first, first + len(prompts))

    def round_batches(self) -> list[dict]:
        """The round's micro-batches, padded with idle ones to the most any rank has: every backward pass
        all-reduces gradients across ranks, so all ranks must make as many."""
        with self.model.autocast():  # the update runs under the trainer's matching autocast (run.check_precision)
            batches = self.start_round()
            self.objective.prepare(self)
        most = len(batches)
        if self.world_size > 1:
            most = int(self.trainer.strategy.reduce(torch.tensor(most, device=self.device), reduce_op="max"))
        self.idle_batches = most - len(batches)
        return batches + [{"idle": True}] * self.idle_batches + [END_OF_ROUND]

    # -- rollouts -----------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: list[str], batch_size: int, generator: torch.Generator | list[torch.Generator]):
        """Sample, decode and score `prompts` in batches -> (trajectory, rewards, images).
        `generator` is one generator, or one per prompt (replayable rows)."""
        model = self.model
        negative = model.encode_prompts([""])
        parts, rewards, images, components = [], [], [], defaultdict(list)
        start = time.perf_counter()
        for first in tqdm(range(0, len(prompts), batch_size), desc=f"round {self.round_index} rollout",
                          leave=False, disable=not self.sampler.progress):
            chunk = prompts[first : first + batch_size]
            rows = generator[first : first + batch_size] if isinstance(generator, list) else generator
            traj = self.sample_batch(chunk, negative, rows)
            decoded, scores = decode_and_score(model, self.reward, traj, chunk)
            rewards.append(scores.to(self.device))
            for name, values in getattr(self.reward, "last_components", {}).items():  # reward=multi's parts
                components[name].append(values.float().cpu())
            parts.append(traj)
            images.append(decoded.cpu())
        self.stats["time_rollout"].append(time.perf_counter() - start)
        bad = int((~torch.isfinite(torch.cat(rewards))).sum())
        if bad:
            warnings.warn(f"round {self.round_index}: {bad} non-finite reward(s)", stacklevel=2)
        self.stats["nonfinite_rewards"].append(float(bad))
        for name, values in components.items():
            self.stats[f"reward/{name}"].append(torch.cat(values).mean().item())
        images = torch.cat(images)
        # a prompt set with a judge (the world's oracle): the gold metric next to the proxy
        for key, value in oracle_stats(judge_images(self.prompts, images, prompts)).items():
            self.stats[key].append(value)
        return Trajectory.cat(parts), torch.cat(rewards), images

    def sample_batch(self, prompts: list[str], negative: torch.Tensor, generator: torch.Generator) -> Trajectory:
        """One batch of rollouts, one row per prompt (B²-DiffuRL overrides it to branch shared prefixes).
        Samplers that mask the prompts' items (sampler=asyn) also get the items."""
        items = self.item_batch(prompts) if self.sampler.needs_items else None
        return sample_prompts(self.model, self.sampler, prompts, negative, generator, items)

    def item_batch(self, prompts: list[str]) -> ItemBatch:
        """The prompts' item words as token spans of the model's tokenizer."""
        return ItemBatch.build(self.model.tokenizer, prompts, [self.prompts.items_for(p) for p in prompts])

    def grouped_rollout(self, prompt_count: int, samples_per_prompt: int, batch_size: int):
        """`samples_per_prompt` samples for each of `prompt_count` distinct train prompts per rank (every prompt
        once per round when the set has that many, as the papers' templates are used; cycling otherwise),
        each row with its own generator so it can be replayed. Rows of a prompt are consecutive."""
        pool = self.prompts.train
        order = torch.randperm(len(pool), generator=self.generator(0)).tolist()
        prompts = self.share_of_round([pool[order[i % len(pool)]] for i in range(prompt_count * self.world_size)
                                       for _ in range(samples_per_prompt)])
        generators = [self.generator(2, row) for row in range(len(prompts))]
        return (prompts, *self.rollout(prompts, batch_size, generators))

    @torch.no_grad()
    def step_log_probs(self, traj: Trajectory, rows_per_call: int | None = None) -> torch.Tensor:
        """log π of every stored step of `traj` under the current weights (the frozen model's inside
        `frozen_reference`), `rows_per_call` rows per UNet call (None: all at once)."""
        negative = self.model.encode_prompts([""])
        rows, steps = traj.log_probs.shape
        size = rows_per_call or max(rows, 1)
        out = torch.empty_like(traj.log_probs)
        for first in range(0, rows, size):
            part = traj.index(slice(first, first + size))
            for j in range(steps):
                step = torch.full((len(part.log_probs),), j, device=out.device)
                out[first : first + len(step), j] = self.sampler.step_log_prob(
                    self.model.unet, self.model.scheduler, part, step, negative, self.train_guidance)
        return out

    # -- micro-batches --------------------------------------------------------------------------
    @property
    def trained_interval(self) -> tuple[int, int]:
        """Step indices [first, end) the update trains: every step unless a round builder narrows them (DDPO's
        step_window / early_share, B²-DiffuRL's branched tail)."""
        return 0, self.sampler.num_steps

    @property
    def train_timesteps(self) -> int:
        """Steps each row trains per micro-batch: `timestep_fraction` of the trained interval, at least one."""
        first, end = self.trained_interval
        return max(1, int((end - first) * self.timestep_fraction))

    def micro_batches(self, total: int, generator: torch.Generator) -> list[dict]:
        """`num_inner_epochs` passes over `total` rows (samples, or pairs for a preference objective) in shuffled
        micro-batches of `train_batch_size`, each row with a random order of the trained steps; for an objective
        that re-noises final latents, a random timestep and noise per row (`renoise="random_t"`: Diffusion-DPO) or
        noise per trained step (`"trained_steps"`: DiffusionNFT)."""
        first_step, end_step = self.trained_interval
        train_t = self.model.scheduler.config.num_train_timesteps
        batches = []
        for _ in range(self.num_inner_epochs):
            order = torch.randperm(total, generator=generator)
            step_order = first_step + torch.stack(
                [torch.randperm(end_step - first_step, generator=generator) for _ in range(total)])
            for first in range(0, total, self.train_batch_size):
                rows = order[first : first + self.train_batch_size]
                batch = {"rows": rows, "steps": step_order[rows, : self.train_timesteps]}
                if self.objective.renoise == "random_t":
                    batch["t"] = torch.randint(train_t, (len(rows),), generator=generator)
                    batch["noise"] = torch.randn(self.model.latent_shape(len(rows)), generator=generator)
                elif self.objective.renoise == "trained_steps":
                    shape = self.model.latent_shape(len(rows))
                    batch["noise"] = torch.randn((shape[0], self.train_timesteps, *shape[1:]), generator=generator)
                batches.append(batch)
        return batches

    # -- advantages -----------------------------------------------------------------------------
    def track_prompts(self, enabled: bool, buffer_size: int, min_count: int) -> None:
        """Normalise rewards per prompt over its last `buffer_size` rewards once it has `min_count` (DDPO's stat
        tracker, checkpointed with the run); disabled: over the round."""
        require_at_least_one("method", stat_buffer_size=buffer_size, stat_min_count=min_count)
        self.tracker = PerPromptStatTracker(buffer_size, min_count) if enabled else None

    def advantages(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        """Normalised rewards of the whole round (all ranks' rows: see gather_round): within each prompt's group of
        this round when the objective asks for group advantages (GRPO, DiffusionNFT), else by the per-prompt
        statistics tracker or the round's z-score."""
        if self.objective.group_advantages:
            return group_zscore(prompts, rewards, self.objective.group_advantages)
        return self.tracker.update(prompts, rewards) if self.tracker else batch_zscore(rewards)

    def log_rollout(self, images: torch.Tensor, prompts: list[str], rewards: torch.Tensor,
                    round_rewards: torch.Tensor) -> None:
        """The sample grid (this rank's) and the reward statistics (the whole round's)."""
        self.keep_showcase(images, prompts, rewards)
        self.record_round_rewards(round_rewards)

    def record_round_rewards(self, round_rewards: torch.Tensor) -> None:
        """The round's reward statistics over every rank's samples (gather_round): mean, std and count."""
        self.stats["reward_mean"].append(round_rewards.mean().item())
        self.stats["reward_std"].append(round_rewards.std(unbiased=False).item())
        self.stats["samples_per_round"].append(float(len(round_rewards)))

    def keep_showcase(self, images: torch.Tensor, prompts: list[str], rewards: torch.Tensor) -> None:
        n = self.log_images
        self.showcase = {"images": images[:n], "prompts": prompts[:n], "rewards": rewards[:n].tolist()}

    # -- updates ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        if is_end_of_round(batch):
            self.end_round()
        elif batch.get("idle"):
            self.idle_step(batch_idx)
        else:
            start = time.perf_counter()
            self.objective.train(self, batch)
            self.after_micro_batch(batch_idx)
            self.stats["time_update"].append(time.perf_counter() - start)

    def idle_step(self, batch_idx: int) -> None:
        """A padding micro-batch: zero-gradient backward passes, as many as a real micro-batch makes, so that
        this rank joins the other ranks' gradient all-reduces and optimizer steps."""
        for _ in range(self.objective.backward_passes(self)):
            self.manual_backward(sum(p.sum() for p in trainable_parameters(self.model)) * 0.0)
        self.after_micro_batch(batch_idx)

    def after_micro_batch(self, batch_idx: int) -> None:
        """Step the optimizer every `gradient_accumulation_steps` micro-batches of the round and at its end.

        Windows restart with every round, and a last, partial window still steps (its gradient summed over
        fewer micro-batches), so every kept sample trains; B²-DiffuRL's official trainer drops a round's
        leftover gradient instead."""
        if (batch_idx + 1) % self.grad_accum == 0 or batch_idx == self.round_length() + self.idle_batches - 1:
            self.optimizer_step()

    def round_length(self) -> int:
        """Micro-batches the current round yields. Where rounds vary (B²-DiffuRL trains only the siblings
        it selects), micro_batches_per_round() is the bound Lightning plans every epoch with (an epoch ends
        early when its round runs out) and this is the round's own count."""
        return self.micro_batches_per_round()

    def optimizer_step(self) -> None:
        optimizer = self.optimizers()
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # fp16 mixed precision: clip the true gradients, not the scaled ones
            scaler.unscale_(optimizer.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(self.model), self.max_grad_norm)
        if scaler is None and not torch.isfinite(norm):  # (a GradScaler skips such steps by design)
            raise AlignlabError(
                f"non-finite gradient in round {self.round_index} (a NaN/inf reward or loss?): stopped before the "
                "update; the last good checkpoint is checkpoints/last.ckpt")
        self.stats["grad_norm"].append(norm.item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # -- Lightning plumbing -------------------------------------------------------------------
    def train_dataloader(self):
        return round_loader(self)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(trainable_parameters(self.model))
        self.configured_hyperparameters = [{k: v for k, v in group.items() if k != "params"}
                                           for group in optimizer.param_groups]
        return optimizer

    def on_train_start(self) -> None:
        """This run's optimizer settings apply, also when it resumes a checkpoint trained with others: Lightning
        restores the optimizer state with the old learning rate (and betas, weight decay) in it, while the
        recorded config and the resume warning say the new ones apply."""
        for optimizer in self.trainer.optimizers:
            for group, configured in zip(optimizer.param_groups, self.configured_hyperparameters, strict=True):
                group.update(configured)

    def end_round(self) -> None:
        """The round's end, run as its last batch (END_OF_ROUND) so that it precedes every callback's
        on_train_epoch_end, also in a round with nothing to train: the held-out evaluation where due (rank 0),
        then the metrics row (finish_round)."""
        self.evaluated = None
        if self.evaluation is not None and self.trainer.is_global_zero and self.evaluation.due(
                self.round_index, self.trainer.max_epochs):
            start = time.perf_counter()
            self.evaluated = self.evaluation(self)
            for key, value in self.evaluated["stats"].items():
                self.stats[key].append(value)
            self.stats["time_eval"].append(time.perf_counter() - start)
        self.round_row = self.finish_round()

    def finish_round(self) -> dict[str, float]:
        """The round's metrics row (the mean of everything recorded in `self.stats`, but the total of the
        `time_*` seconds: a round's update time is the sum over its micro-batches); starts the next round."""
        row = {"round": self.round_index}
        row.update({key: float(np.sum(values) if key.startswith("time_") else np.mean(values))
                    for key, values in self.stats.items() if values})
        self.stats = defaultdict(list)
        self.round_index += 1
        return row

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["round_index"] = self.round_index
        if self.tracker:
            checkpoint["stat_tracker"] = self.tracker.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.round_index = checkpoint["round_index"]
        if self.tracker and "stat_tracker" in checkpoint:
            self.tracker.load_state_dict(checkpoint["stat_tracker"])
