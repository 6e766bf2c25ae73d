"""D-Fusion's fused sampler, run in its own process: the checkout vendors diffusers 0.24 under the
name `diffusers`, which cannot share a process with the installed diffusers 0.42.

    python dfusion_worker.py CHECKOUT JOB.pt     (driven by run_dfusion.py over stdin/stdout)

The loop is run_sample.py's "inject sampling" loop (its only form is inline in main(), which also
waits for an external scorer): per step three passes of THEIR UNet (reference, base, target) with
their kwargs and their ddim_step_with_logprob, on THEIR pipeline loaded with from_pretrained as in
run_sample.py. Not reproduced: the per-step mask PNGs and the VAE decodes (I/O, not sampling).
Attention runs on their AttnProcessor, which their LoRAAttnProcessor (use_lora=True) turns into at
the first call; its LoRA starts at zero, so without LoRA the numbers are the same.
"""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import dfusion_shims  # noqa: E402,F401
from alignlab.benchmarks.memory import peak_mib  # noqa: E402

CHECKOUT, JOB = sys.argv[1], sys.argv[2]
sys.path.insert(0, CHECKOUT)
from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: E402  (theirs, vendored)
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402
from diffusion.ddim_with_logprob import ddim_step_with_logprob  # noqa: E402

torch.set_num_threads(1)
DEVICE = torch.device("cpu")  # their accelerator.device
job = torch.load(JOB)
pipe = StableDiffusionPipeline.from_pretrained(job["pipe_dir"], torch_dtype=torch.float32, safety_checker=None)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.unet.set_attn_processor(AttnProcessor())
pipe.set_progress_bar_config(disable=True)
# their config strings, parsed as run_sample.py parses them
inject_component = [x == "T" for x in job["inject_component"].split(",")]
inject_t = [tuple(map(int, x.split("-"))) if x else None for x in job["inject_t"].split(",")]
inject_l = [tuple(map(int, x.split("-"))) if x else None for x in job["inject_l"].split(",")]


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@torch.no_grad()
def fused(record=None):
    B, N, w, unet = len(job["base_seeds"]), job["steps"], job["guidance"], pipe.unet
    neg = job["neg"].expand(B, -1, -1)
    emb_ref, emb_base = (pipe._encode_prompt(None, DEVICE, 1, True, None, prompt_embeds=job[key],
                                             negative_prompt_embeds=neg) for key in ("cond_ref", "cond_base"))
    side = unet.config.sample_size * pipe.vae_scale_factor
    chains = {}  # name -> [latents, generators]
    for name, seeds in (("target", job["base_seeds"]), ("base", job["base_seeds"]), ("ref", job["ref_seeds"])):
        gs = generators(seeds)
        chains[name] = [pipe.prepare_latents(B, unet.config.in_channels, side, side, torch.float32, DEVICE, gs), gs]
    pipe.scheduler.set_timesteps(N, device=DEVICE)
    mask_kwargs = dict(item_idx=job["item_idx"], mask_thr=job["mask_thr"], used_layer_size=job["used_layer_size"])

    def step(name, t, embeds, **kwargs):
        latents, gs = chains[name]
        out, attn, cross = unet(torch.cat([latents] * 2), t, encoder_hidden_states=embeds, return_dict=False, **kwargs)
        uncond, cond = out[0].chunk(2)
        eps = uncond + w * (cond - uncond)
        chains[name][0], logp, _ = ddim_step_with_logprob(pipe.scheduler, eps, t, latents, eta=job["eta"], generator=gs)
        return attn, cross

    for i, t in enumerate(pipe.scheduler.timesteps):
        cur = [ic and it[0] <= N - i - 1 < it[1] for ic, it in zip(inject_component, inject_t, strict=True)]
        attn, mask_ref = step("ref", t, emb_ref, inject_component=cur, inject_l=inject_l, **mask_kwargs)
        _, mask_base = step("base", t, emb_base, inject_component=cur, inject_l=inject_l, **mask_kwargs)
        step("target", t, emb_base, inject_component=cur, inject_l=inject_l, given_attn_map=attn,
             given_cross_mask=(mask_ref, mask_base))
        if record is not None:
            record.setdefault("masks", []).append((mask_ref > 0.5).any(dim=2).float() if any(cur) else None)
    return {name: c[0] for name, c in chains.items()}


print("READY " + str(sum(float(p.detach().double().sum()) for p in pipe.unet.parameters())), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "run":
        fused()
        print("OK", flush=True)
    elif cmd[0] == "save":
        record = {}
        record.update(fused(record))
        torch.save(record, cmd[1])
        print("OK", flush=True)
    elif cmd[0] == "peak":
        print(f"PEAK {peak_mib(fused)}", flush=True)
    else:
        break
