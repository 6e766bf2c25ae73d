"""Typed schemas for the config groups (Hydra ConfigStore): a wrong type or an unknown key fails at
composition with the key's full name, before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


@dataclass
class FinetuneConfig:
    mode: str = "lora"  # lora | full
    rank: int = 4
    alpha: Any = None  # float; None = rank (scale 1)
    init: Any = "gaussian"  # peft init_lora_weights: gaussian | true | ...
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class SamplerConfig:
    _target_: str = "alignlab.samplers.ddim.DDIMSampler"
    num_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 1.0
    progress: bool = True


@dataclass
class AsynSamplerConfig(SamplerConfig):
    _target_: str = "alignlab.samplers.asyn.AsynSampler"
    curve: str = "bin"  # bin | lin | exp: the concave schedule of item pixels
    mask_mode: str = "dynamic"  # dynamic (masks from the previous step) | static (from a DM pass first)
    mask_threshold: float = 1.0  # an item's pixels: attention >= threshold x the item's mean attention
    capture_downscale: Optional[int] = None  # masks from cross-attention at latent / N; None: nearest 16x16


@dataclass
class DDPOConfig:
    """DDPO (Black et al. 2023): PPO-clip over the denoising steps of fresh rollouts (docs/design.md)."""
    _target_: str = "alignlab.methods.ddpo.DDPO"
    sample_batch_size: int = 8  # images per rollout batch
    num_batches_per_round: int = 4  # rollout batches per round
    train_batch_size: int = 4  # samples per micro-batch of the update
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    num_inner_epochs: int = 1  # passes over the round's samples
    timestep_fraction: float = 1.0  # share of the trained steps each sample trains, drawn at random
    step_window: Optional[list[int]] = None  # [first, end): the DDIM steps trained (0: the noisiest); null: all
    early_share: Optional[float] = None  # or: train the first ceil(share x sampler.num_steps) steps only
    clip_range: float = 1e-4  # PPO's ratio clip
    adv_clip_max: float = 5.0  # advantages clipped to +-this in the loss
    max_grad_norm: float = 1.0
    train_cfg: bool = True  # re-score steps with the sampling guidance (false: the conditional prediction)
    per_prompt_stat_tracking: bool = True  # advantages: rewards normalised per prompt (false: over the round)
    stat_buffer_size: int = 16  # a prompt's last rewards its statistics use
    stat_min_count: int = 16  # ... once it has this many (before: the round's)
    log_images: int = 16  # samples in the round's grid
    # null: a random prompt per image (DDPO); N: the round's prompts drawn N images each (GRPO's groups)
    images_per_prompt: Optional[int] = None
    objective: Any = None  # {_target_: ...}: another objective for this round builder (docs/extending.md)


@dataclass
class DPOConfig:
    """DPO on self-generated pairs, best vs worst of each prompt's samples (D-Fusion's naive baseline)."""
    _target_: str = "alignlab.methods.dpo.DPO"
    prompts_per_round: int = 2
    samples_per_prompt: int = 4
    sample_batch_size: int = 8
    train_batch_size: int = 2  # pairs per micro-batch
    gradient_accumulation_steps: int = 1
    num_inner_epochs: int = 2
    timestep_fraction: float = 1.0
    loss: str = "trajectory"  # trajectory (per-step DPO vs the frozen reference) | diffusion_dpo (final latents)
    beta: float = 0.1  # trajectory DPO's temperature
    clip_eps: Any = 0.1  # float, or null for no log-ratio clip
    beta_dpo: float = 2500.0  # Diffusion-DPO's temperature
    max_grad_norm: float = 1.0
    train_cfg: bool = True
    log_images: int = 16
    objective: Any = None  # {_target_: ...}: another objective for this round builder (docs/extending.md)


@dataclass
class DFusionConfig(DPOConfig):
    """D-Fusion (Hu et al., ICML 2025): winners are bases fused with their reference's self-attention K/V under
    the reference's item mask; trained with trajectory DPO (algo=dpo) or joined to a DDPO round (algo=ddpo)."""
    _target_: str = "alignlab.methods.dfusion.dfusion"
    algo: str = "dpo"  # dpo | ddpo
    samples_per_prompt: int = 8  # a multiple of 4: the top quarter are references, the bottom half bases
    # fuse step i when the steps left after it, num_steps - i - 1, lie in [low, high): the official inject_t
    # (steps 2-19 of 20, all of 10)
    fuse_steps_left: list[int] = field(default_factory=lambda: [0, 18])
    fuse_blocks: list[str] = field(default_factory=lambda: ["mid", "up"])
    capture_downscale: Optional[int] = None  # masks from cross-attention at latent / N; None: nearest 16x16
    default_threshold: float = 0.015  # for items whose prompt set gives no threshold
    # algo=ddpo only: PPO-clip on per-prompt normalised rewards of samples + fused targets
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    per_prompt_stat_tracking: bool = True
    stat_buffer_size: int = 16
    stat_min_count: int = 16


