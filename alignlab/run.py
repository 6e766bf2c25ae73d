"""The entry point: `python -m alignlab.run [group=option ...] [key=value ...]` (Hydra; -m for sweeps).

Composes conf/, builds model, sampler, reward, optimizer, prompts and method, and runs the method's
rounds with a Lightning Trainer that writes the run directory (docs/design.md).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import alignlab  # noqa: F401  (repairs the torchvision import before anything imports it)
from alignlab.config import ROOT_KEYS, register_schemas, upgrade_recorded
from alignlab.errors import AlignlabError, ConfigError, require_at_least_one
from alignlab.training.console import quiet_libraries
from alignlab.training.run_directory import RunLock, check_foreign, check_fresh_start

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("alignlab")
register_schemas()


def build_model(cfg: DictConfig, finetune: bool = True):
    """The configured model with its fine-tuning set up (LoRA added, or the UNet unfrozen);
    `finetune=False`: the base model as configured."""
    import torch

    from alignlab.models import add_lora
    from alignlab.models.speed import configure_speed

    spec = OmegaConf.to_container(cfg.model, resolve=True)
    speed = {key: spec.pop(key) for key in ("gradient_checkpointing", "compile") if key in spec}
    model = instantiate(spec)
    if finetune:
        tune = cfg.finetune
        if tune.mode == "lora":
            add_lora(model, tune.rank, tune.alpha, tune.init, list(tune.target_modules))
        elif tune.mode == "full":
            if model.frozen_dtype == torch.float16:  # 16-mixed's gradient scaler refuses float16 gradients
                raise ConfigError("finetune.mode=full trains the UNet's own weights, which model.dtype=float16 makes "
                                  "float16: use model.dtype=bfloat16 or float32, or finetune.mode=lora")
            model.unet.requires_grad_(True)
        else:
            raise ConfigError(f"finetune.mode must be lora or full, got {tune.mode!r}")
    configure_speed(model.unet, **speed)  # after LoRA: compile the adapted UNet
    return model


def build_optimizer(cfg: DictConfig, model):
    """The optimizer factory, tried once on the trainable parameters: torch checks its settings only when
    an optimizer is made, which Lightning does after the run directory is in use."""
    from alignlab.models import trainable_parameters

    factory = instantiate(cfg.optimizer)
    try:
        factory(trainable_parameters(model))
    except ValueError as error:
        raise ConfigError(f"optimizer: {error} (optimizer.lr, eps and weight_decay must be >= 0, "
                          "betas in [0, 1))") from None
    return factory


def non_finite(node, prefix: str = "") -> tuple[str, float] | None:
    """The first setting whose value is a NaN or infinite number, with that value (None: there is none)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{prefix}{key}" if isinstance(key, str) else f"{prefix.rstrip('.')}[{key}]"
        if isinstance(value, float) and not math.isfinite(value):
            return name, value
        found = non_finite(value, f"{name}.")
        if found:
            return found
    return None


def check_values(cfg: DictConfig) -> None:
    """Settings no component checks on its own: every number finite, the seed in numpy's range, a LoRA rank,
    at least one round, no top-level key the schema lacks (`+key=...` adds one). (Each component checks its
    own ranges when it is built.)"""
    unknown = [key for key in cfg if key != "hydra" and key not in ROOT_KEYS]
    if unknown:
        raise ConfigError(f"{unknown[0]} is not an alignlab setting (a typo?); the top-level settings are "
                          f"{', '.join(sorted(ROOT_KEYS))}")
    found = non_finite(OmegaConf.to_container(cfg, resolve=True))
    if found:
        raise ConfigError(f"{found[0]} must be a finite number, got {found[1]}")
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32), got {cfg.seed}")
    if cfg.finetune.mode == "lora":
        require_at_least_one("finetune", rank=cfg.finetune.rank)
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs (the number of rounds) must be >= 1, got {max_epochs}")


def build(cfg: DictConfig, run_dir: Path):
    """Instantiate every component; all validation happens here, before anything is written."""
    import lightning as L

    from alignlab.eval.held_out import HeldOutEvaluation
    from alignlab.rewards import preload
    from alignlab.training.callbacks import ExportWeights, RoundRecorder
    from alignlab.training.checkpoints import AtomicCheckpointIO, RoundCheckpoints
    from alignlab.training.console import RoundProgress

    check_values(cfg)
    parts = {key: instantiate(cfg[key]) for key in ("sampler", "reward", "prompts")}  # checked before the model loads
    L.seed_everything(cfg.seed, verbose=False)  # LoRA init; rollouts use their own per-round generators
    model = build_model(cfg)
    method = instantiate(cfg.method, model=model, optimizer=build_optimizer(cfg, model), seed=cfg.seed, **parts)
    method.evaluation = HeldOutEvaluation(run_dir, **cfg.eval)
    callbacks = [
        RoundRecorder(run_dir),
        *([RoundProgress()] if cfg.trainer.get("enable_progress_bar", True) else []),  # shows RoundRecorder's row
        ExportWeights(run_dir),
        RoundCheckpoints(run_dir, cfg.checkpoint.keep),
    ]
    trainer = instantiate(cfg.trainer, default_root_dir=str(run_dir), logger=instantiate(cfg.logger),
                          callbacks=callbacks, plugins=[AtomicCheckpointIO()])
    check_precision(model, trainer.precision, configured=cfg.trainer.get("precision"))
    preload(parts["reward"], trainer.strategy.root_device)  # missing reward weights stop the run here
    return method, trainer


