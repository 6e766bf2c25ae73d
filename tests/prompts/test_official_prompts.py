"""The papers' own prompt sets (conf/prompts/, written by experiments/official_prompts.py): unchanged since they
were converted, with the official splits, item words, k and thresholds, and both ways of reading an item's tokens."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from alignlab.core.token_spans import Item, ItemBatch, token_span
from alignlab.errors import ConfigError
from alignlab.models.tokenizer import clip_tokenizer
from alignlab.prompts import PromptSet

PROMPTS = Path(__file__).resolve().parents[2] / "conf" / "prompts"
# name -> (train, test, items): counted in the official JSON files
SIZES = {"b2_t1": (45, 90, 0), "b2_t2": (40, 40, 0), "b2_t3": (40, 30, 0), "dfusion_t1": (40, 40, 140),
         "dfusion_t2": (40, 40, 80), "dfusion_t3": (40, 40, 160), "asyn_animals": (40, 0, 80),
         "asyn_drawbench": (40, 0, 68), "asyn_geneval": (40, 0, 64), "asyn_mscoco": (40, 0, 71)}


def load(name: str, item_tokens: str = "spans") -> PromptSet:
    data = yaml.safe_load((PROMPTS / f"{name}.yaml").read_text())
    return PromptSet(data["train"], data.get("test"), name, item_tokens)


def test_every_official_set_is_listed_with_its_checksum():
    recorded = dict(line.split()[::-1] for line in (PROMPTS / "official.sha256").read_text().splitlines())
    assert sorted(recorded) == sorted(f"{name}.yaml" for name in SIZES)
    for file, digest in recorded.items():
        assert hashlib.sha256((PROMPTS / file).read_bytes()).hexdigest() == digest, f"{file} changed since conversion"
    assert (PROMPTS / "OFFICIAL-LICENSES.txt").read_text().count("Copyright (c) 2025 Zijing Hu") == 3


@pytest.mark.parametrize("name", SIZES)
def test_sizes_and_disjoint_splits(name):
    prompts = load(name)
    items = sum(len(prompts.items_for(p)) for p in prompts.train + prompts.test)
    assert (len(prompts.train), len(prompts.test), items) == SIZES[name]


def test_dfusion_items_carry_the_official_thresholds():
    prompts = load("dfusion_t1")
    assert prompts.items_for("a cat eating a sandwich") == [Item("cat", None, 0.03, 1),
                                                            Item("sandwich", None, 0.005, 4)]
    assert prompts.items_for("a lion washing dishes") == []  # the official item file leaves 10 test prompts out
    assert load("dfusion_t2").items_for("a black and woolen bus") == [Item("bus", None, 0.005, 4)]


def test_asyndm_items_carry_the_official_k_and_keep_trailing_spaces():
    assert load("asyn_animals").items_for("a cat eating a sandwich") == [Item("cat", 0.7, None, 1),
                                                                          Item("sandwich", 0.7, None, 4)]
    coco = load("asyn_mscoco")
    assert coco.train[0] == "An opened box of four chocolate bananas. "
    assert [i.word for i in coco.items_for(coco.train[0])] == ["box", "bananas"]


# official item files that point one token off for a word after a split one: counted with CLIP's tokenizer
OFFICIAL_TOKEN_DIFFERS = {"dfusion_t2": 8, "dfusion_t3": 2, "asyn_drawbench": 10, "asyn_geneval": 8,
                          "asyn_mscoco": 13, "dfusion_t1": 0, "asyn_animals": 0}


@pytest.mark.parametrize("name", OFFICIAL_TOKEN_DIFFERS)
def test_spans_and_the_official_one_token_indexing(name):
    tokenizer = clip_tokenizer()
    spans, official = load(name), load(name, "official")
    prompts = [p for p in spans.train + spans.test if spans.items_for(p)]
    ours = ItemBatch.build(tokenizer, prompts, [spans.items_for(p) for p in prompts]).weights
    theirs = ItemBatch.build(tokenizer, prompts, [official.items_for(p) for p in prompts]).weights
    differs = (ours != theirs).any(dim=2) & (ours.sum(dim=2) > 0)
    assert int(differs.sum()) == OFFICIAL_TOKEN_DIFFERS[name]
    assert (theirs.sum(dim=2)[ours.sum(dim=2) > 0] == 1).all()  # official: one whole token per item


def test_a_split_word_moves_the_official_token_but_not_the_span():
    tokenizer = clip_tokenizer()
    prompt = "A 1960s yearbook photo with animals dressed as humans."
    assert [i.word for i in load("asyn_drawbench").items_for(prompt)] == ["animals"]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
    assert [tokens[i] for i in token_span(tokenizer, prompt, "animals", 5)] == ["animals</w>"]
    official = ItemBatch.build(tokenizer, [prompt], [load("asyn_drawbench", "official").items_for(prompt)])
    assert tokens[official.weights[0, 0].nonzero().item()] == "s</w>"  # the last of 1·9·6·0·s


def test_item_index_errors():
    with pytest.raises(ConfigError, match="item 'cat' does not occur as a word at word index 2 in the prompt 'a cat'"):
        PromptSet([{"prompt": "a cat", "items": [{"word": "cat", "index": 2}]}], name="pets")
    with pytest.raises(ConfigError, match="item_tokens=official needs each item's word index, and item 'cat'"):
        PromptSet([{"prompt": "a cat", "items": ["cat"]}], name="pets", item_tokens="official")
    with pytest.raises(ConfigError, match="unknown key.*'idx'"):
        PromptSet([{"prompt": "a cat", "items": [{"word": "cat", "idx": 1}]}], name="pets")
    with pytest.raises(ConfigError, match="item_tokens must be one of"):
        PromptSet(["a cat"], name="pets", item_tokens="tokens")


def test_an_index_picks_the_occurrence_of_a_repeated_word():
    tokenizer = clip_tokenizer()
    assert token_span(tokenizer, "a dog behind a dog", "dog") == range(2, 3)
    assert token_span(tokenizer, "a dog behind a dog", "dog", 4) == range(5, 6)
