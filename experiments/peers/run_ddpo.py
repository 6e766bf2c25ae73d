"""alignlab's DDIMSampler vs ddpo-pytorch's pipeline_with_logprob on one random tiny UNet.

    python experiments/peers/run_ddpo.py --checkout PEERS/ddpo-pytorch [--batch 4 --steps 10 --repeats 5]

Their code is imported from the checkout at run time. Shim: ddpo-pytorch (diffusers 0.17) imports
`randn_tensor` from `diffusers.utils`; since diffusers 0.21 it lives in `diffusers.utils.torch_utils`.
"""

import sys

from peer_common import MEMORY_MODE, arguments, measure, report, single_thread

single_thread()

import torch  # noqa: E402

import alignlab  # noqa: E402,F401  (repairs torchvision next to CPU torch, needed by the pipeline import)
import diffusers  # noqa: E402
import diffusers.utils  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from alignlab.core.ddim import ddim_step  # noqa: E402
from alignlab.samplers.ddim import DDIMSampler  # noqa: E402
from alignlab.models import build_tiny  # noqa: E402


def load_peer(checkout: str):
    diffusers.utils.randn_tensor = randn_tensor  # the one shim
    sys.path.insert(0, checkout)
    from ddpo_pytorch.diffusers_patch.ddim_with_logprob import ddim_step_with_logprob
    from ddpo_pytorch.diffusers_patch.pipeline_with_logprob import pipeline_with_logprob
    return pipeline_with_logprob, ddim_step_with_logprob


def main():
    args = arguments(batch=4, repeats=5).parse_args()
    pipeline_with_logprob, ddim_step_with_logprob = load_peer(args.checkout)

    model = build_tiny()
    pipe = diffusers.StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=model.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    B, n, w = args.batch, args.steps, 5.0
    prompts = ["a cat eating a sandwich", "a dog playing basketball"] * (B // 2) + ["a cat"] * (B % 2)
    cond = model.encode_prompts(prompts)
    neg = model.encode_prompts([""])
    shape = model.latent_shape(B)
    ours_sampler = DDIMSampler(n, w, eta=1.0, progress=False)

    def ours(seed=1):
        return ours_sampler.sample(model.unet, model.scheduler, cond, neg, shape, torch.Generator().manual_seed(seed))

    def theirs(seed=1):
        _, _, latents, log_probs = pipeline_with_logprob(
            pipe, prompt_embeds=cond, negative_prompt_embeds=neg.expand(B, -1, -1), num_inference_steps=n,
            guidance_scale=w, eta=1.0, generator=torch.Generator().manual_seed(seed), output_type="latent")
        return torch.stack(latents, 1), torch.stack(log_probs, 1)

    if not MEMORY_MODE:  # numeric agreement (skipped in the memory child)
        # 1. same inputs, same noise: one step, one scalar timestep and per-sample timesteps (their training path)
        sched = model.scheduler
        sched.set_timesteps(n)
        g = torch.Generator().manual_seed(0)
        x, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        for t in (sched.timesteps[3], sched.timesteps[-1], sched.timesteps[torch.arange(B) % n]):
            prev_t, logp_t = ddim_step_with_logprob(sched, eps, t, x, eta=1.0,
                                                    generator=torch.Generator().manual_seed(7))
            z = torch.randn(shape, generator=torch.Generator().manual_seed(7))  # the noise their step draws
            step = ddim_step(sched, eps, t, t - 1000 // n, x, 1.0, noise=z)
            _, logp_rescore = ddim_step_with_logprob(sched, eps, t, x, eta=1.0, prev_sample=step.prev_sample)
            print(f"step t={t.tolist()}: max|prev diff| {(prev_t - step.prev_sample).abs().max():.2e}, "
                  f"max|logp diff| {(logp_t - step.log_prob).abs().max():.2e} (theirs re-scoring our sample: "
                  f"{(logp_rescore - step.log_prob).abs().max():.2e}), logp {step.log_prob[:2].tolist()}")

        # 2. whole rollout from the same seed (both draw initial and per-step noise from one CPU generator)
        traj = ours()
        lat, logp = theirs()
        print(f"rollout B={B} N={n} w={w}: max|latents diff| {(traj.latents - lat).abs().max():.2e} "
              f"(final {(traj.final - lat[:, -1]).abs().max():.2e}, |final| max {lat[:, -1].abs().max():.2f}), "
              f"max|logp diff| {(traj.log_probs - logp).abs().max():.2e}")

    # 3. time and memory, interleaved
    t, mem = measure({"ours": ours, "theirs": theirs}, args.repeats)
    report(f"DDPO rollout (tiny UNet, batch {B}, {n} steps, CFG {w}, {torch.get_num_threads()} thread)", t, mem)


if __name__ == "__main__":
    main()
