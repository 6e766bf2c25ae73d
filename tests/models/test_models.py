"""Model loading, the CLIP tokenizer, LoRA export and the frozen reference."""

import os
import time

import huggingface_hub.constants
import pytest
import torch
from diffusers import StableDiffusionPipeline

from alignlab.samplers.ddim import DDIMSampler
from alignlab.errors import ConfigError, WeightsNotFoundError
from alignlab.models import add_lora, build_tiny, frozen_reference, load_pretrained, save_lora
from alignlab.models.tokenizer import clip_tokenizer


def test_tokenizer_matches_open_clip_ids():
    import open_clip

    prompts = ["a woolen teddy bear riding a bike, 1960s style!", "two green triangles", "A Cat"]
    ours = clip_tokenizer()(prompts, padding="max_length", max_length=77).input_ids
    theirs = open_clip.get_tokenizer("ViT-B-32")(prompts)
    for row, ref in zip(ours, theirs, strict=False):
        length = int((ref != 0).sum())
        assert row[:length] == ref[:length].tolist()
    assert ours[0][0] == 49406 and ours[0][-1] == 49407  # SD pads with <|endoftext|>
    assert len(clip_tokenizer()) == 49408


def _perturb_lora(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def test_saved_lora_reproduces_samples_in_a_diffusers_pipeline(tmp_path):
    model = build_tiny()
    add_lora(model, rank=4, alpha=8)  # alpha != rank: the scale must survive the export
    _perturb_lora(model)
    prompts = ["a red circle", "two blue squares"]
    sampler = DDIMSampler(num_steps=5, guidance_scale=5.0, progress=False)
    traj = sampler.sample(model.unet, model.scheduler, model.encode_prompts(prompts), model.encode_prompts([""]),
                          model.latent_shape(2), torch.Generator().manual_seed(3))
    ours = model.decode(traj.final)
    umask = os.umask(0o022)
    try:
        save_lora(model, tmp_path)
    finally:
        os.umask(umask)
    assert (tmp_path / "pytorch_lora_weights.safetensors").stat().st_mode & 0o777 == 0o644  # like every other file

    base = build_tiny()
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=base.unet, scheduler=base.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path))
    theirs = pipe(prompts, num_inference_steps=5, guidance_scale=5.0, eta=1.0, height=32, width=32,
                  generator=torch.Generator().manual_seed(3), output_type="pt").images
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    without = build_tiny()
    plain = DDIMSampler(num_steps=5, progress=False).sample(
        without.unet, without.scheduler, without.encode_prompts(prompts), without.encode_prompts([""]),
        without.latent_shape(2), torch.Generator().manual_seed(3))
    assert (without.decode(plain.final) - ours).abs().max() > 1e-3  # the adapter does change the image


def test_frozen_reference_is_the_base_unet(embeds):
    _, cond, _ = embeds
    base, tuned = build_tiny(), build_tiny()
    add_lora(tuned)
    _perturb_lora(tuned)
    x = torch.randn(4, 4, 16, 16)
    with torch.no_grad():
        expected = base.unet(x, 500, encoder_hidden_states=cond).sample
        adapted = tuned.unet(x, 500, encoder_hidden_states=cond).sample
        with frozen_reference(tuned):
            reference = tuned.unet(x, 500, encoder_hidden_states=cond).sample
        restored = tuned.unet(x, 500, encoder_hidden_states=cond).sample
    assert torch.equal(reference, expected)
    assert torch.equal(restored, adapted) and not torch.equal(adapted, expected)


def test_lora_trains_only_adapters():
    model = build_tiny()
    add_lora(model, rank=4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"to_q", "to_k", "to_v", "0"}  # to_out.0
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)


def test_load_pretrained_from_a_local_directory(tmp_path):
    tiny = build_tiny(seed=3)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(tiny, part).save_pretrained(tmp_path / part)
    loaded = load_pretrained(str(tmp_path), resolution=32)
    for part in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(loaded, part).state_dict(), getattr(tiny, part).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randn(1, 4, 16, 16)
    ids = ["a cat on a mat"]
    with torch.no_grad():
        assert torch.equal(loaded.encode_prompts(ids), tiny.encode_prompts(ids))
        emb = tiny.encode_prompts(ids)
        torch.testing.assert_close(loaded.unet(x, 10, encoder_hidden_states=emb).sample,
                                   tiny.unet(x, 10, encoder_hidden_states=emb).sample, rtol=0, atol=1e-5)
        assert torch.equal(loaded.decode(x), tiny.decode(x))


def test_missing_weights_give_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    for where in (str(tmp_path / "nowhere"), "CompVis/stable-diffusion-v1-4"):
        with pytest.raises(WeightsNotFoundError) as info:
            load_pretrained(where)
        message = str(info.value)
        assert "model.pretrained=" in message and where in message and "\n" not in message
    assert time.perf_counter() - start < 30
    with pytest.raises(ConfigError, match="model.dtype"):
        load_pretrained(str(tmp_path), dtype="float8")


def test_prompts_longer_than_the_text_encoder_reads_are_named_in_a_warning(caplog):
    from alignlab.methods.base import warn_if_cut

    long = "a red circle " + "and a blue square " * 40
    with caplog.at_level("WARNING", logger="alignlab"):
        assert warn_if_cut(clip_tokenizer(), ["a red circle", long, long]) == [long]
    assert "1 prompt(s) are longer than the text encoder's 77 tokens" in caplog.text
