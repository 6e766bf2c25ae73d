"""alignlab's fused_targets vs D-Fusion's official fused sampler on one random tiny UNet.

    python experiments/peers/run_dfusion.py --checkout PEERS/D-Fusion [--batch 2 --steps 10 --repeats 3]

Theirs runs in a worker process (dfusion_worker.py: their vendored diffusers 0.24 is also named
`diffusers`), loading the same weights from a pipeline this script saves with save_pretrained. Both
fuse steps 2..N-1 (their inject_t "0-(N-2)", i.e. the paper's 2..19 of 20), in the self-attention of
the mid and up blocks (their inject_l = the mid block's index..the last up block's), with masks from
the 16x16 cross-attention (their used_layer_size 16 = our capture at downscale 1 on a 16x16 latent)
and absolute per-item thresholds. Rows: reference i and base i share the prompt; seeds per row.
Timed: ours = fused_targets given the stored reference and base trajectories (2 UNet passes per
fused step, 1 otherwise); ours_all = sampling reference and base too; theirs = 3 passes per step.
"""

import subprocess
import sys
import tempfile

from peer_common import MEMORY_MODE, arguments, measure, report, single_thread

single_thread()

import torch  # noqa: E402

import alignlab  # noqa: E402,F401
import diffusers  # noqa: E402

from alignlab.core.attention import capture_layers  # noqa: E402
from alignlab.core.fusion import KVFusion, fused_targets, self_attention_layers  # noqa: E402
from alignlab.samplers.ddim import DDIMSampler  # noqa: E402
from alignlab.core.token_spans import Item, ItemBatch  # noqa: E402
from alignlab.models import build_tiny  # noqa: E402

PROMPT, WORDS, WORD_IDX = "a cat eating a sandwich", ["cat", "sandwich"], [1, 4]


class Worker:
    def __init__(self, checkout, job_path):
        here = __file__.rsplit("/", 1)[0] or "."
        self.proc = subprocess.Popen([sys.executable, f"{here}/dfusion_worker.py", checkout, job_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.weights_sum = float(self._reply("READY"))

    def _reply(self, tag):
        for line in self.proc.stdout:
            if line.startswith(tag):
                return line[len(tag):].strip()
        raise RuntimeError(f"D-Fusion worker exited (rc {self.proc.wait()})")

    def call(self, cmd, tag="OK"):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._reply(tag)


def main():
    ap = arguments(batch=2, repeats=3)
    ap.add_argument("--thresholds", default="0.013,0.013", help="absolute mask threshold per item (cat, sandwich)")
    args = ap.parse_args()
    B, N, w, fuse_start = args.batch, args.steps, 5.0, 2
    thresholds = [float(x) for x in args.thresholds.split(",")]

    model = build_tiny()  # 16x16 latent: the top level is the 16x16 mask level
    unet, sched = model.unet, model.scheduler
    pipe_dir = tempfile.mkdtemp(prefix="dfusion_bench_")
    diffusers.StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(pipe_dir)
    cond, neg = model.encode_prompts([PROMPT] * B), model.encode_prompts([""])
    ref_seeds, base_seeds = list(range(100, 100 + B)), list(range(200, 200 + B))
    down_cross = sum(t.startswith("CrossAttn") for t in unet.config.down_block_types)
    up_cross = sum(t.startswith("CrossAttn") for t in unet.config.up_block_types)
    job = dict(pipe_dir=pipe_dir, cond_ref=cond, cond_base=cond, neg=neg, ref_seeds=ref_seeds, base_seeds=base_seeds,
               steps=N, guidance=w, eta=1.0, item_idx=WORD_IDX, mask_thr=thresholds, used_layer_size=16,
               inject_component="T,T,T,T,T,F", inject_t=",".join([f"0-{N - fuse_start}"] * 5 + [""]),
               inject_l=",".join([f"{down_cross}-{down_cross + up_cross}"] * 5 + [""]))
    torch.save(job, f"{pipe_dir}/job.pt")
    worker = Worker(args.checkout, f"{pipe_dir}/job.pt")

    sampler = DDIMSampler(N, w, eta=1.0, progress=False)
    words = [Item(x, threshold=t) for x, t in zip(WORDS, thresholds, strict=True)]
    items = ItemBatch.build(model.tokenizer, [PROMPT] * B, [words] * B)
    capture, size = capture_layers(unet, model.latent_shape(1)[-2:], downscale=1)
    fusion = KVFusion(self_attention_layers(unet))  # mid + up blocks

    def sample(seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return sampler.sample(unet, sched, cond, neg, model.latent_shape(B), generators)

    reference, base = sample(ref_seeds), sample(base_seeds)

    def ours(reference=reference, base=base):
        replay = [torch.Generator().manual_seed(s) for s in base_seeds]
        return fused_targets(sampler, unet, sched, reference, base, neg, replay, items, (fuse_start, N), fusion,
                             capture, size)

    def ours_all():
        return ours(sample(ref_seeds), sample(base_seeds))

    if not MEMORY_MODE:  # numeric agreement (skipped in the memory child)
        ours_sum = sum(float(p.detach().double().sum()) for p in unet.parameters())
        target, masks = ours()
        worker.call(f"save {pipe_dir}/theirs.pt")
        theirs = torch.load(f"{pipe_dir}/theirs.pt")
        fused_masks = [m for m in theirs["masks"] if m is not None]
        mask_diff = max(float((a.view_as(b) - b).abs().mean())
                        for a, b in zip(fused_masks, masks[fuse_start:], strict=True))
        print(f"weights sum ours {ours_sum:.6f} theirs {worker.weights_sum:.6f}; B={B} N={N} fused steps "
              f"{fuse_start}..{N - 1}: max|final diff| reference {(reference.final - theirs['ref']).abs().max():.2e}, "
              f"base {(base.final - theirs['base']).abs().max():.2e}, "
              f"target {(target.final - theirs['target']).abs().max():.2e} (|target| max "
              f"{target.final.abs().max():.2f}; target vs base {(target.final - base.final).abs().max():.2f}); "
              f"mask coverage ours {masks[fuse_start:].mean():.3f} theirs {torch.stack(fused_masks).mean():.3f}, "
              f"worst per-step fraction of mask pixels that differ {mask_diff:.3f}")

    t, mem = measure({"ours": ours, "ours_all": ours_all, "theirs": lambda: worker.call("run")}, args.repeats,
                     remote_peaks={"theirs": lambda: float(worker.call("peak", tag="PEAK"))})
    worker.proc.stdin.close()
    worker.proc.wait()
    title = f"D-Fusion fused targets (tiny UNet, 16x16 latent, batch {B}, {N} steps, CFG {w}, 1 thread)"
    report(title + " [ours given stored ref/base]", t, mem)
    report(title + " [ours incl. sampling ref+base]", t, mem, ours="ours_all")


if __name__ == "__main__":
    main()
