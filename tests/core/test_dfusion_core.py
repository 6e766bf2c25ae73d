"""D-Fusion's building blocks: pairing by rank and K/V fusion at the attention level."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from alignlab.core.fusion import KVFusion, self_attention_layers
from alignlab.core.pairs import best_worst_pairs, dfusion_pairs
from alignlab.errors import ConfigError


def test_dfusion_pairs_by_rank():
    rewards = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.4])  # ranks: 1 5 3 0 7 4 6 2
    references, bases = dfusion_pairs(rewards)
    assert references.tolist() == [1, 1, 5, 5]  # top n/4 = {0.9, 0.8}, each twice
    assert bases.tolist() == [7, 4, 6, 2]  # bottom n/2, best first: 0.4 0.3 0.2 0.1 (0.7, 0.5 dropped)
    with pytest.raises(ConfigError, match="multiple of 4"):
        dfusion_pairs(torch.rand(6))


def test_best_worst_pairs():
    winners, losers = best_worst_pairs(torch.tensor([0.2, 0.9, 0.5, 0.1]))
    assert winners.tolist() == [1, 2] and losers.tolist() == [3, 0]


def _attention(seed=0):
    torch.manual_seed(seed)
    return Attention(query_dim=16, heads=2, dim_head=8)


def test_fusion_with_all_zero_mask_leaves_the_target_unchanged():
    attn = _attention()
    fusion = KVFusion({"attn": attn})
    ref, tgt = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    with torch.no_grad():
        plain = attn(tgt)
        with fusion.recording():
            attn(ref)
        with fusion.blending(torch.zeros(1, 4, 4)):
            fused = attn(tgt)
    assert torch.equal(fused, plain)


def test_fusion_with_all_one_mask_attends_over_reference_keys_and_values():
    attn = _attention()
    fusion = KVFusion({"attn": attn})
    ref, tgt = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    with torch.no_grad():
        with fusion.recording():
            attn(ref)
        with fusion.blending(torch.ones(1, 4, 4)):
            fused = attn(tgt)
        # by hand: the target's queries over the reference's keys and values
        q = attn.to_q(tgt).view(2, 16, 2, 8).transpose(1, 2)
        k = attn.to_k(ref).view(2, 16, 2, 8).transpose(1, 2)
        v = attn.to_v(ref).view(2, 16, 2, 8).transpose(1, 2)
        out = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
        expected = attn.to_out[0](out.transpose(1, 2).reshape(2, 16, 16))
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_fusion_mask_selects_key_positions():
    """A half mask blends exactly the masked key positions (nearest-resized to the layer's grid)."""
    attn = _attention()
    fusion = KVFusion({"attn": attn})
    ref, tgt = torch.randn(1, 16, 16), torch.randn(1, 16, 16)
    mask = torch.zeros(1, 2, 2)
    mask[0, 0] = 1  # top half of a 2x2 map -> top two rows of the 4x4 token grid
    captured = {}
    handle = attn.to_k.register_forward_hook(lambda m, a, o: captured.setdefault("k", o))
    with torch.no_grad():
        with fusion.recording():
            attn(ref)
        with fusion.blending(mask):
            attn(tgt)
    handle.remove()
    # the hook registered first sees the raw target keys; fusion hooks run after it
    k_ref, k_tgt = attn.to_k(ref), attn.to_k(tgt)
    blended = torch.cat([k_ref[:, :8], k_tgt[:, 8:]], dim=1)
    with torch.no_grad(), fusion.blending(mask):
        assert torch.equal(attn.to_k(tgt), blended)


def test_fused_layers_are_mid_and_up_self_attention(tiny_model):
    names = sorted(self_attention_layers(tiny_model.unet))
    assert names and all(n.endswith("attn1") and n.split(".")[0] in ("mid_block", "up_blocks") for n in names)
    assert len(names) == sum(1 for n, _ in tiny_model.unet.named_modules()
                             if n.endswith("attn1") and not n.startswith("down_blocks"))


def test_grouped_pairs_offset_each_prompts_group():
    from alignlab.core.pairs import grouped_pairs

    rewards = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])  # two prompts of 3 samples
    winners, losers = grouped_pairs(rewards, 3, best_worst_pairs)
    assert winners.tolist() == [1, 5] and losers.tolist() == [0, 4]


@pytest.mark.parametrize("num_steps,expected", [(20, (2, 20)), (10, (0, 10)), (50, (32, 50)), (18, (0, 18))])
def test_fused_steps_follow_the_official_inject_t_rule(num_steps, expected):
    """Official D-Fusion fuses step i when 0 <= num_steps - i - 1 < 18 ("0-18"): steps 2-19 of 20."""
    from alignlab.methods.dfusion import fused_steps

    assert fused_steps([0, 18], num_steps) == expected
    official = [i for i in range(num_steps) if 0 <= num_steps - i - 1 < 18]
    assert list(range(*expected)) == official
    assert fused_steps([3, 5], 20) == (15, 17)


def test_fused_steps_reject_a_reversed_range():
    from alignlab.methods.dfusion import fused_steps

    with pytest.raises(ConfigError, match=r"method.fuse_steps_left must be \[low, high\]"):
        fused_steps([5, 3], 20)
