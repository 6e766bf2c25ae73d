"""Regenerate conf/prompts/ from the papers' own prompt files, so each `*_paper` preset trains and evaluates on
exactly the official prompts, splits, item words, AsynDM curvatures k and D-Fusion mask thresholds.

    git clone https://github.com/hu-zijing/B2-DiffuRL <DIR>/B2-DiffuRL    # likewise D-Fusion and AsynDM
    python experiments/official_prompts.py --repos <DIR>

The official files name items by word index (0-based, counting runs of letters and digits); each item is
written with its word and that index. The three repositories are MIT-licensed; their notices are copied to
conf/prompts/OFFICIAL-LICENSES.txt. conf/prompts/official.sha256 records the generated files' checksums,
which tests/prompts/test_official_prompts.py checks, so a hand edit or a regeneration from another commit shows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

from alignlab.core.token_spans import prompt_words

PROMPTS = Path(__file__).resolve().parents[1] / "conf" / "prompts"
REPOSITORIES = ("B2-DiffuRL", "D-Fusion", "AsynDM")
# name -> (repository, train file, test file or None, item file or None, D-Fusion mask file or None, what it is)
SETS = {
    "b2_t1": ("B2-DiffuRL", "template1_train", "template1_test", None, None,
              'B²-DiffuRL template 1, "a [animal] [activity]"'),
    "b2_t2": ("B2-DiffuRL", "template2_train", "template2_test", None, None,
              'B²-DiffuRL template 2, "[colour] [fruit]"'),
    "b2_t3": ("B2-DiffuRL", "template3_train", "template3_test", None, None,
              'B²-DiffuRL template 3, "[object] [relation] [object]"'),
    "dfusion_t1": ("D-Fusion", "template1_train", "template1_test", "template1_item", "template1_mask",
                   'D-Fusion template 1, "a [animal] [activity]"'),
    "dfusion_t2": ("D-Fusion", "template2_train", "template2_test", "template2_item", "template2_mask",
                   'D-Fusion template 2, "a [colour] and [material] [object]"'),
    "dfusion_t3": ("D-Fusion", "template3_train", "template3_test", "template3_item", "template3_mask",
                   'D-Fusion template 3, "the [object] [relation] the [object]"'),
    "asyn_animals": ("AsynDM", "animal", None, "animal_item", None, "AsynDM's animal-activity prompts"),
    "asyn_drawbench": ("AsynDM", "drawbench", None, "drawbench_item", None, "AsynDM's DrawBench subset"),
    "asyn_geneval": ("AsynDM", "geneval", None, "geneval_item", None, "AsynDM's GenEval subset"),
    "asyn_mscoco": ("AsynDM", "mscoco", None, "mscoco_item", None, "AsynDM's MS-COCO subset"),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(prompt: str, indices: list[int] | None, ks: list[float] | None, thresholds: list[float] | None) -> str:
    """One YAML list entry: the prompt (JSON-quoted, so trailing spaces survive) and its items."""
    if indices is None:
        return f"  - {json.dumps(prompt)}"
    words = [match.group() for match in prompt_words(prompt)]
    items = []
    for i, index in enumerate(indices):
        fields = {"word": words[index], "index": index}
        if ks is not None:
            fields["k"] = ks[i]
        if thresholds is not None:
            fields["threshold"] = thresholds[i]
        items.append("{" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in fields.items()) + "}")
    return f"  - {{prompt: {json.dumps(prompt)}, items: [{', '.join(items)}]}}"


def write_set(name: str, repos: Path) -> Path:
    repo, train, test, item_file, mask_file, title = SETS[name]
    folder = repos / repo / "config" / "prompt"
    commit = subprocess.run(["git", "-C", str(repos / repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    sources = [f for f in (train, test, item_file, mask_file) if f]
    raw = {f: (folder / f"{f}.json").read_bytes() for f in sources}
    data = {f: json.loads(raw[f]) for f in sources}
    indices = (data[item_file].get("item_idx", data[item_file]) if item_file else {})
    ks = data[item_file].get("item_k", {}) if item_file else {}
    thresholds = data[mask_file] if mask_file else {}

    def block(prompts: list[str]) -> list[str]:
        return [entry(p, indices.get(p), ks.get(p), thresholds.get(p)) for p in prompts]

    lines = [f"# {title}: the official prompt files of github.com/hu-zijing/{repo}, commit {commit},",
             "# converted by experiments/official_prompts.py (MIT License, Copyright (c) 2025 Zijing Hu:",
             "# conf/prompts/OFFICIAL-LICENSES.txt). Items carry the official word index; their attention is read",
             "# from the tokens the word became unless prompts.item_tokens=official (the official one token).",
             "# Sources (sha256): " + ", ".join(f"{f}.json {sha256(raw[f])[:16]}" for f in sources),
             "_target_: alignlab.prompts.PromptSet", f"name: {name}", "item_tokens: spans", "train:",
             *block(data[train])]
    if test:
        lines += ["test:", *block(data[test])]
    else:
        lines.insert(5, "# Training-free evaluation prompts, kept in `train` so that RL methods with sampler=asyn "
                        "sample them.")
    out = PROMPTS / f"{name}.yaml"
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", type=Path, required=True, help="folder holding clones of " + ", ".join(REPOSITORIES))
    args = parser.parse_args()
    written = [write_set(name, args.repos) for name in SETS]
    notices = [f"{'=' * 20} github.com/hu-zijing/{repo} {'=' * 20}\n{(args.repos / repo / 'LICENSE').read_text()}"
               for repo in REPOSITORIES]
    (PROMPTS / "OFFICIAL-LICENSES.txt").write_text("The prompt files named official in this folder are converted from "
                                                   "these repositories, under these licenses.\n\n" + "\n".join(notices))
    (PROMPTS / "official.sha256").write_text("".join(f"{sha256(f.read_bytes())}  {f.name}\n" for f in written))
    print(f"wrote {len(written)} prompt sets, their checksums and the licenses to {PROMPTS}")


if __name__ == "__main__":
    main()
