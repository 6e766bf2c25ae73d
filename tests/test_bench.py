"""The benchmarks' model contract: every figure in docs/benchmarks.md divides by a UNet call on the latents
`bench_model` describes, so those must be the model's own latents and text width, with LoRA attached."""

import json
import math

import pytest
import torch

from alignlab.bench import bench_model, write_results
from alignlab import bench_memory
from alignlab.bench_memory import peak_mib, peaks
from alignlab.models import build_tiny
from alignlab.world import build_world


@pytest.mark.parametrize("name, build", [("world", build_world), ("tiny", build_tiny)])
def test_bench_model_describes_the_models_own_latents(name, build):
    unet, scheduler, width, shape = bench_model(name, latent=16)
    model = build()
    assert tuple(shape) == model.latent_shape(1)[1:]
    assert width == model.text_encoder.config.hidden_size
    assert type(scheduler) is type(model.scheduler)
    assert any("lora" in n for n, p in unet.named_parameters() if p.requires_grad)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        out = unet(x, torch.tensor(500), encoder_hidden_states=torch.randn(2, 77, width)).sample
    assert out.shape == x.shape


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
