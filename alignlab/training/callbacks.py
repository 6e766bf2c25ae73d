"""Callbacks that fill the run directory (the run-directory contract, docs/design.md). They only read the method:
the round ends inside it (RLMethod.end_round), before Lightning calls any callback's on_train_epoch_end."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from alignlab.eval.judge import judge_images
from alignlab.models import save_lora
from alignlab.models.lora import has_lora
from alignlab.training.artifacts import plot_curves, read_metrics, sample_captions, sample_grid
from alignlab.training.atomic import replace_atomically
from alignlab.training.console import show_round
from alignlab.training.wandb_run import alert, run_summary, sample_table


class RoundRecorder(L.Callback):
    """After each round: its metrics.jsonl row, the loggers, samples/round_NNNN.png, plots/alignment.png and,
    after an evaluation, samples/eval_round_NNNN.png (with its W&B table and any reward-hacking alert)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # data-parallel runs: rank 0 alone writes the run directory
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run replays the rounds after its checkpoint: drop rows it will write again.
        rows = [r for r in read_metrics(self.metrics_path) if r["round"] < pl_module.round_index]
        if self.metrics_path.exists():
            text = "".join(json.dumps(r) + "\n" for r in rows)
            replace_atomically(self.metrics_path, lambda tmp: tmp.write_text(text))
        self.images_sampled = sum(r.get("samples_per_round", 0.0) for r in rows)  # the budget's running total
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.define_metric("round")
                logger.experiment.define_metric("*", step_metric="round")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        row = dict(pl_module.round_row)
        show_round(pl_module, row)
        round_no = row["round"]
        if not trainer.is_global_zero:
            return
        # the x axis a budget is measured in: images sampled so far, this round's included
        self.images_sampled += row.get("samples_per_round", 0.0)
        row["images_sampled"] = self.images_sampled
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for logger in trainer.loggers:
            logger.log_metrics(row, step=round_no)
        if pl_module.evaluated is not None:
            self._save_evaluation(trainer, pl_module.evaluated, round_no)
        self._save_pictures(trainer, pl_module.showcase, round_no, pl_module.prompts)

    def _save_evaluation(self, trainer, evaluated: dict, round_no: int) -> None:
        captions = sample_captions(evaluated["prompts"], evaluated["rewards"], evaluated["scored"])
        grid = sample_grid(evaluated["images"], captions, evaluated["columns"],
                           title=f"evaluation on {evaluated['split']} prompts, after round {round_no}")
        (self.run_dir / "samples").mkdir(exist_ok=True)
        grid.save(self.run_dir / "samples" / f"eval_round_{round_no:04d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("eval", [grid], step=round_no, caption=[f"eval round {round_no}"])
                table = sample_table(evaluated["images"], evaluated["prompts"], evaluated["rewards"], round_no,
                                     evaluated["scored"])
                logger.experiment.log({"eval_table": table, "round": round_no})
                if evaluated["alarm"]:
                    alert(logger, evaluated["alarm"])

    def _save_pictures(self, trainer, showcase: dict, round_no: int, prompt_set) -> None:
        (self.run_dir / "plots").mkdir(exist_ok=True)
        plot_curves(read_metrics(self.metrics_path), self.run_dir / "plots" / "alignment.png")
        if not showcase:
            return
        (self.run_dir / "samples").mkdir(exist_ok=True)
        # the round's samples, plus any extra grids a method shows (D-Fusion's masks, say)
        grids = {"samples": showcase, **showcase.get("grids", {})}
        for name, shown in grids.items():
            scored = judge_images(prompt_set, shown["images"], shown["prompts"]) if "prompts" in shown else None
            captions = shown.get("captions") or sample_captions(shown["prompts"], shown["rewards"], scored)
            grid = sample_grid(shown["images"], captions, shown.get("columns", 4), title=f"{name}, round {round_no}")
            prefix = "round" if name == "samples" else f"{name}_round"
            grid.save(self.run_dir / "samples" / f"{prefix}_{round_no:04d}.png")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(name, [grid], step=round_no, caption=[f"round {round_no}"])
                    if name == "samples" and "prompts" in shown:
                        table = sample_table(shown["images"], shown["prompts"], shown["rewards"], round_no, scored)
                        logger.experiment.log({"samples_table": table, "round": round_no})

    def on_train_end(self, trainer, pl_module) -> None:
        """The run summary W&B shows in its runs table: final and best held-out metrics, images, time."""
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(run_summary(read_metrics(self.metrics_path)))


class ExportWeights(L.Callback):
    """After each round: lora/ (diffusers `load_lora_weights` format) or unet/ for full fine-tuning."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if has_lora(pl_module.model):
            save_lora(pl_module.model, self.run_dir / "lora")
        else:
            pl_module.model.unet.save_pretrained(self.run_dir / "unet")
