"""B²-DiffuRL + DDPO: stage schedule, branch sampling, z-scores and selection, the update, end to end."""

import json
import math

import pytest
import torch

from alignlab.core.branching import branch_sample
from alignlab.samplers.ddim import DDIMSampler
from alignlab.core.stages import StageZScores, select_siblings, split_step
from alignlab.errors import ConfigError
from alignlab.methods.b2diffurl import B2DiffuRL
from alignlab.models import add_lora, trainable_parameters
from alignlab.prompts import PromptSet
from alignlab.run import train
from tests.hydra_app import comparable, compose_config, same_lora


# -- stage schedule -----------------------------------------------------------------------------
def test_paper_schedule_every_stage():
    # L + floor(i * 7 / 100) first reaches level k at stage ceil(100 k / 7): 15, 29, 43, 58, 72, 86
    first_stage = {14: 0, 15: 15, 16: 29, 17: 43, 18: 58, 19: 72, 20: 86}
    expected = [max(s for s, i in first_stage.items() if i <= stage) for stage in range(100)]
    assert expected[:15] == [14] * 15 and expected[15:29] == [15] * 14 and expected[86:] == [20] * 14
    assert [split_step(i, 14, 20, 100) for i in range(100)] == expected
    assert split_step(100, 14, 20, 100) == split_step(500, 14, 20, 100) == 20  # past S: stays at R


