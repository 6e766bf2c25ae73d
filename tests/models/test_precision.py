"""Half-precision frozen weights (model.dtype, as the *_paper presets' float16): rollouts run under the
autocast the update runs under, so a round re-scores its own samples exactly; bfloat16 shows it on a CPU."""

import json
from types import SimpleNamespace

import pytest
import torch

from alignlab.samplers.ddim import DDIMSampler
from alignlab.errors import ConfigError
from alignlab.models import build_tiny
from alignlab.run import check_precision, train
from tests.hydra_app import compose_config, run_inprocess
from tests.methods.test_b2diffurl import E2E as B2_ROUND

BF16 = ["model.dtype=bfloat16", "trainer.precision=bf16-mixed", "trainer.max_epochs=1", "logger=none"]


def test_a_bfloat16_model_samples_under_autocast_close_to_float32():
    finals = {}
    for dtype in ("float32", "bfloat16"):
        model = build_tiny(dtype=dtype)
        cond, neg = model.encode_prompts(["a cat", "a dog"]), model.encode_prompts([""])
        with model.autocast():
            traj = DDIMSampler(num_steps=3, progress=False).sample(
                model.unet, model.scheduler, cond, neg, model.latent_shape(2), torch.Generator().manual_seed(0))
        assert traj.final.dtype == torch.float32 and traj.log_probs.dtype == torch.float32
        finals[dtype] = traj.final
    error = (finals["bfloat16"] - finals["float32"]).abs().max().item()
    assert 0 < error < 0.1 * finals["float32"].abs().max().item()  # bf16 arithmetic, not float32's


def test_a_bfloat16_ddpo_round_rescores_its_asynchronous_rollouts_exactly(tmp_path):
    rows = run_inprocess(tmp_path, *BF16, "sampler=asyn", "prompts=asyn_animals", "eval.every=1",
                         "eval.max_prompts=2", "method.gradient_accumulation_steps=16")  # one step, at the round's end
    row = rows[0]
    assert row["approx_kl"] == 0.0 and row["clipfrac"] == 0.0  # first inner epoch: the sampling policy itself
    assert row["grad_norm"] > 0 and row["eval/reward_mean"] == row["eval/reward_mean"]


def test_a_bfloat16_dfusion_round_starts_at_the_reference(tmp_path):
    train(compose_config(tmp_path, [*BF16, "method=dfusion", "prompts=dfusion_t1", "model=tiny",
                                    "reward=jpeg_compressibility", "sampler.num_steps=3", "sampler.progress=false",
                                    "trainer.enable_progress_bar=false", "method.prompts_per_round=1",
                                    "method.samples_per_prompt=4", "method.num_inner_epochs=1"]))
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference under the same autocast


def test_a_bfloat16_b2diffurl_stage_trains(tmp_path):
    train(compose_config(tmp_path, [*B2_ROUND, *BF16[:3], "model=tiny", "reward=jpeg_compressibility"]))
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["grad_norm"] > 0 and row["loss"] == row["loss"]


@pytest.mark.parametrize("dtype, precision, wanted", [
    (torch.bfloat16, "32-true", "bf16-mixed"), (torch.float16, "bf16-mixed", "16-mixed"),
    (torch.float32, "16-mixed", "32-true")])
def test_model_dtype_and_trainer_precision_must_agree(dtype, precision, wanted):
    with pytest.raises(ConfigError, match=f"needs trainer.precision={wanted}, got {precision}"):
        check_precision(SimpleNamespace(frozen_dtype=dtype), precision)
    check_precision(SimpleNamespace(frozen_dtype=dtype), wanted)


def test_float16_asked_for_but_turned_into_bfloat16_by_lightning_says_so():
    """On a CPU Lightning replaces 16-mixed by bf16-mixed: "needs 16-mixed, got bf16-mixed" would blame the user's
    own, correct override."""
    with pytest.raises(ConfigError, match="model.dtype=float16 needs a GPU: Lightning runs trainer.precision=16-mixed "
                                          "as bf16-mixed"):
        check_precision(SimpleNamespace(frozen_dtype=torch.float16), "bf16-mixed", configured="16-mixed")
    with pytest.raises(ConfigError, match="needs trainer.precision=16-mixed, got bf16-mixed"):
        check_precision(SimpleNamespace(frozen_dtype=torch.float16), "bf16-mixed", configured="bf16-mixed")
