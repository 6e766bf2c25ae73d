"""World v2's minimal edits: the minimal pairs the encoders must separate, the pre-training caption noise,
the text encoder's structure labels, and the text encoders' separation measured over the grammar."""

import json

import numpy as np
import pytest
import torch

from alignlab.world.clip import hard_negatives, paraphrase_loss, text_margin_loss
from alignlab.world.contrasts import (
    EDITS, KINDS, OPPOSITE, minimal_pairs, mirrored, scene_for_caption, sequence_difference,
)
from alignlab.world.grammar import all_specs, spec_of
from alignlab.world.oracle import check
from alignlab.world.render import render_batch
from alignlab.world.text_training import COLOUR_LABELS, HEADS, RELATION_LABELS, SHAPE_LABELS, structure_labels

STRUCTURE_STEPS = 150  # enough to pass with margin (docs/world.md: 400 steps give >= 58 %)


def _differences(a, b):
    """The attributes in which two specs differ: relation, per-slot colour and shape, count."""
    out = set()
    if a.relation != b.relation:
        out.add("relation")
    if len(a.objects) != len(b.objects):
        out.add("count")
    for i, (x, y) in enumerate(zip(a.objects, b.objects, strict=False)):
        if x.color != y.color:
            out.add(f"colour{i}")
        if x.shape != y.shape:
            out.add(f"shape{i}")
    return out


def test_minimal_pairs_differ_in_exactly_their_one_edit():
    sizes = {kind: len(minimal_pairs(kind)) for kind in KINDS}
    assert sizes == {"relation": 360, "colour_swap": 450, "count": 18}  # 720 / 2; (180 + 720) / 2; 36 / 2
    for a, b in minimal_pairs("relation"):
        assert _differences(spec_of(a), spec_of(b)) == {"relation"}
    for a, b in minimal_pairs("colour_swap"):
        sa, sb = spec_of(a), spec_of(b)
        assert _differences(sa, sb) == {"colour0", "colour1"}
        assert (sa.objects[0].color, sa.objects[1].color) == (sb.objects[1].color, sb.objects[0].color)
    for a, b in minimal_pairs("count"):
        assert _differences(spec_of(a), spec_of(b)) == {"count"}


def test_sequence_difference_is_relative_norm_of_the_whole_sequence():
    table = {"a": torch.ones(2, 3), "b": torch.tensor([[1.0, 1, 1], [1, 1, 4]])}
    encode = lambda prompts: torch.stack([table[p] for p in prompts])  # noqa: E731
    assert sequence_difference(encode, [("a", "b"), ("a", "a")]).tolist() == pytest.approx([3 / 6**0.5, 0.0])


def test_scene_for_caption_keeps_clean_captions_at_rate_zero_and_always_edits_at_rate_one():
    rng = np.random.default_rng(0)
    specs = all_specs()[::5]
    assert all(scene_for_caption(s, rng, {}) == s for s in specs)
    always = dict.fromkeys(EDITS, 1.0)
    for spec in specs:
        scene = scene_for_caption(spec, rng, always)
        if spec.category not in EDITS:
            assert scene == spec
            continue
        # the scene is drawable and the oracle rejects it for the caption it is paired with
        image = render_batch([scene], np.random.default_rng(1))[0]
        assert check(scene, image).passed and not check(spec, image).passed


def test_scene_for_caption_edits_at_the_given_rate_and_uses_every_edit():
    rng = np.random.default_rng(0)
    spec = next(s for s in all_specs(["position"]) if s.split == "train")
    scenes = [scene_for_caption(spec, rng, {"position": 0.3}) for _ in range(3000)]
    edited = [s for s in scenes if s != spec]
    assert len(edited) / len(scenes) == pytest.approx(0.3, abs=0.03)
    kinds = {frozenset(_differences(spec, s)) if s.category == "position" else "dropped" for s in edited}
    assert kinds == {frozenset({"relation"}), frozenset({"colour0", "colour1"}), "dropped"}


