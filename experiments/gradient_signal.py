"""How much signal is in a policy gradient? Cosine similarity between DDPO gradients (LoRA parameters)
estimated from independent rollout batches of one prompt, over all denoising steps and over the first and
last steps separately. Near-zero cosines mean the estimate is mostly noise at that batch size.

    python experiments/gradient_signal.py [--reward clip] [--images 64] [--batches 4]
"""

from __future__ import annotations

import argparse

import torch

import alignlab  # noqa: F401  (before open_clip / diffusers)
from alignlab.core.advantages import batch_zscore
from alignlab.models import trainable_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", default="clip")
    parser.add_argument("--prompt", default="a red circle to the left of a blue square")
    parser.add_argument("--images", type=int, default=64, help="rollouts per gradient estimate")
    parser.add_argument("--batches", type=int, default=4, help="independent estimates compared pairwise")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from alignlab.run import CONF_DIR, build_model

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"reward={args.reward}", "sampler.progress=false"])
    torch.manual_seed(cfg.seed)
    model, sampler, reward = build_model(cfg), instantiate(cfg.sampler), instantiate(cfg.reward)
    params, negative = trainable_parameters(model), model.encode_prompts([""])
    prompts = [args.prompt] * args.images

    def gradient(seed: int, steps: range) -> torch.Tensor:
        embeds = model.encode_prompts(prompts)
        with torch.no_grad():
            traj = sampler.sample(model.unet, model.scheduler, embeds, negative, model.latent_shape(len(prompts)),
                                  torch.Generator().manual_seed(seed))
            advantages = batch_zscore(reward(model.decode(traj.final), prompts).float())
        for p in params:
            p.grad = None
        for step in steps:
            log_prob = sampler.step_log_prob(model.unet, model.scheduler, traj, torch.full((len(prompts),), step),
                                             negative)
            (-(advantages * log_prob).mean()).backward()
        return torch.cat([p.grad.flatten() for p in params])

    n = sampler.num_steps
    for name, steps in [("all steps", range(n)), ("first 40%", range(0, 2 * n // 5)),
                        ("last 40%", range(n - 2 * n // 5, n))]:
        grads = [gradient(seed, steps) for seed in range(args.batches)]
        cosines = [torch.nn.functional.cosine_similarity(grads[i], grads[j], dim=0).item()
                   for i in range(len(grads)) for j in range(i + 1, len(grads))]
        print(f"{args.reward} {name:>10}: pairwise cosine mean {sum(cosines) / len(cosines):+.3f} "
              f"[{' '.join(f'{c:+.2f}' for c in cosines)}]", flush=True)


if __name__ == "__main__":
    main()
