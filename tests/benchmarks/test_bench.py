"""The benchmarks' model contract: every figure in docs/benchmarks.md divides by a UNet call on the latents
`bench_model` describes, so those must be the model's own latents and text width, with LoRA attached."""

import json
import math

import pytest
import torch

from alignlab.benchmarks.speed import bench_model, case_functions, sd_shaped, write_results
from alignlab.benchmarks import memory as bench_memory
from alignlab.benchmarks.memory import peak_mib, peaks
from alignlab.models import build_tiny
from alignlab.world import build_world


@pytest.mark.parametrize("name, build", [("world", build_world), ("tiny", build_tiny)])
def test_bench_model_describes_the_models_own_latents(name, build):
    model, built = bench_model(name, latent=16), build()
    assert model.latent_shape(1) == built.latent_shape(1)
    assert model.unet.config.cross_attention_dim == built.text_encoder.config.hidden_size
    assert type(model.scheduler) is type(built.scheduler)
    assert any("lora" in n for n, p in model.unet.named_parameters() if p.requires_grad)


def test_the_sd_shaped_unets_have_sds_architecture():
    """Parameter counts of SD 1.5's and SD 2.1's UNets (859.5 M and 865.9 M) and their text widths."""
    for arch, millions, width in (("sd15", 859.5, 768), ("sd21", 865.9, 1024)):
        with torch.device("meta"):  # shapes only: no 860 M random weights drawn
            unet = sd_shaped(arch, latent=8)
        assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(millions, abs=0.1), arch
        assert unet.config.cross_attention_dim == width


def test_bench_options_reach_the_model_as_a_run_sets_them():
    model = bench_model("tiny", dtype="bfloat16", gradient_checkpointing=True)
    assert model.frozen_dtype == torch.bfloat16 and model.unet.is_gradient_checkpointing
    assert all(p.dtype == torch.float32 for p in model.unet.parameters() if p.requires_grad)  # LoRA
    fns = case_functions(model, batch=2, steps=2)
    assert set(fns) == {"calls", "rollout", "fwd_bwd", "update"}
    fns["update"]()  # under the model's autocast, as a run's update: bf16 weights, fp32 LoRA
    assert all(p.grad is None for p in model.unet.parameters())  # and it leaves no gradients behind


def test_peak_memory_is_the_calls_own_not_the_processs_peak_so_far():
    """A call that holds 64 MiB peaks at ~64 MiB even after a larger earlier call; a call that allocates
    nothing peaks at ~0; the larger of two alternations is kept, and a remote figure is taken as given."""
    big = torch.ones(96 * 2**20 // 4)  # an earlier, larger peak of the process
    del big
    mib = 2**20 // 4  # float32 elements per MiB

    def hold_64():
        block = torch.ones(64 * mib)
        return float(block[0])

    held, nothing = peak_mib(hold_64), peak_mib(lambda: None)
    assert 60 <= held <= 72, held
    assert nothing < 4, nothing
    mem = peaks({"hold": hold_64, "far": hold_64}, rounds=2, remote={"far": lambda: 5.0})
    assert 60 <= mem["hold"] <= 72 and mem["far"] == 5.0


def test_bench_results_carry_what_they_were_measured_with(tmp_path):
    write_results(str(tmp_path / "b" / "x.json"), cases=[{"ratio": 1.05}])
    written = json.loads((tmp_path / "b" / "x.json").read_text())
    assert written["cases"] == [{"ratio": 1.05}]
    assert written["torch"] == torch.__version__ and written["threads"] == torch.get_num_threads()
    assert written["date"] and written["device"]


def test_peak_memory_is_nan_where_the_kernel_cannot_reset_its_high_water_mark(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_memory, "_proc_status_kib", lambda field: (_ for _ in ()).throw(OSError(field)))
    assert math.isnan(peak_mib(lambda: calls.append(1))) and calls == [1]
    assert math.isnan(peaks({"rollout": lambda: calls.append(2)})["rollout"]) and calls == [1, 2, 2]


def test_the_asyndm_benchmark_runs_from_its_entry_point(tmp_path):
    """`make bench` runs each benchmark module's main(): the AsynDM one on the tiny model, one repeat."""
    from alignlab.benchmarks.asyndm import main

    main(["--models", "tiny", "--batch", "2", "--steps", "2", "--repeats", "1", "--out", str(tmp_path / "a.json")])
    (case,) = json.loads((tmp_path / "a.json").read_text())["cases"]
    assert (case["model"], case["batch"], case["steps"]) == ("tiny", 2, 2)
    assert all(case[key] > 0 for key in ("per_pixel_ratio", "asyndm_ratio", "update_ratio", "sync_rollout_s"))


def test_the_reward_benchmark_runs_from_its_entry_point(tmp_path):
    from alignlab.benchmarks.rewards import main

    main(["--rewards", "jpeg_compressibility,oracle", "--batches", "1", "--batch", "2", "--repeats", "1",
          "--out", str(tmp_path / "r.json")])
    cases = json.loads((tmp_path / "r.json").read_text())["cases"]
    assert [c["reward"] for c in cases] == ["jpeg_compressibility", "oracle"]


def test_the_speed_benchmark_runs_from_its_entry_point(tmp_path):
    """`make bench`'s first line at its smallest sizes: one case per (batch, steps) of the small grid, each
    figure positive and finite, and the world's method figures with B²-DiffuRL's row ratio, which is
    arithmetic: (S - s + K·s) / (K·S) for S = 4 steps, s = S / 2 branched, K = 5 branches."""
    from alignlab.benchmarks.speed import main

    main(["--models", "tiny", "--repeats", "1", "--quick", "--out", str(tmp_path / "s.json")])
    written = json.loads((tmp_path / "s.json").read_text())
    assert [(c["model"], c["batch"], c["steps"]) for c in written["cases"]] == [
        ("tiny", 1, 4), ("tiny", 2, 4)]
    for case in written["cases"]:
        assert all(math.isfinite(case[k]) and case[k] > 0 for k in ("rollout_s", "update_s", "rollout_efficiency"))
    methods = written["methods"]
    assert methods["b2_expected_row_ratio"] == pytest.approx((4 - 2 + 5 * 2) / 20)
    assert methods["dfusion_fused_over_plain"] > 0 and methods["b2_branched_over_plain"] > 0


def test_the_gpu_benchmark_runs_from_its_entry_point_on_a_cpu(tmp_path):
    """`make bench-gpu`'s SD grid at a tiny size on the CPU, bfloat16 only: two checkpointing variants × two
    compile variants, and the checkpointed ones have no rollout column (a rollout takes no gradients)."""
    from alignlab.benchmarks.sd import main

    main(["--models", "tiny", "--latent", "8", "--batch", "1", "--steps", "2", "--repeats", "1", "--device", "cpu",
          "--compile", "aot_eager", "--dtypes", "bfloat16", "--out", str(tmp_path / "g.json")])
    rows = json.loads((tmp_path / "g.json").read_text())["cases"]
    assert [(r["gradient_checkpointing"], r["compile"]) for r in rows] == [
        (False, False), (False, "aot_eager"), (True, False), (True, "aot_eager")]
    assert [r["rollout_s"] is None for r in rows] == [False, False, True, True]
    assert all(r["update_images_per_s"] > 0 and r["dtype"] == "bfloat16" for r in rows)
