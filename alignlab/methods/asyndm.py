"""AsynDM's evaluation (training-free, as in the paper): DM, DM_concave and AsynDM side by side.

Every image of the prompt split is generated three times from the SAME initial and per-step noise
(one generator per image row, re-created for each variant), so the variants differ only in their
timestep schedules. Writes <run dir>/asyndm/: table.md and table.json (reward per variant, paired
difference and win rate against DM), triplets.png (DM | DM_concave | AsynDM per image) and
timestep_maps.png (AsynDM's per-pixel timesteps at a few steps: the item masks, brighter = noisier).
With a prompt set that has a gold judge (the shapes world's oracle) every image is also judged: ground truth
next to the reward.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

from alignlab.eval.judge import judge_images
from alignlab.samplers.asyn import VARIANTS, AsynSampler
from alignlab.core.masks import upsample_nearest
from alignlab.samplers.ddim import Trajectory
from alignlab.samplers.generation import decode_and_score, sample_prompts
from alignlab.errors import ConfigError, require_at_least_one
from alignlab.methods.base import RLMethod
from alignlab.training.artifacts import sample_grid

MASK_IMAGES = 4  # images shown in the timestep-map picture


class AsynDM(RLMethod):
    evaluation_only = True

    def __init__(self, model, sampler, reward, optimizer, prompts, seed: int = 0, split: str = "train",
                 num_prompts: int | None = None, images_per_prompt: int = 1, batch_size: int = 8,
                 mask_steps: int = 4, log_images: int = 16):
        super().__init__(model, sampler, reward, optimizer, prompts, seed, log_images)
        if not isinstance(sampler, AsynSampler):
            raise ConfigError("method=asyndm needs the asynchronous sampler: use sampler=asyn")
        if split not in ("train", "test"):
            raise ConfigError(f"method.split must be train or test, got {split!r}")
        require_at_least_one("method", images_per_prompt=images_per_prompt, batch_size=batch_size,
                             mask_steps=mask_steps)
        pool = (prompts.train if split == "train" else prompts.test)[:num_prompts]
        sampler.check_prompts(prompts, split, pool)
        self.rows = [p for p in pool for _ in range(images_per_prompt)]
        self.gold = prompts.judge is not None  # the prompt set's gold judge (the world's oracle) scores each image
        self.batch_size, self.mask_steps = batch_size, mask_steps
        self.results: dict[str, list] = defaultdict(list)

    def setup(self, stage: str) -> None:
        if self.world_size > 1:  # each rank would write its part of the rows over the others' tables
            raise ConfigError("method=asyndm evaluates in one process: run it without trainer=ddp/fsdp")

    def on_test_epoch_start(self) -> None:
        self.results = defaultdict(list)

    def test_dataloader(self):
        return DataLoader(list(range(0, len(self.rows), self.batch_size)), batch_size=None)

    @torch.no_grad()
    def generate(self, first: int) -> dict[str, Trajectory]:
        """The three variants of rows [first, first + batch_size), each from the rows' own generators."""
        prompts = self.rows[first : first + self.batch_size]
        embeds, negative = self.model.encode_prompts(prompts), self.model.encode_prompts([""])
        items = self.item_batch(prompts)
        trajectories = {}
        for variant in VARIANTS:  # one batch's embeddings for the three variants
            generators = [self.generator(2, row) for row in range(first, first + len(prompts))]
            trajectories[variant] = sample_prompts(self.model, self.sampler, prompts, negative, generators, items,
                                                   embeds, variant=variant)
        return trajectories

    def test_step(self, first, batch_idx: int) -> None:
        first = int(first)
        prompts = self.rows[first : first + self.batch_size]
        shown = len(self.results["prompts"])  # only the rows the pictures show are kept
        keep, keep_maps = max(0, max(self.log_images, MASK_IMAGES) - shown), max(0, MASK_IMAGES - shown)
        self.results["prompts"] += prompts
        for variant, traj in self.generate(first).items():
            images, rewards = decode_and_score(self.model, self.reward, traj, prompts)
            self.results[variant] += rewards.cpu().tolist()
            if self.gold:
                scores, passed = judge_images(self.prompts, images, prompts)
                self.results[f"{variant}_oracle"] += scores.cpu().tolist()
                self.results[f"{variant}_passed"] += passed.cpu().tolist()
            self.results[f"{variant}_images"].append(images[:keep].cpu())
            if variant == "asyndm":
                self.results["timesteps"].append(traj.timesteps[:keep_maps].cpu())

    def on_test_epoch_end(self) -> None:
        out = Path(self.trainer.default_root_dir) / "asyndm"
        images = {v: torch.cat(self.results[f"{v}_images"]) for v in VARIANTS}
        table = self.comparison()
        for variant, row in table["variants"].items():
            self.log(f"reward/{variant}", row["reward_mean"])
            if self.gold:
                self.log(f"oracle_accuracy/{variant}", row["oracle_accuracy"])
        self.log("reward_mean", table["variants"]["asyndm"]["reward_mean"])
        if not self.trainer.is_global_zero:
            return
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
        (out / "table.md").write_text(markdown(table))
        grids = {"triplets": self.triplet_grid(images), "timestep_maps": self.timestep_grid(images["asyndm"])}
        for name, grid in grids.items():
            grid.save(out / f"{name}.png")
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(f"asyndm/{name}", [grid])

    def comparison(self) -> dict:
        """Reward mean/std per variant, and paired (same noise) difference and win rate against DM; on world
        prompts also the oracle's mean score and strict accuracy per variant, and per image."""
        rewards = {v: torch.tensor(self.results[v]) for v in VARIANTS}
        variants = {v: {"reward_mean": r.mean().item(), "reward_std": r.std(unbiased=False).item(),
                        "delta_vs_dm": (r - rewards["dm"]).mean().item(),
                        "win_rate_vs_dm": (r > rewards["dm"]).float().mean().item()} for v, r in rewards.items()}
        per_image = [{"prompt": p, **{v: rewards[v][i].item() for v in VARIANTS}}
                     for i, p in enumerate(self.results["prompts"])]
        if self.gold:
            for v in VARIANTS:
                variants[v]["oracle_score"] = float(torch.tensor(self.results[f"{v}_oracle"]).mean())
                variants[v]["oracle_accuracy"] = float(torch.tensor(self.results[f"{v}_passed"]).float().mean())
            for i, row in enumerate(per_image):
                row["oracle"] = {v: self.results[f"{v}_oracle"][i] for v in VARIANTS}
                row["passed"] = {v: self.results[f"{v}_passed"][i] for v in VARIANTS}
        return {"reward": getattr(self.reward, "name", type(self.reward).__name__), "images": len(per_image),
                "num_steps": self.sampler.num_steps, "curve": self.sampler.curve, "mask_mode": self.sampler.mask_mode,
                "variants": variants, "per_image": per_image}

    def triplet_grid(self, images: dict[str, torch.Tensor]):
        rows = min(len(self.results["prompts"]), self.log_images)
        tiles, captions = [], []
        for i in range(rows):
            for variant in VARIANTS:
                tiles.append(images[variant][i])
                captions.append(f"{variant} {self.results[variant][i]:.3g}")
            captions[-3] += f": {self.results['prompts'][i]}"
        return sample_grid(torch.stack(tiles), captions, columns=len(VARIANTS))

    def timestep_grid(self, images: torch.Tensor):
        """Per image: the AsynDM image, then its timestep map at `mask_steps` steps (min-max scaled)."""
        maps = torch.cat(self.results["timesteps"]).float()  # (n, steps, h, w)
        n = maps.shape[1]  # interior steps: the first and last maps of dynamic masks are uniform
        steps = sorted({min(n - 1, round((i + 1) * n / (self.mask_steps + 1))) for i in range(self.mask_steps)})
        tiles, captions = [], []
        for i in range(len(maps)):
            tiles.append(images[i])
            captions.append(self.results["prompts"][i])
            for j in steps:
                t = maps[i, j]
                scaled = (t - t.min()) / (t.max() - t.min()).clamp(min=1)
                tiles.append(upsample_nearest(scaled[None], tuple(images.shape[-2:])).expand(3, -1, -1))
                captions.append(f"step {j}: t {int(t.min())}-{int(t.max())}")
        return sample_grid(torch.stack(tiles), captions, columns=1 + len(steps))


def markdown(table: dict) -> str:
    title = (f"# AsynDM comparison: {table['images']} images, reward {table['reward']}, {table['num_steps']} steps, "
             f"curve {table['curve']}, {table['mask_mode']} masks")
    gold = "oracle_score" in table["variants"]["dm"]
    lines = [title, "", "| variant | reward mean | reward std | Δ vs DM (same noise) | win rate vs DM |"
             + (" oracle score | oracle accuracy |" if gold else ""), "|---|---|---|---|---|" + "---|---|" * gold]
    for variant, row in table["variants"].items():
        lines.append(f"| {variant} | {row['reward_mean']:.4g} | {row['reward_std']:.4g} | {row['delta_vs_dm']:+.4g} "
                     f"| {row['win_rate_vs_dm']:.2f} |"
                     + (f" {row['oracle_score']:.3f} | {row['oracle_accuracy']:.3f} |" if gold else ""))
    return "\n".join(lines) + "\n"