@dataclass
class B2DiffuRLConfig:
    """B²-DiffuRL (Hu et al., CVPR 2025): branch sampling from shared prefixes, best/worst-sibling selection by
    per-prompt z-score, training on the branched tail only, the tail growing over the stages (one stage = one
    round). Defaults: the paper's (experiment=b2diffurl_paper has them all)."""
    _target_: str = "alignlab.methods.b2diffurl.b2diffurl"
    algo: str = "ddpo"  # ddpo (the paper) | dpo (kept best/worst siblings as trajectory-DPO pairs)
    beta: float = 0.1  # algo=dpo only: DPO temperature
    dpo_clip_eps: Optional[float] = 0.1  # algo=dpo only: per-side log-ratio clip
    sample_batch_size: int = 8  # prompts (branch families) per batch
    num_batches_per_round: int = 32
    num_branches: int = 5  # K siblings per prefix
    branch_chunk: int | None = None  # branch rows per UNet call; None: all of a batch's B·K rows at once
    # split_step = split_step_min + floor(stage · (max − min + 1) / num_stages), capped at split_step_max: the
    # number of final denoising steps branched and trained (<= sampler.num_steps)
    split_step_min: int = 14
    split_step_max: int = 20
    num_stages: int = 100
    history_cnt: int = 8  # earlier stages pooled into each prompt's z-score statistics
    pos_threshold: float = 0.5  # keep the best sibling when its z >= this
    neg_threshold: float = -0.5  # keep the worst sibling when its z < this
    beta1: float = 1.0  # weight of positive advantages
    beta2: float = 1.0  # weight of negative advantages
    train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    num_inner_epochs: int = 2
    clip_range: float = 0.1  # PPO clip
    adv_clip_max: float = 5.0  # the z-scores' clip (before the beta weights)
    max_grad_norm: float = 1.0
    train_cfg: bool = True
    log_images: int = 16  # rounded down to whole families in the sample grid
    objective: Any = None  # {_target_: ...}: another objective for this round builder (docs/extending.md)


@dataclass
class AsynDMConfig:
    """AsynDM (Hu et al. 2025, training-free): DM, DM_concave and AsynDM images of one prompt split from
    identical noise per image, scored by the reward; writes <run dir>/asyndm/."""
    _target_: str = "alignlab.methods.asyndm.AsynDM"
    split: str = "train"  # the prompt split to evaluate (AsynDM's prompt sets live in `train`)
    num_prompts: int | None = None  # the first n prompts of the split; None: all
    images_per_prompt: int = 1
    batch_size: int = 8
    mask_steps: int = 4  # steps shown in the timestep-map picture
    log_images: int = 16  # triplets in the image grid


@dataclass
class EvalConfig:
    """Held-out evaluation during training (alignlab/eval): fixed seeds, the same prompts every time."""
    every: int = 0  # 0: off; N: after every N-th round and after the last
    samples_per_prompt: int = 2
    max_prompts: int = 8  # the first n prompts of the split
    split: str = "test"  # test | train (an empty test split falls back to train)
    batch_size: int = 8
    hacking_window: int = 3  # reward-hacking alarm over this many evaluations (0: off)
    hacking_tolerance: float = 0.01  # the fall of the oracle score it needs


@dataclass
class CheckpointConfig:
    keep: int = 3  # round-NNNN.ckpt files kept besides last.ckpt (a corrupt newest one falls back to these)


@dataclass
class RootConfig:
    seed: int = 0
    resume: bool = True  # continue from <run dir>/checkpoints/last.ckpt when it exists
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    model: Any = None
    sampler: Any = None
    reward: Any = None
    optimizer: Any = None
    method: Any = None
    prompts: Any = None
    trainer: Any = None
    logger: Any = None


ROOT_KEYS = frozenset(RootConfig.__dataclass_fields__)

# Config targets that moved, old -> new: a run directory recorded before a move still evaluates and resumes.
MOVED_TARGETS = {
    "alignlab.core.sampling.DDIMSampler": "alignlab.samplers.ddim.DDIMSampler",
    "alignlab.core.asyn_sampling.AsynSampler": "alignlab.samplers.asyn.AsynSampler",
}


def upgrade_recorded(cfg):
    """A recorded run config (.hydra/config.yaml) with moved targets renamed (MOVED_TARGETS), in place."""
    for group in cfg.values():
        if isinstance(group, DictConfig) and group.get("_target_") in MOVED_TARGETS:
            group._target_ = MOVED_TARGETS[group._target_]
    return cfg


SD_CLIP = {"model_name": "ViT-H-14", "pretrained": "laion2b_s32b_b79k"}


def default_clip(model_target: str, key: str) -> str:
    """reward=clip's model follows the model: the `default_clip` its builder declares (the shapes world's:
    the world CLIP), OpenCLIP ViT-H-14 (LAION-2B) for Stable Diffusion and any builder that declares none."""
    from hydra.utils import get_object

    return getattr(get_object(model_target), "default_clip", SD_CLIP)[key]


OmegaConf.register_new_resolver("default_clip", default_clip, replace=True)


def public_groups() -> str:
    """`group: option, ...` lines of conf/'s config groups for --help (Hydra's own list also shows the
    schema/ groups, which only the presets use)."""
    from pathlib import Path

    conf = Path(__file__).resolve().parent.parent / "conf"
    groups = sorted(d for d in conf.rglob("*") if d.is_dir() and "hydra" not in d.relative_to(conf).parts)
    return "\n".join(f"{d.relative_to(conf).as_posix()}: {', '.join(sorted(f.stem for f in d.glob('*.yaml')))}"
                     for d in groups)


OmegaConf.register_new_resolver("alignlab_groups", public_groups, replace=True)


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    cs.store(group="schema/sampler", name="ddim", node=SamplerConfig)
    cs.store(group="schema/sampler", name="asyn", node=AsynSamplerConfig)
    cs.store(group="schema/method", name="ddpo", node=DDPOConfig)
    cs.store(group="schema/method", name="asyndm", node=AsynDMConfig)
    cs.store(group="schema/method", name="b2diffurl", node=B2DiffuRLConfig)
    cs.store(group="schema/method", name="dpo", node=DPOConfig)
    cs.store(group="schema/method", name="dfusion", node=DFusionConfig)
