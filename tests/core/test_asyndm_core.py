"""AsynDM's numerics: schedules, token spans, masks, attention capture, per-pixel UNet, asynchronous sampler."""

import itertools

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from alignlab.samplers.asyn import AsynSampler
from alignlab.core.attention import AttentionStore, CaptureProcessor, attention_processors, capture_layers
from alignlab.core.masks import absolute_masks, item_attention, largest_k, relative_masks, upsample_nearest
from alignlab.core.per_pixel_unet import PerPixelUNet
from alignlab.core.timestep_schedules import CURVES, Grid, bin_curve, check_decreasing, linear, next_state
from alignlab.core.token_spans import Item, ItemBatch, token_span
from alignlab.errors import ConfigError
from alignlab.models import build_tiny
from alignlab.prompts import PromptSet

GRID = Grid(1000, 50, 1)


def rounded_run(update, grid=GRID) -> list[int]:
    """The rounded states s_0 .. s_N of one pixel from T + τ."""
    s = update(torch.tensor([grid.start]), grid.num_steps)
    states = [s]
    for i in range(grid.num_steps):
        s = update(s, grid.num_steps - i - 1)
        states.append(s)
    return [round(x.item()) for x in states]


# -- schedules ----------------------------------------------------------------------------------
@pytest.mark.parametrize("k,expected", [
    (None, ([981, 961, 941], 481, [41, 21, 1, 0])),
    (0.3, ([987, 973, 958], 556, [53, 27, 1, 0])),
    (0.5, ([991, 980, 969], 606, [60, 31, 1, 0])),
    (0.7, ([995, 988, 980], 656, [68, 35, 1, 0])),
])
def test_spec_reference_trajectories(k, expected):
    run = rounded_run(lambda s, r: linear(s, r, GRID) if k is None else bin_curve(s, r, k, GRID))
    assert (run[:3], run[25], run[-4:]) == expected


