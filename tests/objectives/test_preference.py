"""The preference objectives' losses by hand: trajectory DPO (log 2 at the reference, the per-side clip) and
Diffusion-DPO."""

import math

import pytest
import torch

from alignlab.objectives.diffusion_dpo import diffusion_dpo_loss
from alignlab.objectives.trajectory_dpo import trajectory_dpo_loss


def test_trajectory_dpo_is_log2_at_the_reference_and_learns():
    logp = torch.randn(5)
    stats = trajectory_dpo_loss(logp, logp, logp + 1, logp + 1, beta=0.1)
    assert stats.loss.item() == pytest.approx(math.log(2))
    # the gradient raises the winner's log-ratio and lowers the loser's
    win, lose = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    trajectory_dpo_loss(win, torch.zeros(3), lose, torch.zeros(3), beta=1.0).loss.backward()
    assert (win.grad < 0).all() and (lose.grad > 0).all()


def test_trajectory_dpo_clips_each_log_ratio():
    stats = trajectory_dpo_loss(torch.tensor([5.0]), torch.zeros(1), torch.tensor([-5.0]), torch.zeros(1),
                                beta=1.0, clip_eps=0.1)
    margin = math.log(1.1) - math.log(0.9)
    assert stats.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-margin))), rel=1e-6)
    assert stats.accuracy.item() == 1.0 and stats.margin.item() == pytest.approx(margin, rel=1e-6)


def test_diffusion_dpo_by_hand():
    ew, el = torch.tensor([0.2, 0.7]), torch.tensor([0.3, 0.4])
    rw, rl = torch.tensor([0.25, 0.5]), torch.tensor([0.3, 0.3])
    beta = 10.0
    stats = diffusion_dpo_loss(ew, el, rw, rl, beta)
    inside = [-0.5 * beta * ((0.2 - 0.25) - (0.3 - 0.3)), -0.5 * beta * ((0.7 - 0.5) - (0.4 - 0.3))]
    expected = sum(math.log(1 + math.exp(-x)) for x in inside) / 2
    assert stats.loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats.accuracy.item() == 0.5
