"""Every method and pairing still does what it did when tests/golden/behaviour.json was recorded (tests/behaviour.py):
the same metrics rows and final LoRA weights from the same seeds, AsynDM's table and a fused target, to float32
rounding."""

from __future__ import annotations

import json

import pytest

from tests.behaviour import GOLDEN, OUTPUTS, PAIRINGS, behaviour


def close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(close, a, b))
    if isinstance(a, float):
        return a == pytest.approx(b, rel=1e-5, abs=1e-7)
    return a == b


def test_the_golden_file_covers_every_pairing_and_each_moved_its_weights():
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden) == sorted([*PAIRINGS, *OUTPUTS])
    assert all(row.get("grad_norm", 0) > 0 for name in PAIRINGS for row in golden[name]["rows"])
    assert 0 < golden["fused_target"]["mask_fraction"] < 1  # the mask neither empty nor everything


@pytest.mark.parametrize("name", [*PAIRINGS, *OUTPUTS])
def test_behaviour_is_unchanged(name, tmp_path):
    expected = json.loads(GOLDEN.read_text())[name]
    assert close(behaviour(name, tmp_path), expected)
