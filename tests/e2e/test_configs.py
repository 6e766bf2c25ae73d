"""Every config option and experiment preset composes and instantiates (or fails as it should)."""

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from alignlab.errors import WeightsNotFoundError
from alignlab.methods.base import RLMethod
from alignlab.run import CONF_DIR, build, build_model
from tests.hydra_app import compose_config

GROUPS = ["model", "sampler", "reward", "optimizer", "method", "prompts", "trainer", "logger"]
NEEDS_WEIGHTS = {("model", "sd14"), ("model", "sd15"), ("model", "sd21base"),  # not shipped: a download or a file
                 ("reward", "aesthetic"), ("reward", "hpsv2")}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\na dog\n")
    return path


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(group, option, tmp_path, offline, prompt_file):
    extra = [f"prompts.path={prompt_file}"] if (group, option) == ("prompts", "file") else []
    cfg = compose_config(tmp_path, [f"{group}={option}", *extra])
    node = cfg[group]
    build_node = (lambda: build_model(cfg, finetune=False)) if group == "model" else (lambda: instantiate(node))
    if group == "method":
        method, trainer = build(cfg, tmp_path)
        assert isinstance(method, RLMethod) and trainer.max_epochs == cfg.trainer.max_epochs
        return
    if (group, option) in NEEDS_WEIGHTS:  # offline without them: one sentence naming the key to set
        with pytest.raises(InstantiationException) as info:
            build_node()
        assert isinstance(info.value.__cause__, WeightsNotFoundError)
        assert f"{group}." in str(info.value.__cause__)
        return
    if (group, option) == ("trainer", "fsdp") and not torch.cuda.is_available():
        with pytest.raises(InstantiationException, match="gpu"):  # Lightning's FSDP needs CUDA (docs/scaling.md)
            instantiate(node)
        return
    obj = build_node()
    assert obj is not None


@pytest.mark.parametrize("preset", options("experiment"))
def test_experiment_presets_compose(preset, tmp_path, offline):
    cfg = compose_config(tmp_path, [f"experiment={preset}"])
    for group in ("sampler", "reward", "optimizer", "prompts"):
        assert instantiate(cfg[group]) is not None
    if cfg.model._target_.endswith("load_pretrained"):
        with pytest.raises(InstantiationException) as info:
            build_model(cfg, finetune=False)
        assert isinstance(info.value.__cause__, WeightsNotFoundError)


def test_ddpo_paper_preset_has_the_papers_settings(tmp_path):
    cfg = compose_config(tmp_path, ["experiment=ddpo_paper"])
    assert cfg.sampler.num_steps == 50 and cfg.sampler.eta == 1.0 and cfg.sampler.guidance_scale == 5.0
    assert cfg.method.clip_range == 1e-4 and cfg.method.adv_clip_max == 5.0
    assert cfg.method.sample_batch_size * cfg.method.num_batches_per_round == 256
    assert cfg.optimizer.lr == 3e-4 and cfg.finetune.rank == 4
    assert cfg.model.pretrained == "runwayml/stable-diffusion-v1-5"


@pytest.mark.parametrize("preset, objective, settings", [
    ("grpo_paper", "GRPO", {"clip_range": 1e-4, "advantage_limit": 5.0, "kl_weight": 0.04,
                            "group_advantages": "round_std"}),
    ("nft_paper", "DiffusionNFT", {"beta": 1.0, "advantage_limit": 5.0, "kl_weight": 1e-4,
                                   "group_advantages": "round_std"}),
    ("dpok_paper", "DPOK", {"clip_range": 1e-4, "reward_weight": 10.0, "kl_weight": 0.01}),
])
def test_objective_paper_presets_have_the_papers_settings(preset, objective, settings, tmp_path):
    cfg = compose_config(tmp_path, [f"experiment={preset}"])
    built = instantiate(cfg.method.objective)
    assert type(built).__name__ == objective and {k: getattr(built, k) for k in settings} == settings
    assert cfg.model.pretrained == "runwayml/stable-diffusion-v1-5"
    if preset != "dpok_paper":  # flow_grpo's and DiffusionNFT's GenEval rounds: 48 groups of 24, LoRA 32 / 64
        assert cfg.method.images_per_prompt == 24 and cfg.sampler.num_steps == 10
        assert cfg.method.sample_batch_size * cfg.method.num_batches_per_round == 48 * 24
        assert (cfg.finetune.rank, cfg.finetune.alpha, cfg.optimizer.lr) == (32, 64, 3e-4)
    else:
        assert (cfg.finetune.rank, cfg.optimizer.lr, cfg.sampler.guidance_scale) == (4, 1e-5, 7.5)


