"""docs/extending.md's examples run as written, and plug into a training round through the config."""

import importlib
import json
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from alignlab.run import train
from tests.hydra_app import FAST, compose_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def test_extending_examples_run_and_plug_into_a_round(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 5  # a reward, a prompt set with a judge, a sampler, an objective, a round builder
    (tmp_path / "extending_examples.py").write_text("\n\n".join(blocks))
    monkeypatch.syspath_prepend(str(tmp_path))
    examples = importlib.import_module("extending_examples")  # runs every block's assertions
    assert examples.GentleGuidance(guidance_scale=4.0).guidance_scale == 2.0

    run_dir = tmp_path / "run"
    cfg = compose_config(run_dir, [*FAST, "trainer.max_epochs=1", "logger=csv",
                                   "reward._target_=extending_examples.Brightness"])
    with open_dict(cfg):  # what conf/prompts/colours.yaml and conf/sampler/gentle.yaml would hold
        cfg.prompts = OmegaConf.create({"_target_": "extending_examples.colour_prompts"})
        cfg.sampler._target_ = "extending_examples.GentleGuidance"
        cfg.method.objective = {"_target_": "extending_examples.Reinforce"}
    train(cfg)
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < row["reward_mean"] < 1  # brightness, not the JPEG reward's negative kilobytes
    assert row["grad_norm"] > 0 and "clipfrac" not in row  # REINFORCE trained the round, not PPO-clip
    assert 0 <= row["oracle_accuracy"] <= 1 and "oracle_score" in row  # the prompt set's judge reached the round

    builder_dir = tmp_path / "builder"
    cfg = compose_config(builder_dir, [*FAST, "trainer.max_epochs=1", "logger=csv"])
    with open_dict(cfg):  # what conf/method/best_of_group.yaml would hold
        cfg.method = OmegaConf.create({"_target_": "extending_examples.BestOfGroup", "prompts_per_round": 2,
                                       "group": 4})
    train(cfg)
    row = json.loads((builder_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert row["samples_per_round"] == 8 and row["grad_norm"] > 0 and "clipfrac" in row  # PPO-clip trained it
    sys.modules.pop("extending_examples", None)