def log_settings(trainer, cfg: DictConfig) -> None:
    """The resolved config as flat keys in W&B, so runs can be filtered, grouped and compared by any setting."""
    from lightning.pytorch.loggers import WandbLogger

    from alignlab.training.wandb_run import flat_config

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.log_hyperparams(flat_config(cfg))


def finish_wandb(trainer) -> None:
    """Close this run's W&B run, so that the next job of a sweep run in the same process gets its own (W&B
    would hand it this one) and an offline run's file is complete when the job returns."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def check_precision(model, precision: str, configured=None) -> None:
    """Rollouts run under the autocast of the frozen weights' dtype (DiffusionModel.autocast), updates under
    Lightning's precision: they must agree, or the policy that is trained is not the one that sampled (the
    PPO ratio starts away from 1). fp16 also needs 16-mixed's gradient scaler. `configured` is the precision
    asked for: Lightning replaces 16-mixed by bf16-mixed on a CPU, which deserves its own sentence."""
    import torch

    matching = {torch.float16: "16-mixed", torch.bfloat16: "bf16-mixed"}
    wanted = matching.get(model.frozen_dtype, "32-true")
    if precision != wanted and (precision in matching.values() or wanted in matching.values()):
        dtype = str(model.frozen_dtype).removeprefix("torch.")
        if wanted == "16-mixed" and str(configured) in ("16", "16-mixed"):
            raise ConfigError(f"model.dtype=float16 needs a GPU: Lightning runs trainer.precision=16-mixed as "
                              f"{precision} on this device; use model.dtype=bfloat16 trainer.precision=bf16-mixed")
        raise ConfigError(f"model.dtype={dtype} needs trainer.precision={wanted}, got {precision}")


def train(cfg: DictConfig) -> float:
    """Run (or resume) the configured method; returns the last round's held-out reward when evaluation
    ran (`eval/reward_mean`), else its train reward — the value a Hydra sweeper optimises."""
    from lightning.pytorch.utilities import rank_zero_only

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    owner = rank_zero_only.rank == 0  # data-parallel ranks > 0 run in the directory rank 0 holds
    if owner:
        check_foreign(run_dir)
        if not cfg.resume:
            check_fresh_start(run_dir)
        log.info("run directory: %s", run_dir)
    method, trainer = build(cfg, run_dir)
    if owner and trainer.world_size > 1:
        log.info("data parallel: %d processes", trainer.world_size)
    with RunLock(run_dir) if owner else nullcontext():
        try:
            log_settings(trainer, cfg)  # starts the W&B run: only once the run is known to go ahead
            result = run_method(cfg, run_dir, method, trainer)
        finally:
            finish_wandb(trainer)
    if owner:
        log.info("done: %s holds metrics.jsonl, plots/alignment.png, samples/ and the weights", run_dir)
    return result


def run_method(cfg: DictConfig, run_dir: Path, method, trainer) -> float:
    from alignlab.training.checkpoints import resume_checkpoint

    if method.evaluation_only:  # e.g. method=asyndm: nothing to train or resume
        record_config(cfg, run_dir)
        trainer.test(method)
        return float(trainer.callback_metrics.get("reward_mean", float("nan")))
    checkpoint = resume_checkpoint(run_dir / "checkpoints") if cfg.resume else None
    if checkpoint:
        checkpoint.check_fits(method)
        if 0 <= trainer.max_epochs <= checkpoint.rounds:  # Lightning would sample a whole round before stopping
            log.info("%s has done %d rounds (trainer.max_epochs=%d): nothing to run", run_dir, checkpoint.rounds,
                     trainer.max_epochs)
            return final_reward(run_dir)
        log.info("resuming from %s", checkpoint.path)
        changed = changed_since_recorded(cfg, run_dir)
        if changed:
            log.warning("resuming with another %s than %s was run with (.hydra/config.yaml now records this run's)",
                        ", ".join(changed), run_dir)
    record_config(cfg, run_dir)
    trainer.fit(method, ckpt_path=checkpoint.path if checkpoint else None, weights_only=True)
    return final_reward(run_dir)


def record_config(cfg: DictConfig, run_dir: Path) -> None:
    """<run_dir>/.hydra/{config,overrides,hydra}.yaml, as Hydra would write them (conf/config.yaml sets
    hydra.output_subdir to null so that it does not): written once the run is known to start, so a rejected
    rerun in a run directory leaves the config of the run recorded there."""
    from alignlab.training.atomic import replace_atomically

    hydra_cfg = HydraConfig.get()
    files = {"config.yaml": OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]),
             "overrides.yaml": OmegaConf.create(list(hydra_cfg.overrides.task)),
             "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg})}
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        replace_atomically(run_dir / ".hydra" / name, lambda tmp, content=content: OmegaConf.save(content, tmp))


LEARNING_SETTINGS = ("method", "model", "finetune", "reward", "sampler", "prompts", "optimizer", "seed")


def changed_since_recorded(cfg: DictConfig, run_dir: Path) -> list[str]:
    """The settings that shape what a run learns which differ from those recorded for it: resuming with them
    may be meant (a curriculum), or a wrong hydra.run.dir."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return []
    recorded = OmegaConf.to_container(upgrade_recorded(OmegaConf.load(path)), resolve=False)
    current = OmegaConf.to_container(cfg, resolve=False)
    return [key for key in LEARNING_SETTINGS if recorded.get(key) != current.get(key)]


