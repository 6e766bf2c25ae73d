"""Golden behaviour of every method and pairing on the tiny model: two rounds from fixed seeds, their metrics rows
(without wall times) and a fingerprint of the final LoRA weights. A refactor that keeps behaviour keeps these.

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


def fingerprint(run_dir: Path) -> dict[str, float]:
    """Sum and sum of squares over the exported LoRA tensors: moves with any change of the update."""
    tensors = load_file(run_dir / "lora" / "pytorch_lora_weights.safetensors")
    return {"sum": float(sum(t.double().sum() for t in tensors.values())),
            "sum_squares": float(sum(t.double().square().sum() for t in tensors.values()))}


def behaviour(name: str, work: Path) -> dict:
    """One pairing's rows and fingerprint, on one thread: float sums depend on how threads split them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_config(work / name, [*RUN, *PAIRINGS[name]]))
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    return {"rows": comparable(rows), "lora": fingerprint(work / name)}


def main() -> None:
    names = sys.argv[1:] or list(PAIRINGS)
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            recorded[name] = behaviour(name, Path(work))
            print(f"recorded {name}")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
