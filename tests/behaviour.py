"""Golden behaviour of every method and pairing on the tiny model: two rounds from fixed seeds, their metrics rows
(without wall times) and a fingerprint of the final LoRA weights; AsynDM's comparison table; one fused target of
D-Fusion. A refactor that keeps behaviour keeps these.

    python -m tests.behaviour      # re-record tests/golden/behaviour.json (only when a change is meant to move them)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from alignlab.run import train
from tests.hydra_app import FAST, comparable, compose_config

GOLDEN = Path(__file__).parent / "golden" / "behaviour.json"
RUN = [*(o for o in FAST if not o.startswith("method.")), "trainer.max_epochs=2", "logger=none"]
PROMPTS = ["prompts.per_category=4"]  # the world prompts as recorded, whatever the world's default becomes
DDPO_SIZES = [o for o in FAST if o.startswith("method.")]
DPO_SIZES = ["method.train_batch_size=2", "method.prompts_per_round=1", "method.samples_per_prompt=4",
             "method.num_inner_epochs=1"]
B2_SIZES = ["method.sample_batch_size=2", "method.num_branches=3", "method.split_step_min=1", "method.split_step_max=3",
            "method.num_stages=2", "method.log_images=6", "method.gradient_accumulation_steps=2"]
# pairing -> overrides: every round builder with every objective today's code pairs it with
PAIRINGS = {
    "ddpo": ["method=ddpo", *DDPO_SIZES],
    "ddpo_asyn": ["method=ddpo", *DDPO_SIZES, "sampler=asyn", "prompts=asyn_animals"],
    "b2diffurl": ["method=b2diffurl", "method.train_batch_size=2", *B2_SIZES],
    "b2diffurl_dpo": ["method=b2diffurl", "method.algo=dpo", "method.train_batch_size=2", *B2_SIZES],
    "dpo_trajectory": ["method=dpo", *DPO_SIZES],
    "dpo_diffusion": ["method=dpo", "method.loss=diffusion_dpo", *DPO_SIZES],
    "dfusion": ["method=dfusion", *DPO_SIZES],
    "dfusion_ddpo": ["method=dfusion", "method.algo=ddpo", *DPO_SIZES],
}


ASYNDM = ["method=asyndm", "prompts=asyn_animals", "model=tiny", "reward=jpeg_compressibility", "logger=none",
          "sampler.num_steps=4", "sampler.progress=false", "trainer.enable_progress_bar=false",
          "method.num_prompts=3", "method.images_per_prompt=2", "method.batch_size=4", "method.mask_steps=2"]
OUTPUTS = ("asyndm_table", "fused_target")  # besides the pairings' runs


def sums(tensors) -> dict[str, float]:
    """Sum and sum of squares: moves with any change of the tensors."""
    return {"sum": float(sum(t.double().sum() for t in tensors)),
            "sum_squares": float(sum(t.double().square().sum() for t in tensors))}


def fingerprint(run_dir: Path) -> dict[str, float]:
    """Of the exported LoRA tensors: moves with any change of the update."""
    return sums(load_file(run_dir / "lora" / "pytorch_lora_weights.safetensors").values())


def asyndm_table(work: Path) -> dict:
    """method=asyndm's comparison of the three sampling variants (table.json without wall times)."""
    train(compose_config(work / "asyndm", ASYNDM))
    table = json.loads((work / "asyndm" / "asyndm" / "table.json").read_text())
    return {k: v for k, v in table.items() if not k.startswith("time")}


def fused_target(work: Path) -> dict:
    """D-Fusion's target for one reference / base pair of the tiny model: its final latents and its mask."""
    from alignlab.core.attention import capture_layers
    from alignlab.core.fusion import KVFusion, fused_targets, self_attention_layers
    from alignlab.core.token_spans import Item, ItemBatch
    from alignlab.models import build_tiny
    from alignlab.samplers.ddim import DDIMSampler

    torch.manual_seed(0)
    model, sampler = build_tiny(), DDIMSampler(num_steps=5, progress=False)
    prompts, negative = ["a red circle", "a red circle"], model.encode_prompts([""])
    seeds = [torch.Generator().manual_seed(100 + i) for i in range(2)]
    traj = sampler.sample(model.unet, model.scheduler, model.encode_prompts(prompts), negative,
                          model.latent_shape(2), seeds)
    items = ItemBatch.build(model.tokenizer, prompts[:1], [[Item("circle", threshold=0.015)]])
    capture, size = capture_layers(model.unet, model.latent_shape(1)[-2:])
    target, masks = fused_targets(sampler, model.unet, model.scheduler, traj.index(torch.tensor([0])),
                                  traj.index(torch.tensor([1])), negative, [torch.Generator().manual_seed(101)],
                                  items, (1, 5), KVFusion(self_attention_layers(model.unet)), capture, size)
    return {"final": sums([target.final]), "log_probs": target.log_probs.tolist(),
            "mask_fraction": masks.float().mean().item()}


def behaviour(name: str, work: Path) -> dict:
    """One pairing's rows and fingerprint (or one of OUTPUTS), on one thread: float sums depend on how threads
    split them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if name in OUTPUTS:
            return {"asyndm_table": asyndm_table, "fused_target": fused_target}[name](work)
        own_prompts = any(o.startswith("prompts=") for o in PAIRINGS[name])
        train(compose_config(work / name, [*RUN, *([] if own_prompts else PROMPTS), *PAIRINGS[name]]))
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    return {"rows": comparable(rows), "lora": fingerprint(work / name)}


def main() -> None:
    names = sys.argv[1:] or [*PAIRINGS, *OUTPUTS]
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            recorded[name] = behaviour(name, Path(work))
            print(f"recorded {name}")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