def test_hard_negatives_cover_every_edit_that_applies():
    rng = np.random.default_rng(0)
    position = next(s for s in all_specs(["position"]))
    negatives = hard_negatives(position, rng)
    assert len(negatives) == 4 and all(n != position for n in negatives)
    assert {frozenset(_differences(position, n)) for n in negatives} >= {
        frozenset({"relation"}), frozenset({"colour0", "colour1"})}
    counting = next(s for s in all_specs(["counting"]))
    assert any(len(n.objects) != len(counting.objects) for n in hard_negatives(counting, rng))


def test_a_mirrored_caption_describes_the_same_scene():
    spec = spec_of("a red circle to the left of a blue square")
    assert mirrored(spec).prompt == "a blue square to the right of a red circle"
    assert mirrored(mirrored(spec)) == spec
    images = render_batch([spec] * 8, np.random.default_rng(0))
    assert all(check(mirrored(spec), image).passed for image in images)  # every render of one fits the other


def test_paraphrase_loss_is_the_mean_hinge_below_the_agreement():
    angle = torch.tensor([0.0, 0.3, 1.0])  # cosines 1.0, 0.955, 0.540
    captions = torch.tensor([[1.0, 0.0]] * 3)
    paraphrases = torch.stack([angle.cos(), angle.sin()], dim=1)
    expected = (0.0 + (0.97 - float(torch.cos(torch.tensor(0.3)))) + (0.97 - float(torch.cos(torch.tensor(1.0))))) / 3
    assert paraphrase_loss(captions, paraphrases, agreement=0.97).item() == pytest.approx(expected)
    assert paraphrase_loss(captions, paraphrases, agreement=0.5).item() == 0.0


def test_text_margin_loss_is_the_mean_hinge_on_each_pairs_cosine():
    angle = torch.tensor([0.0, 0.3, 1.0])  # cosines 1.0, 0.955, 0.540 against the x axis
    captions = torch.tensor([[1.0, 0.0]] * 3)
    negatives = torch.stack([angle.cos(), angle.sin()], dim=1)
    expected = ((1.0 - 0.9) + (float(torch.cos(torch.tensor(0.3))) - 0.9) + 0.0) / 3
    assert text_margin_loss(captions, negatives, margin=0.9).item() == pytest.approx(expected)
    assert text_margin_loss(captions, negatives, margin=1.0).item() == 0.0
    negatives.requires_grad_(True)
    text_margin_loss(captions, negatives, margin=0.9).backward()
    assert negatives.grad[:, 0].tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])  # only pairs above the margin


def test_the_shape_forgiving_probe_fails_only_on_colour_count_or_relation():
    from dataclasses import replace

    from experiments.world_probe import shape_forgiven

    spec = next(s for s in all_specs(["position"]) if {o.shape for o in s.objects} == {"circle", "square"})
    as_circles = replace(spec, objects=tuple(replace(o, shape="circle") for o in spec.objects))
    image = render_batch([as_circles], np.random.default_rng(0))[0]  # the right scene, squares drawn round
    assert not check(spec, image).passed and shape_forgiven(spec, image)
    wrong_way = render_batch([replace(as_circles, relation=OPPOSITE[spec.relation])], np.random.default_rng(0))[0]
    assert not shape_forgiven(spec, wrong_way)
    assert shape_forgiven(all_specs(["two_objects"])[0], image) is None  # no colours: shape is the whole prompt


def test_structure_labels_name_the_scene():
    labels = structure_labels(spec_of("a red circle to the left of a blue square"))
    assert labels == [COLOUR_LABELS.index("red"), SHAPE_LABELS.index("circle"), COLOUR_LABELS.index("blue"),
                      SHAPE_LABELS.index("square"), 2, RELATION_LABELS.index("to the left of")]
    assert structure_labels(spec_of("three green triangles"))[2:5] == [
        COLOUR_LABELS.index("none"), SHAPE_LABELS.index("none"), 3]
    assert structure_labels(spec_of("a circle and a square"))[0] == COLOUR_LABELS.index("any")
    assert structure_labels(None) == [COLOUR_LABELS.index("none"), SHAPE_LABELS.index("none")] * 2 + [0, 0]
    assert all(0 <= label < len(head) for spec in all_specs() for label, head in zip(
        structure_labels(spec), HEADS, strict=True))