@pytest.mark.parametrize("curve", sorted(CURVES))
@pytest.mark.parametrize("k", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("steps", [10, 50])
def test_curves_decrease_to_zero_within_range(curve, k, steps):
    grid = Grid(1000, steps, 1)
    run = rounded_run(lambda s, r: CURVES[curve](s, r, k, grid), grid)
    assert run[-1] == 0 and run[-2] == 1 and max(run) <= 999
    assert all(a > b for a, b in itertools.pairwise(run))
    linear_run = rounded_run(lambda s, r: linear(s, r, grid), grid)
    assert all(c >= lin for c, lin in zip(run, linear_run, strict=False))  # concave: never ahead of the background


def test_large_k_is_clamped_below_T():
    run = rounded_run(lambda s, r: bin_curve(s, r, 0.99, GRID))  # unclamped, the first state is 1000.4
    assert run[:2] == [999, 998] and run[-1] == 0


def test_mask_switches_keep_every_pixel_strictly_decreasing():
    gen = torch.Generator().manual_seed(0)
    choices = torch.tensor([0.0, 0.3, 0.5, 0.7])
    for curve in CURVES:
        k_map = choices[torch.randint(4, (64, 64), generator=gen)]
        s = next_state(torch.full((64, 64), GRID.start), GRID.num_steps, k_map, curve, GRID)
        for i in range(GRID.num_steps):
            k_map = choices[torch.randint(4, (64, 64), generator=gen)]  # every pixel may switch every step
            s_next = next_state(s, GRID.num_steps - i - 1, k_map, curve, GRID)
            check_decreasing(s.round().long(), s_next.round().long(), i)
            s = s_next
        assert bool((s == 0).all())


def test_mixing_follows_each_pixels_own_curve():
    s = torch.full((1, 2, 2), 700.0)
    k_map = torch.tensor([[[0.0, 0.3], [0.7, 0.3]]])
    out = next_state(s, 20, k_map, "bin", GRID)
    assert out[0, 0, 0] == linear(s, 20, GRID)[0, 0, 0]
    assert out[0, 0, 1] == out[0, 1, 1] == bin_curve(s, 20, 0.3, GRID)[0, 0, 1]
    assert out[0, 1, 0] == bin_curve(s, 20, 0.7, GRID)[0, 1, 0]


def test_a_timestep_that_would_not_decrease_is_a_clear_error(tiny_model):
    s = torch.full((1, 4, 4), 5.0)  # nearly clean, yet 40 steps left on a steep concave curve
    s_next = next_state(s, 40, torch.full((1, 4, 4), 0.9), "bin", GRID)
    with pytest.raises(ConfigError, match="strictly decrease.*step 7.*16 pixels go from 5 to 19"):
        check_decreasing(s.round().long(), s_next.round().long(), 7)
    # lin with k = 0.99 moves 0.2 timesteps per step from the clamp at 999: caught before any UNet call
    model = tiny_model
    items = ItemBatch.build(model.tokenizer, ["a cat"], [[Item("cat", 0.99)]])
    sampler = AsynSampler(num_steps=50, curve="lin", progress=False)
    with pytest.raises(ConfigError, match="at step 0 256 pixels go from 999 to 999"):
        sampler.sample(model.unet, model.scheduler, model.encode_prompts(["a cat"]), model.encode_prompts([""]),
                       model.latent_shape(1), torch.Generator().manual_seed(0), items, "dm_concave")


@pytest.mark.parametrize("k", [0.0, 1.0, -0.2, 1.5])
def test_k_outside_the_unit_interval_is_rejected(k):
    for curve in CURVES.values():
        with pytest.raises(ConfigError, match=r"k must be in \(0, 1\)"):
            curve(torch.tensor([500.0]), 10, k, GRID)
    with pytest.raises(ConfigError, match="item 'cat' of 'a cat'.*must be in"):
        PromptSet([{"prompt": "a cat", "items": ["cat"], "k": k}])


# -- prompts, token spans, masks ----------------------------------------------------------------
@pytest.mark.parametrize("word,tokens", [
    ("woolen", ["woo", "len</w>"]),
    ("1960s", ["1</w>", "9</w>", "6</w>", "0</w>", "s</w>"]),
    ("giraffes", ["gira", "ffes</w>"]),
    ("teddy bear", ["teddy</w>", "bear</w>"]),
    ("Bike", ["bike</w>"]),
])
def test_token_spans_of_multi_token_words(tiny_model, word, tokens):
    tokenizer = tiny_model.tokenizer
    prompt = "two giraffes and a woolen teddy bear riding a bike, 1960s style"
    ids = tokenizer(prompt).input_ids
    span = token_span(tokenizer, prompt, word)
    assert tokenizer.convert_ids_to_tokens(ids[span.start : span.stop]) == tokens


def test_item_words_must_occur_as_words(tiny_model):
    with pytest.raises(ConfigError, match="item 'cat' does not occur as a word in the prompt 'two cats'"):
        token_span(tiny_model.tokenizer, "two cats", "cat")
    with pytest.raises(ConfigError, match="prompt set 'pets': item 'dog' does not occur .* 'a cat'"):
        PromptSet([{"prompt": "a cat", "items": ["dog"]}], name="pets")
    with pytest.raises(ConfigError, match="unknown key"):
        PromptSet([{"prompt": "a cat", "item": ["cat"]}])


def test_prompt_items_and_item_batch(tiny_model):
    prompts = PromptSet(["a plain prompt", {"prompt": "a woolen hat on a cat", "k": 0.5,
                                            "items": ["cat", {"word": "woolen", "k": 0.3, "threshold": 0.02}]}])
    assert prompts.train == ["a plain prompt", "a woolen hat on a cat"]
    assert prompts.items_for("a plain prompt") == []
    assert prompts.items_for("a woolen hat on a cat") == [Item("cat", 0.5), Item("woolen", 0.3, 0.02)]
    batch = ItemBatch.build(tiny_model.tokenizer, prompts.train, [prompts.items_for(p) for p in prompts.train])
    assert batch.weights.shape == (2, 2, 77) and batch.valid.tolist() == [[False, False], [True, True]]
    assert batch.weights[1, 1, 2:4].tolist() == [0.5, 0.5] and batch.weights[1, 1].sum() == 1  # woo·len
    assert batch.weights[1, 0, 7] == 1  # a woo len hat on a cat: "cat" is token 7
    assert batch.last.tolist() == [-1, 0]  # "cat" comes last in the prompt, though listed first
    assert batch.k[1].tolist() == pytest.approx([0.5, 0.3]) and batch.threshold[1, 0].isnan()


def test_relative_absolute_and_overlap_rules_on_hand_made_maps():
    probs = torch.zeros(1, 4, 5)  # 2x2 pixels, 5 tokens; item 0 = tokens 1-2 (mean), item 1 = token 3
    probs[0, :, 1] = torch.tensor([0.4, 0.0, 0.2, 0.2])
    probs[0, :, 2] = torch.tensor([0.0, 0.0, 0.2, 0.0])
    probs[0, :, 3] = torch.tensor([0.0, 0.3, 0.3, 0.1])
    weights = torch.tensor([[[0, 0.5, 0.5, 0, 0], [0, 0, 0, 1.0, 0]]])
    maps = item_attention(probs, weights, (2, 2))
    assert maps[0, 0].flatten().tolist() == pytest.approx([0.2, 0.0, 0.2, 0.1])  # mean over the span
    valid = torch.tensor([[True, True]])
    masks = relative_masks(maps, valid, threshold=1.0)  # >= mean: 0.125 for item 0, 0.175 for item 1
    assert masks[0, 0].flatten().tolist() == [True, False, True, False]
    assert masks[0, 1].flatten().tolist() == [False, True, True, False]
    assert relative_masks(maps, valid, threshold=1.7)[0, 0].flatten().tolist() == [False] * 4
    absolute = absolute_masks(maps, valid, torch.tensor([[0.15, 0.05]]))
    assert absolute[0, 1].flatten().tolist() == [False, True, True, True]
    k_map = largest_k(masks, torch.tensor([[0.3, 0.7]]))
    assert k_map[0].flatten().tolist() == pytest.approx([0.3, 0.7, 0.7, 0.0])  # overlap -> larger k
    assert largest_k(masks, torch.tensor([[0.7, 0.3]]))[0, 1, 0].item() == pytest.approx(0.7)
    assert not relative_masks(maps, torch.tensor([[True, False]]), 1.0)[0, 1].any()  # padding
    up = upsample_nearest(k_map, (4, 4))
    expected = torch.tensor([[0.3, 0.3, 0.7, 0.7]] * 2 + [[0.7, 0.7, 0.0, 0.0]] * 2)
    torch.testing.assert_close(up[0], expected)


# -- attention capture ------------------------------------------------------------------------
def test_capture_processor_output_equals_sdpa_and_probabilities_sum_to_one():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=4, dim_head=8)
    x, context = torch.randn(2, 64, 32), torch.randn(2, 7, 16)
    store = AttentionStore(conditional_half=False)
    calls = []
    for layer in (attn.to_q, attn.to_k):
        layer.register_forward_hook(lambda module, args, output: calls.append(module))
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, x, context)
        calls.clear()
        got = CaptureProcessor(store)(attn, x, context)
    assert calls == [attn.to_q, attn.to_k]  # the probabilities reuse SDPA's projections
    assert len(attn.to_q._forward_hooks) == len(attn.to_k._forward_hooks) == 1  # its own hooks removed
    with torch.no_grad():
        classic = attn.get_attention_scores(attn.head_to_batch_dim(attn.to_q(x)),
                                            attn.head_to_batch_dim(attn.to_k(context)))
    assert torch.equal(got, expected)
    probs = store.mean()
    assert probs.shape == (2, 64, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 64))
    torch.testing.assert_close(probs, classic.view(2, 4, 64, 7).mean(1), rtol=1e-5, atol=1e-6)
    half = AttentionStore(conditional_half=True)
    half.add(torch.rand(4, 2, 3, 5))
    assert half.mean().shape == (2, 3, 5)


