"""Should a rollout score batch i in a worker thread while batch i + 1 samples, as ddpo-pytorch does?

Measured before keeping it (issue 7): the world model's rollout of a round's batches, rewards scored
inline (alignlab's rollout) vs in a one-thread pool overlapping the next batch's sampling, timed
interleaved in one process; plus the rewards' share of the inline rollout (the most overlap can save).

    python -m alignlab.benchmarks.rewards [--rewards clip,jpeg_compressibility,oracle] [--batches 4] [--batch 16]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import torch

import alignlab  # noqa: F401
from alignlab.benchmarks.speed import interleaved, write_results
from alignlab.samplers.ddim import DDIMSampler
from alignlab.samplers.generation import sample_prompts
from alignlab.rewards import ClipScore, JpegCompressibility
from alignlab.world import OracleReward, build_world, world_prompt_set
from alignlab.world.clip import CHECKPOINT, NAME

REWARDS = {"clip": lambda: ClipScore(model_name=NAME, pretrained=str(CHECKPOINT)),
           "jpeg_compressibility": JpegCompressibility,
           "oracle": OracleReward}  # its share is also what reward=oracle pays for the round's logged gold metric


def overlap_case(model, reward_name: str, batches: int, batch: int, repeats: int) -> dict:
    """One reward's inline and overlapped round on `model` (the world model)."""
    reward = REWARDS[reward_name]()
    sampler = DDIMSampler(num_steps=10, guidance_scale=3.0, progress=False)  # conf/sampler/ddim.yaml
    pool = world_prompt_set().train
    prompts = [[pool[(i * batch + j) % len(pool)] for j in range(batch)] for i in range(batches)]
    negative = model.encode_prompts([""])
    reward_seconds = []

    def images(chunk: list[str], seed: int) -> torch.Tensor:
        traj = sample_prompts(model, sampler, chunk, negative, torch.Generator().manual_seed(seed))
        return model.decode(traj.final)  # scored apart: the benchmark times the reward alone

    def timed_reward(decoded: torch.Tensor, chunk: list[str]) -> torch.Tensor:
        start = time.perf_counter()
        scores = reward(decoded, chunk)
        reward_seconds.append(time.perf_counter() - start)
        return scores

    def inline() -> torch.Tensor:
        return torch.cat([timed_reward(images(chunk, i), chunk) for i, chunk in enumerate(prompts)])

    def overlapped() -> torch.Tensor:
        with ThreadPoolExecutor(max_workers=1) as workers:
            futures = [workers.submit(reward, images(chunk, i), chunk) for i, chunk in enumerate(prompts)]
            return torch.cat([future.result() for future in futures])

    if not torch.equal(inline(), overlapped()):
        raise AssertionError("overlapped scoring changed the rewards")
    reward_seconds.clear()
    t = interleaved({"inline": inline, "overlapped": overlapped}, repeats)
    reward_per_round = sum(reward_seconds) / (repeats + 1)  # inline ran once more as interleaved's warm-up
    return {"reward": reward_name, "batches": batches, "batch": batch, "inline_s": t["inline"],
            "overlapped_s": t["overlapped"], "overlapped_over_inline": t["overlapped"] / t["inline"],
            "reward_share_of_inline": reward_per_round / t["inline"], "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewards", default="clip,jpeg_compressibility,oracle")
    parser.add_argument("--batches", type=int, default=4, help="batches per round (the world's DDPO job: 4)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch (the world's DDPO job: 16)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/rewards.json")
    args = parser.parse_args(argv)
    model, cases = build_world(), []
    for name in args.rewards.split(","):
        row = overlap_case(model, name, args.batches, args.batch, args.repeats)
        cases.append(row)
        print(f"{name:22s} round of {args.batches}x{args.batch}: inline {row['inline_s']:.2f}s (rewards "
              f"{row['reward_share_of_inline']:.1%} of it), overlapped {row['overlapped_s']:.2f}s "
              f"(x{row['overlapped_over_inline']:.3f})")
    write_results(args.out, cases=cases)


if __name__ == "__main__":
    main()
