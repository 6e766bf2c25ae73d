"""The miniature study (issue 10): the three papers' claims on the shapes world at fixed sample budgets, over
seeds (mean ± std), the world's oracle (gold) next to the world CLIP (proxy) everywhere.

    python experiments/study.py <asyndm|b2diffurl|dfusion|combos|objectives|all> ... [--seeds 0 1 2]
                                [--rounds 20] [--smoke] [--out DIR]

An arm is a list of Hydra overrides for `python -m alignlab.run`, run once per seed in
<out>/runs/<arm>/seed<N> (experiments that share an arm share its runs). RL arms train for 20 rounds of 64
images with held-out evaluation every 2 rounds (the curves); then alignlab.evaluate scores the final and the
pre-trained weights on the train and test prompts (world-CLIP, oracle, diversity). AsynDM arms are
method=asyndm evaluations: DM, DM_concave and AsynDM from the same noise. Each experiment writes
<out>/<experiment>/results.md, results.json and a PNG. A re-run skips finished runs and evaluations (an
interrupted run resumes from its checkpoint). --rounds: another number of RL rounds (--rounds 1 --seeds 0 times
a round of every arm). --smoke: tiny budgets, one seed, out study-smoke/.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from study_runs import Arm, evaluate, merge_overrides, run_asyndm, run_rl, wall_time
from study_tables import asyndm_numbers, curve, eval_numbers, images_to_gain, write_asyndm, write_rl

from alignlab.training.artifacts import read_metrics

COMMON = ["logger=none", "sampler.progress=false", "trainer.enable_progress_bar=false"]
ROUNDS = 20  # x 64 images: the world's default job (docs/world.md)
RL_BUDGET = ["eval.every=2", "eval.split=test", "eval.max_prompts=8", "eval.samples_per_prompt=4",
             "eval.batch_size=32"]  # and trainer.max_epochs: the rounds
FINAL_EVAL = {"samples_per_prompt": 32, "max_prompts": 8, "batch_size": 32}  # every prompt of each split
# the 8 test prompts of prompts=world (the RL experiments' held-out prompts) x 8 images, in one batch
ASYNDM_BUDGET = ["method=asyndm", "method.split=test", "method.images_per_prompt=8", "method.batch_size=64"]
# DPO-family rounds of 64 images (16 prompts x 4) with few large-batch steps, as DDPO's world job
DPO_64 = ["method.prompts_per_round=16", "method.samples_per_prompt=4", "method.train_batch_size=8",
          "method.gradient_accumulation_steps=4"]  # 32 pairs: one optimizer step per inner epoch

SMOKE = {  # per method: a round of a handful of images; --smoke adds them to every arm's overrides
    "all": ["trainer.max_epochs=1", "eval.every=1", "eval.max_prompts=2", "eval.samples_per_prompt=2",
            "sampler.num_steps=4", "prompts.per_category=1"],
    "ddpo": ["method.sample_batch_size=4", "method.num_batches_per_round=1", "method.train_batch_size=4",
             "method.gradient_accumulation_steps=1", "method.images_per_prompt=2"],
    "b2diffurl": ["method.sample_batch_size=2", "method.num_batches_per_round=1", "method.num_branches=2",
                  "method.split_step_min=2", "method.split_step_max=4", "method.num_stages=2",
                  "method.train_batch_size=4", "method.gradient_accumulation_steps=1", "method.num_inner_epochs=1"],
    "dpo": ["method.prompts_per_round=1", "method.samples_per_prompt=4", "method.train_batch_size=2",
            "method.gradient_accumulation_steps=1", "method.num_inner_epochs=1"],
    "dfusion": ["method.prompts_per_round=1", "method.samples_per_prompt=4", "method.train_batch_size=2",
                "method.gradient_accumulation_steps=1", "method.num_inner_epochs=1"],
    "asyndm": ["method.images_per_prompt=2", "method.batch_size=4"],
}
SMOKE_EVAL = {"samples_per_prompt": 2, "max_prompts": 2, "batch_size": 8}
SMOKE_NOTE = ("**Smoke run (--smoke): one round of a handful of images, 4 sampling steps, 2 prompts x 2 images per "
              "evaluation. It checks the harness; its numbers mean nothing.** The real budget:")

# D-Fusion fused steps 2-9 of the world's 10 when docs/results.md was measured; the default is now the official
# rule (the last 18 steps: all 10), so the arms keep what they measured
FUSED_AS_MEASURED = "method.fuse_steps_left=[0,8]"
ARMS = {arm.name: arm for arm in [
    Arm("ddpo", "DDPO", ("method=ddpo",)),
    Arm("b2diffurl", "B²-DiffuRL + DDPO", ("method=b2diffurl",)),
    Arm("dpo", "DPO (trajectory)", ("method=dpo", "method.loss=trajectory", *DPO_64)),
    Arm("dfusion_dpo", "D-Fusion + DPO (trajectory)", ("method=dfusion", "method.loss=trajectory", FUSED_AS_MEASURED,
                                                      *DPO_64)),
    Arm("diffusion_dpo", "Diffusion-DPO", ("method=dpo", "method.loss=diffusion_dpo", *DPO_64)),
    Arm("dfusion_diffusion_dpo", "D-Fusion + Diffusion-DPO", ("method=dfusion", "method.loss=diffusion_dpo",
                                                              FUSED_AS_MEASURED, *DPO_64)),
    # 44 samples + 22 fused targets = 66 images per round (DDPO: 64); 9 micro-batches of <= 8 = one step per round
    Arm("dfusion_ddpo", "D-Fusion + DDPO", ("method=dfusion", "method.algo=ddpo", FUSED_AS_MEASURED,
                                            "method.prompts_per_round=11",
                                            "method.samples_per_prompt=4", "method.train_batch_size=8",
                                            "method.gradient_accumulation_steps=9", "method.num_inner_epochs=1")),
    Arm("b2diffurl_asyn", "B²-DiffuRL + DDPO, sampler=asyn", ("method=b2diffurl", "sampler=asyn")),
    Arm("b2diffurl_dpo", "B²-DiffuRL + DPO pairs", ("method=b2diffurl", "method.algo=dpo")),
    # the objectives that followed DDPO (docs/objectives.md), on plain rollouts (the round's 4 train prompts x 16
    # images are the groups) and on B²-DiffuRL's branch families
    Arm("ddpo_grpo", "DDPO rollouts + GRPO", ("method=ddpo", "method/objective=grpo", "method.images_per_prompt=16")),
    Arm("ddpo_dpok", "DDPO rollouts + DPOK", ("method=ddpo", "method/objective=dpok")),
    # DiffusionNFT at its paper's learning rate: at the methods' 3e-3 it raises the train prompts' accuracy for a
    # few rounds, then drifts off (DDPO rollouts, seed 0: final train strict accuracy 0.195 -> 0.023)
    Arm("ddpo_nft", "DDPO rollouts + DiffusionNFT", ("method=ddpo", "method/objective=nft",
                                                    "method.images_per_prompt=16", "optimizer.lr=3e-4")),
    Arm("b2diffurl_grpo", "B²-DiffuRL families + GRPO", ("method=b2diffurl", "method/objective=grpo")),
    Arm("b2diffurl_nft", "B²-DiffuRL families + DiffusionNFT", ("method=b2diffurl", "method/objective=nft",
                                                                "optimizer.lr=3e-4")),
    Arm("asyndm", "AsynDM: bin, dynamic, k = 0.5", tuple(ASYNDM_BUDGET)),  # the grammar's k of these prompts
    Arm("asyndm_static", "AsynDM: static masks", (*ASYNDM_BUDGET, "sampler.mask_mode=static")),
    Arm("asyndm_lin", "AsynDM: lin curve", (*ASYNDM_BUDGET, "sampler.curve=lin")),
    Arm("asyndm_exp", "AsynDM: exp curve", (*ASYNDM_BUDGET, "sampler.curve=exp")),
    *[Arm(f"asyndm_k{k}", f"AsynDM: k = {k}", (*ASYNDM_BUDGET, f"prompts.k={k}")) for k in (0.3, 0.7)],
]}


@dataclass(frozen=True)
class Experiment:
    title: str
    arms: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def evaluation_only(self) -> bool:
        return all(ARMS[name].method == "asyndm" for name in self.arms)


RL_NOTE = ("Budget: 20 rounds of 64 policy images per arm (the world's default job), world-CLIP reward, "
           "prompts=world (4 train, 4 test prompts at its default per_category 2; 8 and 8 when docs/results.md's "
           "experiments 2-4 were measured); held-out curve every 2 rounds (up to 8 test prompts x 4 images, fixed "
           "noise); final evaluation of the last and the pre-trained weights: up to 8 prompts x 32 images per "
           "split (x 8 when docs/results.md's experiments 2-4 were measured). "
           "Diversity: mean pairwise cosine distance of a prompt's world-CLIP image embeddings.")
EXPERIMENTS = {
    "asyndm": Experiment("AsynDM: DM vs DM_concave vs AsynDM (training-free)",
                         ("asyndm", "asyndm_static", "asyndm_lin", "asyndm_exp", "asyndm_k0.3", "asyndm_k0.7"),
                         ("Budget: the 8 test prompts of prompts=world (4 colour_attr, 4 position: held-out colour-"
                          "shape bindings; the RL experiments' held-out prompts), 8 images each, the three variants "
                          "from the same noise per image; DDIM 10 steps, CFG 3; world-CLIP reward, oracle per image. "
                          "The first arm's k, 0.5, is the grammar's for these categories.",)),
    "b2diffurl": Experiment("B²-DiffuRL: DDPO vs B²-DiffuRL + DDPO at equal images sampled", ("ddpo", "b2diffurl"),
                            (RL_NOTE,)),
    "dfusion": Experiment("D-Fusion: DPO, Diffusion-DPO and DDPO, each without and with D-Fusion pairs",
                          ("dpo", "dfusion_dpo", "diffusion_dpo", "dfusion_diffusion_dpo", "ddpo", "dfusion_ddpo"),
                          (RL_NOTE, "D-Fusion arms also generate a fused target for each of a prompt's 2 "
                           "lower-ranked samples (of 4). D-Fusion + DDPO trains on them as rollout samples, so it "
                           "counts them and samples 11 prompts x 4 + 22 targets = 66 images per round (DDPO 64); "
                           "D-Fusion + DPO uses them as its pairs' winners and does not count them.")),
    "combos": Experiment("Combinations none of the papers tried", ("b2diffurl", "b2diffurl_asyn", "b2diffurl_dpo"),
                         (RL_NOTE,)),
    "objectives": Experiment("Objectives after DDPO: GRPO, DPOK and DiffusionNFT on plain rollouts and branch families",
                             ("ddpo", "ddpo_grpo", "ddpo_dpok", "ddpo_nft", "b2diffurl", "b2diffurl_grpo",
                              "b2diffurl_nft"), (RL_NOTE,)),
}


def overrides(arm: Arm, seed: int, smoke: bool, rounds: int = ROUNDS) -> list[str]:
    budget = [] if arm.method == "asyndm" else [*RL_BUDGET, f"trainer.max_epochs={rounds}"]
    tiny = [*SMOKE["all"], *SMOKE[arm.method]] if smoke else []
    return merge_overrides(COMMON, budget, arm.overrides, tiny, [f"seed={seed}"])


def run_experiment(name: str, seeds: list[int], smoke: bool, out: Path, command: str, rounds: int = ROUNDS) -> dict:
    """Every arm x seed (seeds outermost, so a partial study has every arm), then the experiment's files."""
    experiment = EXPERIMENTS[name]
    runs = {arm: {seed: out / "runs" / arm / f"seed{seed}" for seed in seeds} for arm in experiment.arms}
    jobs = [(arm, seed) for seed in seeds for arm in experiment.arms]
    evaluation = SMOKE_EVAL if smoke else FINAL_EVAL
    results = {arm: {"label": ARMS[arm].label, "overrides": list(ARMS[arm].overrides), "runs": {}}
               for arm in experiment.arms}
    for i, (arm, seed) in enumerate(jobs, 1):
        tag = f"[{name} {i}/{len(jobs)}] {arm} seed {seed}"
        print(tag, flush=True)
        config, run_dir = overrides(ARMS[arm], seed, smoke, rounds), runs[arm][seed]
        if experiment.evaluation_only:
            results[arm]["runs"][seed] = asyndm_numbers(run_asyndm(run_dir, config, tag))
        else:
            run_rl(run_dir, config, next(int(o.split("=")[1]) for o in config if o.startswith("trainer.max_epochs=")),
                   tag)
            results[arm]["runs"][seed] = rl_numbers(run_dir, evaluation)
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    notes = [SMOKE_NOTE, *experiment.notes] if smoke else list(experiment.notes)
    if rounds != ROUNDS and not experiment.evaluation_only:
        notes.insert(0, f"**--rounds {rounds}: {rounds} rounds per RL arm instead of {ROUNDS}.**")
    if experiment.evaluation_only:
        return write_asyndm(target, experiment.title, command, notes, results, experiment.arms[0], wall_times(runs))
    baselines = {arm: f"pretrained_{ARMS[arm].sampler}" for arm in experiment.arms}  # each arm's pre-trained row
    base = {}  # the pre-trained weights under each sampler the arms use, evaluated in that sampler's first arm
    for arm, row in baselines.items():
        if row not in base:
            sampler = ARMS[arm].sampler
            base[row] = {"label": f"pre-trained (sampler={sampler})", "overrides": [f"sampler={sampler}"],
                         "runs": {seed: rl_numbers(runs[arm][seed], evaluation, base=True) for seed in seeds}}
    for arm, row in results.items():
        for seed, numbers in row["runs"].items():
            before = base[baselines[arm]]["runs"][seed]
            numbers["to_gain"] = images_to_gain(read_metrics(runs[arm][seed] / "metrics.jsonl"),
                                                before["train"]["oracle_accuracy"], before["test"]["oracle_accuracy"])
    return write_rl(target, experiment.title, command, notes, {**base, **results}, wall_times(runs), baselines)