@pytest.mark.parametrize("shape", ["sd1", "sd2"])
def test_capture_layers_follow_the_latent_size(shape):
    """SD-like 4-level UNets (int head dim as in SD 1.x, per-block head counts as in SD 2.x): latent / 4
    picks down_blocks.2 and up_blocks.1, as 16x16 does in SD; outputs do not change under capture."""
    heads = 8 if shape == "sd1" else (2, 2, 4, 4)
    model = build_tiny(resolution=64, block_out_channels=(32, 32, 64, 64), attention_head_dim=heads)
    layers, size = capture_layers(model.unet, (32, 32), downscale=4)
    assert size == (8, 8)
    assert capture_layers(model.unet, (32, 32))[1] == (16, 16)  # the default: the layers nearest 16×16
    assert sorted(name.split(".attentions")[0] for name in layers) == ["down_blocks.2", "up_blocks.1", "up_blocks.1"]
    store = AttentionStore()
    x, embeds = torch.randn(4, 4, 32, 32), model.encode_prompts(["a cat", "a dog", "", ""])
    with torch.no_grad():
        plain = model.unet(x, 500, encoder_hidden_states=embeds).sample
        with attention_processors(layers, CaptureProcessor(store)):
            captured = model.unet(x, 500, encoder_hidden_states=embeds).sample
    assert torch.equal(plain, captured)
    assert store.layers == 3 and store.mean().shape == (2, 64, 77)
    assert all(type(m.processor) is AttnProcessor2_0 for m in layers.values())  # restored