def final_reward(run_dir: Path) -> float:
    from alignlab.training.artifacts import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    last = rows[-1] if rows else {}
    return float(last.get("eval/reward_mean", last.get("reward_mean", float("nan"))))


def one_line(message: str) -> str:
    """Hydra's multi-line composition messages as one line (search paths and types left out)."""
    keep = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if line and not line.startswith(("object_type", "reference_type", "provider=")):
            keep.append(line.rstrip(":") + (":" if line.endswith(":") else ""))
    return " ".join(keep).replace(": ", ": ", 1)


def say_error(message: str) -> None:
    print(f"alignlab: error: {message}", file=sys.stderr)


def check_composition(argv: list[str]) -> None:
    """Compose a single run's config before Hydra does, so a bad override or an unwritable run directory
    gets one line and exit 2.

    Sweeps (-m) and Hydra's own flags are left to Hydra."""
    if any(arg.startswith("-") for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=argv, return_hydra_config=True)
    except HydraException as error:
        details = [str(error)] + ([str(error.__cause__)] if error.__cause__ else [])
        say_error(one_line(chr(10).join(details)))
        sys.exit(2)
    problem = unwritable(Path(cfg.hydra.run.dir))
    if problem:
        say_error(f"hydra.run.dir={cfg.hydra.run.dir} is not writable ({problem}); pick a directory you can write to")
        sys.exit(2)
    try:  # before Hydra writes its log there
        check_foreign(Path(cfg.hydra.run.dir))
    except AlignlabError as error:
        say_error(str(error))
        sys.exit(2)


def unwritable(run_dir: Path) -> str | None:
    """Why files cannot be made in `run_dir` or, before it exists, in its nearest existing parent (None: they can).
    A file is tried, not the permission bits: root passes those and still cannot write to /proc."""
    folder = run_dir.absolute()
    while not folder.exists():
        folder = folder.parent
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        return f"{folder}: {error.strerror}"
    return None


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None and not isinstance(error, AlignlabError):
        error = error.__cause__
    return error


def error_message(error: BaseException) -> str:
    """An AlignlabError's sentence; a library's error in instantiating a component, with the component's key
    (Hydra's `full_key:` line); else the first line."""
    cause = _root_cause(error)
    if isinstance(cause, AlignlabError):
        return str(cause)
    key = re.search(r"^full_key: (\S+)$", str(error), re.MULTILINE)
    if isinstance(error, InstantiationException) and key and cause is not error:
        return f"{key.group(1)}: {' '.join(str(cause).split())}"
    return str(error).splitlines()[0]


BAD_INPUT = (AlignlabError, InstantiationException, OmegaConfBaseException)  # what gets one sentence, exit 2


def reported_error(error: BaseException) -> BaseException | None:
    """The bad input behind `error`, which is either it or one it was raised while handling: an error in the
    first round's rollout makes Lightning's clean-up fail in turn (`Please call iter(combined_loader) first`),
    which would hide it. None: not bad input (a bug keeps its traceback)."""
    while error is not None:
        if isinstance(error, BAD_INPUT):
            return error
        error = None if error.__suppress_context__ else error.__context__
    return None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    quiet_libraries()
    try:
        return train(cfg)
    except Exception as raised:
        error = reported_error(raised)
        if error is None:
            raise
        say_error(error_message(error))
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # Hydra marks this job failed, shows the bad input's message and runs the sweep's other jobs (SystemExit
            # would end the sweep)
            raise error from None
        sys.exit(2)


if __name__ == "__main__":
    check_composition(sys.argv[1:])
    main()
