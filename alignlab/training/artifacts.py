"""Pictures for people: captioned sample grids and alignment-curve plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

CELL = 128  # small images are upscaled (nearest) so a 32 px sample is visible
FONT_SIZE, PAD = 11, 3


def to_uint8(images: torch.Tensor):
    """Images (N, 3, H, W) in [0, 1] as an (N, H, W, 3) uint8 array: what PIL and W&B take."""
    return (images.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def sample_grid(images: torch.Tensor, captions: list[str], columns: int = 4, title: str | None = None) -> Image.Image:
    """Images (N, 3, H, W) in [0, 1] in a grid, each with its whole caption underneath (wrapped to the tile;
    a newline in a caption starts a line), under an optional title: a figure for a paper draft."""
    n = len(images)
    columns = min(columns, n)
    rows = -(-n // columns)
    side = max(CELL, images.shape[-1])
    font, title_font = _font(FONT_SIZE), _font(FONT_SIZE + 3)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(caption, side - 2 * PAD, font, measure) for caption in captions]
    line_h = FONT_SIZE + 3
    caption_h = line_h * max(map(len, wrapped), default=0) + 2 * PAD
    title_h = line_h + 2 * PAD + 3 if title else 0
    grid = Image.new("RGB", (columns * side, title_h + rows * (side + caption_h)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((PAD, PAD), title, fill="black", font=title_font)
    for i, (array, lines) in enumerate(zip(to_uint8(images), wrapped, strict=False)):
        tile = Image.fromarray(array).resize((side, side), Image.NEAREST)
        x, y = (i % columns) * side, title_h + (i // columns) * (side + caption_h)
        grid.paste(tile, (x, y))
        for line_no, line in enumerate(lines):
            draw.text((x + PAD, y + side + PAD + line_h * line_no), line, fill="black", font=font)
    return grid


def sample_captions(prompts: list[str], rewards, scored=None) -> list[str]:
    """Each sample's prompt, then its reward and, on world prompts, the oracle's verdict (✓ all constraints met)
    from their judge_images (None: no gold judge)."""
    verdicts = ["\noracle " + ("✓" if ok else "✗") for ok in scored[1].tolist()] if scored else [""] * len(prompts)
    return [f"{p}\nreward {r:.3f}{v}" for p, r, v in zip(prompts, rewards, verdicts, strict=True)]


def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships: spaces keep their width and non-ASCII text its glyphs."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _wrap(text: str, width: int, font, draw: ImageDraw.ImageDraw) -> list[str]:
    """`text` broken into lines no wider than `width` pixels (a single longer word keeps its own line)."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's rows. A last line cut short by a kill mid-append is left out: its round had not been
    checkpointed yet (checkpoints follow the row), so a resumed run writes it again."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines[:-1]]
    try:
        return rows + [json.loads(line) for line in lines[-1:]]
    except json.JSONDecodeError:
        return rows


def _plot_keys(ax, rows: list[dict], keys: list[str], marker: str) -> None:
    """One line per metric key, over the rounds whose rows have it (evaluation runs only on some rounds)."""
    for key in keys:
        points = [(r["round"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points, strict=False), marker=marker, label=key)


def plot_curves(rows: list[dict], path: Path) -> None:
    """Reward (mean ± std), reward=multi's components (`reward/...`) and every `eval/...` metric against the
    round; world runs add the oracle's score and accuracy (train rollouts and eval) on a second panel."""
    rounds = [r["round"] for r in rows]
    gold = sorted({k for r in rows for k in r if k.split("/")[-1].startswith("oracle_")})
    fig, axes = plt.subplots(1, 2 if gold else 1, figsize=(12 if gold else 6, 4), squeeze=False)
    ax = axes[0, 0]
    mean = torch.tensor([r["reward_mean"] for r in rows])
    std = torch.tensor([r.get("reward_std", 0.0) for r in rows])
    ax.plot(rounds, mean, marker="o", label="train reward")
    ax.fill_between(rounds, mean - std, mean + std, alpha=0.2)
    _plot_keys(ax, rows, sorted({k for r in rows for k in r if k.startswith("reward/")}), ".")
    _plot_keys(ax, rows, sorted({k for r in rows for k in r if k.startswith("eval/") and k not in gold}), "s")
    ax.set_ylabel("reward")
    ax.set_title("alignment curve")
    if gold:
        _plot_keys(axes[0, 1], rows, gold, "o")
        axes[0, 1].set_ylabel("oracle (world ground truth)")
        axes[0, 1].set_title("gold metric")
    for panel in axes[0]:
        panel.set_xlabel("round")
        panel.grid(alpha=0.3)
        panel.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