def test_masks_come_from_16x16_attention_on_the_world_and_sd():
    """AsynDM's and D-Fusion's masks by default: the layers nearest 16×16, the whole world latent (gate 5 asks
    for at least 8×8), latent / 4 on SD's 64×64 latent."""
    from alignlab.core.attention import capture_layers
    from alignlab.world.model import world_components

    unet, _ = world_components()
    layers, size = capture_layers(unet, (16, 16))
    assert size == (16, 16) and len(layers) == 3  # one down and two up transformer blocks at 16×16
    assert capture_layers(unet, (16, 16), downscale=4)[1] == (4, 4)
    assert capture_layers(unet, (64, 64))[1] == (16, 16)



def test_pretraining_the_text_encoder_on_structure_separates_every_minimal_pair(tmp_path):
    """Gate 6 for the text-to-image encoder, the way a v2 build makes it (v1 weights: relation 1.6 %):
    after a short structure pre-training every minimal pair of the grammar is >= 20 % apart."""
    from dataclasses import replace

    from alignlab.world.model import assemble, world_components
    from alignlab.world.text_training import TEXT, train_text_encoder

    unet, encoder = world_components()
    model = assemble(unet, encoder)
    before = {kind: sequence_difference(model.encode_prompts, minimal_pairs(kind)).min() for kind in KINDS}
    train_text_encoder(encoder, model.tokenizer, tmp_path, replace(TEXT, steps=STRUCTURE_STEPS))
    after = {kind: sequence_difference(model.encode_prompts, minimal_pairs(kind)).min() for kind in KINDS}
    assert before["relation"] < 0.2  # a random encoder does not separate them: the training does
    assert all(value >= 0.2 for value in after.values()), after


def test_report_measures_the_shipped_encoders_separation():
    """The report's minimal-pair table on the shipped (v2) weights: golden values, docs/world.md's gate 6 (change
    only with new weights). Without a CLIP only the text-to-image columns are there."""
    from alignlab.rewards.clip import ClipScore
    from alignlab.world.clip import CHECKPOINT, NAME
    from alignlab.world.model import build_world
    from alignlab.world.report import encoder_separation

    model = build_world()
    rows = encoder_separation(model, ClipScore(NAME, str(CHECKPOINT)))
    assert {kind: row["pairs"] for kind, row in rows.items()} == {"relation": 360, "colour_swap": 450, "count": 18}
    assert [round(rows[k]["t2i_difference_min"], 3) for k in KINDS] == [0.625, 0.958, 0.584]
    assert [round(rows[k]["clip_cosine_max"], 3) for k in KINDS] == [0.881, 0.643, 0.884]
    assert all(rows[k]["t2i_difference_min"] >= 0.2 and rows[k]["clip_cosine_max"] <= 0.95 for k in KINDS)  # gate 6
    assert set(encoder_separation(model)["count"]) == {"pairs", "t2i_difference_min", "t2i_difference_mean"}


def test_the_world_report_runs_from_its_entry_point(tmp_path):
    """`python -m alignlab.world.report` at its smallest sizes on the shipped weights: every category of both
    splits at the asked size, the loss plot from the build directory's logs, and caption retrieval on its fixed
    256 renders at the shipped CLIP's golden value (233 of 256, docs/world.md's 0.910)."""
    from alignlab.world.grammar import CATEGORIES
    from alignlab.world.report import main

    build = tmp_path / "build"
    build.mkdir()
    (build / "clip_loss.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    out = tmp_path / "report"
    main(["--out", str(out), "--build-dir", str(build), "--per-category", "1", "--samples-per-prompt", "2",
          "--num-steps", "2"])
    numbers = json.loads((out / "report.json").read_text())
    for split in ("train", "test"):
        assert {c: (numbers[split][c]["prompts"], numbers[split][c]["images"]) for c in CATEGORIES} == {
            c: (1, 2) for c in CATEGORIES}
    assert numbers["retrieval_renders"] * 256 == 233
    assert (out / "losses.png").is_file() and all((out / f"samples_{c}.png").is_file() for c in CATEGORIES)
