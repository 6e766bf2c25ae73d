"""The CPU-torch / CUDA-torchvision import repair (alignlab/_torchvision_compat.py)."""

import subprocess
import sys

import torch


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_open_clip_imports_after_alignlab():
    result = run("import alignlab, open_clip, torchvision.transforms as T; print(T.Resize.__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Resize"


def test_diffusers_pipeline_imports_after_alignlab():
    # StableDiffusionPipeline imports CLIPImageProcessor, which imports torchvision.
    result = run("import alignlab; from diffusers import StableDiffusionPipeline; print('ok')")
    assert result.returncode == 0, result.stderr


def test_repair_is_idempotent_and_ops_fail_clearly():
    from alignlab._torchvision_compat import ensure_torchvision_importable

    assert ensure_torchvision_importable() is False  # already imported: nothing to do
    import torchvision

    if torchvision.extension._has_ops():
        return  # a machine where torchvision's C ops load: the repair never applied
    try:
        torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    except RuntimeError as error:
        assert "C++ ops" in str(error)
    else:
        raise AssertionError("nms without the C extension should raise torchvision's own error")