def test_schema_rejects_wrong_types_and_unknown_keys(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="sampler.num_steps"):
        compose_config(tmp_path, ["sampler.num_steps=many"])
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_config(tmp_path, ["method.no_such_key=1"])


@pytest.mark.parametrize("overrides, expected", [
    (["method=b2diffurl", "method.objective={_target_:alignlab.objectives.PPOClip,clip_range:0.2}"],
     ("PPOClip", "clip_range", 0.2)),
    (["method=dpo", "method.objective={_target_:alignlab.objectives.TrajectoryDPO,beta:0.2}"],
     ("TrajectoryDPO", "beta", 0.2)),
    (["method=dfusion", "method.algo=ddpo"], ("PPOClip", "clip_range", 1e-4)),
    (["method=b2diffurl", "method.algo=dpo"], ("TrajectoryDPO", "beta", 0.1)),
    (["method=dpo", "method.loss=diffusion_dpo"], ("DiffusionDPO", "beta_dpo", 2500.0)),
    (["method=ddpo", "method/objective=grpo", "method.images_per_prompt=8"], ("GRPO", "kl_weight", 0.04)),
    (["method=dfusion", "method.algo=ddpo", "method/objective=dpok"], ("DPOK", "reward_weight", 10.0)),
    (["method=b2diffurl", "method/objective=nft", "method.objective.beta=0.5"], ("DiffusionNFT", "beta", 0.5)),
    (["method=b2diffurl", "method/objective=trajectory_dpo"], ("TrajectoryDPO", "beta", 0.1)),
])
def test_the_objective_is_the_configs_own_or_method_objective(overrides, expected, tmp_path):
    """Each round builder trains with the objective its preset names, and `method.objective` replaces it with
    its own settings (docs/extending.md, "An objective")."""
    method, _ = build(compose_config(tmp_path, ["model=tiny", "reward=jpeg_compressibility", *overrides]), tmp_path)
    name, key, value = expected
    assert type(method.objective).__name__ == name and getattr(method.objective, key) == value


SCHEMAS = {"ddpo": "DDPOConfig", "dpo": "DPOConfig", "b2diffurl": "B2DiffuRLConfig", "dfusion": "DFusionConfig",
           "asyndm": "AsynDMConfig"}
BUILT = {"b2diffurl": "B2DiffuRL", "dfusion": "DFusion"}  # the class a factory target builds


@pytest.mark.parametrize("method", sorted(SCHEMAS))
def test_the_schema_is_the_one_source_of_defaults(method):
    """A method's constructor (with the factory and the classes it goes through) has the schema's defaults, and
    its preset lists only the keys whose values differ from them."""
    import dataclasses
    import inspect

    import yaml
    from hydra.utils import get_object

    import alignlab.config as schemas

    schema = getattr(schemas, SCHEMAS[method])
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(schema) if f.name != "_target_"}
    target = get_object(schema._target_)
    built = target if inspect.isclass(target) else get_object(f"alignlab.methods.{method}.{BUILT[method]}")
    callables = ([] if inspect.isclass(target) else [target]) + [
        c.__init__ for c in built.__mro__ if "__init__" in vars(c)]
    seen = {}
    for fn in callables:  # the first that names a key gives its default
        for key, parameter in inspect.signature(fn).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                default = parameter.default
                seen.setdefault(key, list(default) if isinstance(default, tuple) else default)
    assert {k: seen.get(k, "absent") for k in defaults} == defaults
    preset = yaml.safe_load((Path(CONF_DIR) / "method" / f"{method}.yaml").read_text())
    listed = preset["method"] if "method" in preset else {k: v for k, v in preset.items() if k != "defaults"}
    assert [key for key, value in listed.items() if defaults.get(key, object()) == value] == []


@pytest.mark.parametrize("overrides, message", [
    (["method=b2diffurl", "method.adv_clip_max=-1"], "method.adv_clip_max must be > 0, got -1.0"),
    (["method=b2diffurl", "method.algo=dpo", "method.clip_range=-1"], "method.clip_range must be > 0, got -1.0"),
    (["method=dfusion", "method.algo=ddpo", "method.max_grad_norm=0"], "method.max_grad_norm must be > 0, got 0.0"),
])
def test_a_round_builders_own_settings_are_checked_whichever_objective_trains(overrides, message, tmp_path):
    """B²-DiffuRL's z-score clip and PPO settings and every method's gradient-norm clip are refused when not
    positive, also where the objective is not the round builder's default one."""
    from alignlab.run import _root_cause

    with pytest.raises(Exception) as info:
        build(compose_config(tmp_path, ["model=tiny", "reward=jpeg_compressibility", *overrides]), tmp_path)
    assert str(_root_cause(info.value)) == message