@pytest.mark.parametrize("low,high,stages,expected", [
    (1, 20, 100, [1 + i // 5 for i in range(100)]),  # the literal "start from the last step" curriculum
    (1, 4, 10, [1, 1, 1, 2, 2, 3, 3, 3, 4, 4]),  # floor(i * 4 / 10)
    (1, 1, 5, [1] * 5),
    (1, 20, 20, list(range(1, 21))),
])
def test_schedule_from_the_last_step(low, high, stages, expected):
    assert [split_step(i, low, high, stages) for i in range(stages)] == expected


@pytest.fixture
def method_factory(tiny_model):
    prompts = PromptSet(["a cat"])

    def make(num_steps=4, reward=None, **kwargs):
        sampler = DDIMSampler(num_steps=num_steps, progress=False)
        return B2DiffuRL(tiny_model, sampler, reward, torch.optim.SGD, prompts, **kwargs)

    return make


@pytest.mark.parametrize("kwargs,keys", [
    ({"split_step_min": 0, "split_step_max": 4}, "method.split_step_min and method.split_step_max"),
    ({"split_step_min": 3, "split_step_max": 2}, "method.split_step_min and method.split_step_max"),
    ({"split_step_min": 1, "split_step_max": 5}, "sampler.num_steps (4)"),
    ({"split_step_min": 1, "split_step_max": 4, "num_branches": 1}, "method.num_branches"),
    ({"split_step_min": 1, "split_step_max": 4, "num_stages": 0}, "method.num_stages"),
])
def test_invalid_schedule_is_one_sentence_naming_the_keys(method_factory, kwargs, keys):
    with pytest.raises(ConfigError) as info:
        method_factory(**kwargs)
    assert keys in str(info.value) and "\n" not in str(info.value)


# -- branch sampling ----------------------------------------------------------------------------
class UNetCalls:
    """Counts UNet calls and the sample rows they carry (a forward hook, not timing)."""

    def __init__(self, unet):
        self.rows: list[int] = []
        self.handle = unet.register_forward_hook(lambda module, args, out: self.rows.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("chunk", [None, 4])
def test_branches_share_the_prefix_and_are_batched(tiny_model, embeds, chunk):
    _, cond, neg = embeds
    n, split, b, k = 4, 2, 2, 3
    sampler = DDIMSampler(num_steps=n, progress=False)
    with UNetCalls(tiny_model.unet) as calls:
        traj, family = branch_sample(sampler, tiny_model.unet, tiny_model.scheduler, cond[:b], neg,
                                     tiny_model.latent_shape(b), torch.Generator().manual_seed(0), split, k, chunk)
    cfg = 2  # every call carries [uncond; cond]
    branch_calls = 1 if chunk is None else math.ceil(b * k / chunk)
    assert len(calls.rows) == (n - split) + split * branch_calls  # == n when branches are batched
    assert sum(calls.rows) == cfg * (b * (n - split) + k * b * split)
    assert calls.rows[: n - split] == [cfg * b] * (n - split)
    assert family.tolist() == [0, 0, 0, 1, 1, 1]
    assert traj.latents.shape[:2] == (b * k, n + 1) and traj.log_probs.shape == (b * k, n)
    branch_at = n - split
    for f in range(b):
        rows = traj.latents[family == f]
        for sibling in rows[1:]:
            assert torch.equal(sibling[: branch_at + 1], rows[0][: branch_at + 1])  # bit for bit, incl. branch point
            for j in range(branch_at + 1, n + 1):
                assert not torch.equal(sibling[j], rows[0][j])  # independent noise after it
        assert (traj.log_probs[family == f][:, :branch_at] == traj.log_probs[family == f][0, :branch_at]).all()
    # the joined trajectory is consistent: every stored step re-scores to its stored log-prob
    with torch.no_grad():
        for j in range(n):
            step = torch.full((b * k,), j)
            rescored = sampler.step_log_prob(tiny_model.unet, tiny_model.scheduler, traj, step, neg)
            torch.testing.assert_close(rescored, traj.log_probs[:, j], rtol=1e-4, atol=1e-4)


# -- z-scores and selection ---------------------------------------------------------------------
def test_stage_zscores_by_hand_with_history_trimming():
    tracker = StageZScores(history_cnt=2)
    z = tracker.update(["a", "a", "b", "b"], torch.tensor([1.0, 3.0, 10.0, 14.0]))
    torch.testing.assert_close(z, torch.tensor([-1, 1, -1, 1]) / math.sqrt(2))  # unbiased std: sqrt(2), sqrt(8)
    s = math.sqrt(20 / 3)  # unbiased std of [1, 3, 5, 7] (and of any 4 values mean +-1, +-3)
    z = tracker.update(["a", "a"], torch.tensor([5.0, 7.0]))  # pooled with stage 1: [1, 3, 5, 7], mean 4
    torch.testing.assert_close(z, torch.tensor([1 / s, 3 / s]))
    z = tracker.update(["b", "b"], torch.tensor([12.0, 16.0]))  # [10, 14, 12, 16], mean 13
    torch.testing.assert_close(z, torch.tensor([-1 / s, 3 / s]))
    assert len(tracker.history) == 2  # stage 1 is gone now
    restored = StageZScores(history_cnt=2)
    restored.load_state_dict(tracker.state_dict())
    for t in (tracker, restored):  # 'a' pools stage 2 [5, 7] with [9, 11] (not stage 1's [1, 3]): mean 8
        torch.testing.assert_close(t.update(["a", "a"], torch.tensor([9.0, 11.0])), torch.tensor([1 / s, 3 / s]))


def test_stage_zscores_without_history_and_equal_rewards():
    tracker = StageZScores(history_cnt=0)
    tracker.update(["a", "a"], torch.tensor([0.0, 100.0]))
    torch.testing.assert_close(tracker.update(["a", "a"], torch.tensor([1.0, 3.0])),
                               torch.tensor([-1, 1]) / math.sqrt(2))
    assert tracker.update(["a", "a"], torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0]  # std 0 + 1e-8


def test_select_siblings_by_hand():
    z = torch.tensor([
        [0.6, -0.2, 0.1],  # best passes: row 0
        [0.4, -0.6, 0.2],  # worst passes: row 4
        [0.3, 0.2, 0.1],  # nothing
        [1.0, -1.0, 0.0],  # both: rows 9, 10
        [0.5, -0.5, 0.0],  # z >= 0.5 keeps row 12; z = -0.5 is not < -0.5
    ])
    rows, is_best = select_siblings(z, 0.5, -0.5)
    assert rows.tolist() == [0, 4, 9, 10, 12]
    assert is_best.tolist() == [True, False, True, False, True]


class ScriptedReward:
    """Returns the given rewards in order, whatever the images."""

    def __init__(self, rewards):
        self.rewards = torch.tensor(rewards)

    def __call__(self, images, prompts):
        return self.rewards[: len(images)]


def test_round_keeps_best_and_worst_with_weighted_clipped_advantages(method_factory):
    # one prompt, 2 families x 3 siblings: rewards [1, 2, 9 | 4, 4, 4], mean 4, unbiased std sqrt(38 / 5)
    method = method_factory(reward=ScriptedReward([1.0, 2.0, 9.0, 4.0, 4.0, 4.0]), split_step_min=1,
                            split_step_max=4, num_stages=2, num_branches=3, sample_batch_size=2,
                            num_batches_per_round=1, beta1=2.0, beta2=0.5, adv_clip_max=1.5)
    batches = method.start_round()
    std = math.sqrt(38 / 5)
    # family 0: best z = 5/std = 1.81 -> clipped 1.5, x beta1 2; worst z = -3/std x beta2 0.5; family 1: all z = 0
    torch.testing.assert_close(method.buffer["advantages"], torch.tensor([-3 / std * 0.5, 1.5 * 2.0]))
    assert method.buffer["traj"].latents.shape[0] == 2
    assert method.stats["kept_positive"] == [1.0] and method.stats["kept_negative"] == [1.0]
    assert method.stats["split_step"] == [1.0] and method.stats["samples_per_round"] == [6.0]
    # only the branched interval [N - split_step, N) = [3, 4) is trained, twice (2 inner epochs)
    assert len(batches) == method.round_length() == 2 < method.micro_batches_per_round()
    assert all(b["steps"].tolist() == [[3], [3]] for b in batches)


def test_the_beta_weighted_advantage_reaches_the_loss_unclipped(method_factory):
    """As the official trainer: z is clipped, then weighted by beta, and the PPO loss does not clip again
    (DDPO's clips there): at ratio 1 the loss is -mean(clip(z) * beta), here with 1.5 * 2 = 3 > adv_clip_max."""
    from alignlab.objectives.ppo_clip import ppo_clip_loss

    method = method_factory(reward=ScriptedReward([1.0, 2.0, 9.0, 4.0, 4.0, 4.0]), split_step_min=1,
                            split_step_max=4, num_stages=2, num_branches=3, sample_batch_size=2,
                            num_batches_per_round=1, beta1=2.0, beta2=0.5, adv_clip_max=1.5)
    method.start_round()
    advantages = method.buffer["advantages"]
    zeros = torch.zeros(len(advantages))
    loss = ppo_clip_loss(zeros, zeros, advantages, method.objective.clip_range, method.objective.advantage_limit).loss
    assert loss.item() == pytest.approx(-advantages.mean().item()) and advantages.max().item() == pytest.approx(3.0)


@pytest.mark.parametrize("accumulate,rounds,steps", [(4, [6, 6], [3, 5, 9, 11]), (2, [3, 4], [1, 2, 4, 6]),
                                                     (1, [2], [0, 1])])
def test_accumulation_windows_restart_every_round_and_a_partial_one_steps(accumulate, rounds, steps):
    """Optimizer steps (as indices over all micro-batches of the rounds) fall every `accumulate` micro-batches
    of a round and at its end; the next round's windows start afresh."""
    from types import SimpleNamespace

    from alignlab.methods.base import RLMethod

    stepped, seen = [], [0]
    for length in rounds:
        method = SimpleNamespace(grad_accum=accumulate, idle_batches=0, round_length=lambda n=length: n,
                                 optimizer_step=lambda: stepped.append(seen[0]))
        for batch_idx in range(length):
            RLMethod.after_micro_batch(method, batch_idx)
            seen[0] += 1
    assert stepped == steps


def test_round_without_survivors_trains_nothing(method_factory):
    method = method_factory(reward=ScriptedReward([4.0] * 6), split_step_min=1, split_step_max=4,
                            num_branches=3, sample_batch_size=2, num_batches_per_round=1)
    assert method.start_round() == [] and method.round_length() == 0
    assert method.micro_batches_per_round() == 2 * 2  # the bound: both siblings of 2 families, 2 epochs
    assert method.stats["kept_positive"] == [0.0] and "reward_mean" in method.stats


# -- the update ---------------------------------------------------------------------------------
def test_update_touches_only_branched_steps_and_zero_advantages_change_nothing(fresh_tiny, monkeypatch):
    add_lora(fresh_tiny, rank=4)
    sampler = DDIMSampler(num_steps=5, progress=False)
    reward = ScriptedReward([0.0, 1.0, 5.0, 2.0, 2.0, 2.1, 9.0, 1.0, 0.0])
    method = B2DiffuRL(fresh_tiny, sampler, reward, torch.optim.SGD, PromptSet(["a cat"]), split_step_min=2,
                       split_step_max=5, num_stages=10, num_branches=3, sample_batch_size=3,
                       num_batches_per_round=1)
    batches = method.start_round()
    assert batches and method.split_step == 2
    trained_steps, grads = [], []
    rescore = sampler.rescore

    def spy(unet, scheduler, traj, step, *args):
        trained_steps.extend(step.tolist())
        return rescore(unet, scheduler, traj, step, *args)

    monkeypatch.setattr(sampler, "rescore", spy)
    monkeypatch.setattr(method, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(method, "optimizer_step", lambda: grads.append(
        [p.grad.clone() for p in trainable_parameters(fresh_tiny)]))

    def grad_norm(advantages):
        method.buffer["advantages"] = advantages
        trained_steps.clear(), grads.clear()
        for p in trainable_parameters(fresh_tiny):
            p.grad = None
        for i, batch in enumerate(batches[:1]):
            method.training_step(batch, i)
        assert sorted(set(trained_steps)) == [3, 4]  # [N - split_step, N) only
        return sum(g.abs().sum() for g in grads[-1]).item()

    assert grad_norm(torch.zeros_like(method.buffer["advantages"])) == 0.0
    assert grad_norm(torch.ones_like(method.buffer["advantages"])) > 0.0  # so the zero above means something


# -- end to end ---------------------------------------------------------------------------------
E2E = [
    "method=b2diffurl",
    "sampler.num_steps=4",
    "sampler.progress=false",
    "method.sample_batch_size=2",
    "method.num_batches_per_round=1",
    "method.num_branches=3",
    "method.split_step_min=1",
    "method.split_step_max=4",
    "method.num_stages=2",  # stage 0 -> 1 step, stage 1 -> 1 + floor(1 * 4 / 2) = 3 steps
    "method.log_images=6",
    "method.gradient_accumulation_steps=4",  # > a round's micro-batches: only the round-end step updates
    "prompts=simple",
    "prompts.train=['a cat']",  # every stage's z-scores pool the previous stage: resume needs the history
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def run(run_dir, *overrides):
    train(compose_config(run_dir, [*E2E, *overrides]))
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_stages_write_the_contract_and_equal_one_stage_resume_one_stage(tmp_path):
    straight = run(tmp_path / "a", "trainer.max_epochs=2")
    assert [r["round"] for r in straight] == [0, 1] and [r["split_step"] for r in straight] == [1.0, 3.0]
    for row in straight:
        for key in ("reward_mean", "reward_std", "kept_positive", "kept_negative", "samples_per_round"):
            assert key in row and row[key] == row[key], key
        assert row["samples_per_round"] == 6.0
        assert row["kept_positive"] + row["kept_negative"] > 0  # this seed keeps siblings in both stages
        assert all(key in row for key in ("loss", "approx_kl", "clipfrac", "grad_norm"))
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    assert len(ckpt["zscore_history"]["history"]) == 2 and all("lora_" in k for k in ckpt["state_dict"])
    from PIL import Image

    grid = Image.open(tmp_path / "a" / "samples" / "round_0001.png")
    assert grid.width == 3 * 128  # one row per family, K = 3 siblings side by side

    run(tmp_path / "b", "trainer.max_epochs=1")
    resumed = run(tmp_path / "b", "trainer.max_epochs=2")
    assert comparable(straight) == comparable(resumed)
    assert same_lora(tmp_path / "a", tmp_path / "b")


def test_stage_without_survivors_still_logs(tmp_path):
    rows = run(tmp_path, "trainer.max_epochs=1", "method.pos_threshold=100", "method.neg_threshold=-100")
    assert len(rows) == 1 and rows[0]["kept_positive"] == rows[0]["kept_negative"] == 0
    assert "loss" not in rows[0] and (tmp_path / "checkpoints" / "last.ckpt").is_file()


# -- presets and prompt sets --------------------------------------------------------------------
def test_paper_preset(tmp_path):
    cfg = compose_config(tmp_path, ["experiment=b2diffurl_paper"])
    m = cfg.method
    assert cfg.model.pretrained == "CompVis/stable-diffusion-v1-4" and cfg.model.resolution == 512
    assert cfg.sampler.num_steps == 20 and cfg.sampler.eta == 1.0 and cfg.sampler.guidance_scale == 5.0
    assert (m.sample_batch_size, m.num_batches_per_round, m.num_branches) == (8, 32, 5)
    assert (m.split_step_min, m.split_step_max, m.num_stages, cfg.trainer.max_epochs) == (14, 20, 100, 100)
    assert (m.history_cnt, m.pos_threshold, m.neg_threshold, m.beta1, m.beta2) == (8, 0.5, -0.5, 1.0, 1.0)
    assert (m.clip_range, m.adv_clip_max, m.train_batch_size, m.num_inner_epochs) == (0.1, 5.0, 2, 2)
    assert cfg.optimizer.lr == 1e-4 and cfg.finetune.rank == 4
    assert (cfg.reward.model_name, cfg.reward.pretrained) == ("ViT-H-14", "laion2b_s32b_b79k")
    assert cfg.prompts.name == "b2_t1"


@pytest.mark.parametrize("name,sizes", [("b2_t1", (45, 90)), ("b2_t2", (40, 40)), ("b2_t3", (40, 30))])
def test_prompt_sets(tmp_path, name, sizes):
    from hydra.utils import instantiate

    prompts = instantiate(compose_config(tmp_path, [f"prompts={name}"]).prompts)
    assert (len(set(prompts.train)), len(set(prompts.test))) == (len(prompts.train), len(prompts.test)) == sizes
    assert not set(prompts.train) & set(prompts.test)


def test_template_1_gives_each_animal_one_activity_to_train_and_the_other_two_to_test(tmp_path):
    from hydra.utils import instantiate

    prompts = instantiate(compose_config(tmp_path, ["prompts=b2_t1"]).prompts)
    activities = {"washing dishes", "riding a bike", "playing chess"}  # the official files' words

    def split(prompt):  # "a cat riding a bike" -> ("cat", "riding a bike")
        activity = next(a for a in activities if prompt.endswith(a))
        return prompt[: -len(activity)].split()[-1], activity

    train = dict(split(p) for p in prompts.train)
    assert len(train) == 45
    for animal, activity in train.items():
        assert {a for x, a in map(split, prompts.test) if x == animal} == activities - {activity}


def test_branches_with_the_asynchronous_sampler(tiny_model):
    """sampler=asyn: the per-pixel timestep state is copied into the branches with the latents, so
    siblings share the prefix (latents and timestep maps) and every stored step re-scores exactly."""
    from alignlab.samplers.asyn import AsynSampler
    from alignlab.core.token_spans import Item, ItemBatch

    prompts = ["a red circle", "a blue square"]
    cond, neg = tiny_model.encode_prompts(prompts), tiny_model.encode_prompts([""])
    items = ItemBatch.build(tiny_model.tokenizer, prompts, [[Item("circle", k=0.5)], [Item("square", k=0.7)]])
    sampler = AsynSampler(num_steps=4, progress=False)
    n, split, k = 4, 2, 3
    traj, family = branch_sample(sampler, tiny_model.unet, tiny_model.scheduler, cond, neg,
                                 tiny_model.latent_shape(2), torch.Generator().manual_seed(0), split, k, None, items)
    assert traj.timesteps.shape == (2 * k, n, 16, 16)
    for f in range(2):
        rows = family == f
        assert (traj.latents[rows][:, : n - split + 1] == traj.latents[rows][0, : n - split + 1]).all()
        assert (traj.timesteps[rows][:, : n - split] == traj.timesteps[rows][0, : n - split]).all()
    with torch.no_grad():
        for j in range(n):
            step = torch.full((2 * k,), j)
            rescored = sampler.step_log_prob(tiny_model.unet, tiny_model.scheduler, traj, step, neg)
            torch.testing.assert_close(rescored, traj.log_probs[:, j], rtol=1e-4, atol=1e-4)


def test_b2diffurl_with_the_asynchronous_sampler_end_to_end(tmp_path):
    overrides = [o for o in E2E if not o.startswith("prompts.")]
    train(compose_config(tmp_path, [*overrides, "trainer.max_epochs=1", "sampler=asyn", "prompts=asyn_animals"]))
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["samples_per_round"] == 6.0 and row["split_step"] == 1.0


def test_b2diffurl_with_dpo_pairs_siblings(tmp_path):
    """algo=dpo: each family whose best and worst siblings pass the thresholds is one preference pair;
    the first round starts at policy == reference, so its DPO loss is log 2."""
    overrides = [o for o in E2E if not o.startswith("method.gradient_accumulation_steps")]
    train(compose_config(tmp_path, [*overrides, "trainer.max_epochs=2", "method.algo=dpo",
                                    "method.pos_threshold=-10", "method.neg_threshold=10"]))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["pairs"] for r in rows] == [2.0, 2.0]  # 2 families; these thresholds let every family pair
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert rows[0]["reward_winner"] > rows[0]["reward_loser"]
    for key in ("dpo_accuracy", "dpo_margin", "grad_norm", "split_step"):
        assert key in rows[1], key


def test_b2diffurl_rejects_an_unknown_algo(tmp_path):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException) as info:
        train(compose_config(tmp_path, [*E2E, "method.algo=sac"]))
    assert "method.algo" in str(info.value.__cause__)