# -- per-pixel UNet ---------------------------------------------------------------------------
UNETS = {"tiny": {}, "sd1": {"block_out_channels": (32, 64, 64), "attention_head_dim": 8},
         "sd2": {"block_out_channels": (32, 64, 64), "attention_head_dim": (2, 4, 4)}}


@pytest.mark.parametrize("shape", sorted(UNETS))
def test_uniform_map_equals_scalar_timestep(shape):
    model = build_tiny(**UNETS[shape])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 16, 16, generator=gen)
    embeds = model.encode_prompts(["a cat", "a dog", "a cow"])
    t = torch.tensor([901, 501, 21])
    with torch.no_grad():
        scalar = model.unet(x, t, encoder_hidden_states=embeds).sample
        per_pixel = PerPixelUNet(model.unet)(x, t[:, None, None].expand(3, 16, 16), encoder_hidden_states=embeds).sample
        after = model.unet(x, t, encoder_hidden_states=embeds).sample
    torch.testing.assert_close(per_pixel, scalar, rtol=0, atol=1e-5)
    assert torch.equal(after, scalar)  # hooks removed


def test_time_embedding_is_computed_once_per_distinct_timestep(tiny_model):
    unet = tiny_model.unet
    rows = []
    handle = unet.time_embedding.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    t_map = torch.full((2, 16, 16), 741)
    t_map[:, 4:9, 2:12] = 801
    t_map[1, :3] = 777
    try:
        with torch.no_grad():
            out = PerPixelUNet(unet)(torch.randn(2, 4, 16, 16), t_map, encoder_hidden_states=torch.randn(2, 77, 32))
    finally:
        handle.remove()
    assert rows[0] == 3 and torch.isfinite(out.sample).all()  # 3 distinct values, not 512 pixels


def test_unsupported_time_embedding_norm_is_a_clear_error():
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                resnet_time_scale_shift="scale_shift")
    with pytest.raises(ValueError, match="time_embedding_norm='default', got 'scale_shift'"):
        PerPixelUNet(unet)