def rl_numbers(run_dir: Path, evaluation: dict, base: bool = False) -> dict:
    """A run's images sampled and held-out curve (from metrics.jsonl) and its final weights' (`base`: the
    pre-trained weights') evaluation on each split."""
    numbers = {split: eval_numbers(evaluate(run_dir, split, base, evaluation)) for split in ("train", "test")}
    if base:
        return {"dir": str(run_dir), "images": 0.0, **numbers}
    metrics = read_metrics(run_dir / "metrics.jsonl")
    return {"dir": str(run_dir), "images": sum(r.get("samples_per_round", 0.0) for r in metrics),
            "curve": curve(metrics), **numbers}


def wall_times(runs: dict[str, dict[int, Path]]) -> dict[str, dict[str, float]]:
    """Per arm: seconds its runs and their evaluations took, summed over seeds (as recorded when they ran)."""
    return {arm: {key: sum(wall_time(d).get(key, 0.0) for d in dirs.values()) for key in ("run_s", "eval_s")}
            for arm, dirs in runs.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--smoke: 0)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"RL rounds of 64 images (default {ROUNDS})")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: checks that every arm runs")
    parser.add_argument("--out", type=Path, default=None, help="default study/ (--smoke: study-smoke/)")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    out = args.out or Path("study-smoke" if args.smoke else "study")
    command = "python experiments/study.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    start = time.monotonic()
    for name in EXPERIMENTS if "all" in args.experiments else dict.fromkeys(args.experiments):
        run_experiment(name, seeds, args.smoke, out, command, args.rounds)
        print(f"{name}: {out / name / 'results.md'}", flush=True)
    print(f"study: {time.monotonic() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
