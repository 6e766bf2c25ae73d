"""alignlab's AsynSampler vs the official AsynDM sampler (asyn_sample.py's main) on one random UNet.

    python experiments/peers/run_asyndm.py --checkout PEERS/AsynDM [--batch 2 --steps 10 --repeats 3]

Their sampler is the body of `main()` in asyn_sample.py (no importable function); it is run as is,
with one prompt repeated `batch` times. Runtime shims, none touching their files:
  * absl / ml_collections (not installed here): stand-ins for the flag object and ConfigDict;
  * `StableDiffusionPipeline.from_pretrained` returns a pipeline assembled from our model's parts;
  * `torch.Generator(device='cuda')` -> CPU generator, `torch.cuda.set_device` -> no-op (their module's
    `torch` name is a proxy); `Accelerator(...)` is built once and reused; `latents_decode` records the
    final latents and returns 1x1 images (no VAE, no PNG cost).
Their script hard-codes a 64x64 latent and 16x16 mask layers, so the UNet here is SD-shaped with three
levels (64 no attention, 32 and 16 cross-attention, mid at 16), tiny widths.
"""

import importlib.util
import os
import sys
import tempfile
import types

from peer_common import MEMORY_MODE, arguments, measure, report, single_thread

single_thread()

import torch  # noqa: E402

import alignlab  # noqa: E402,F401
import diffusers  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from alignlab.samplers.asyn import AsynSampler  # noqa: E402
from alignlab.core.token_spans import Item, ItemBatch  # noqa: E402
from alignlab.models import build_tiny  # noqa: E402

PROMPT, WORDS, WORD_IDX, K = "a cat eating a sandwich", ["cat", "sandwich"], [1, 4], [0.7, 0.5]


class _ConfigDict(dict):
    __getattr__, __setattr__ = dict.__getitem__, dict.__setitem__


def _stub_flag_libraries():
    """absl.app/flags and ml_collections.config_flags/ConfigDict: the script only defines a config flag
    at import; the config itself is built by their config/config.py (stand-ins even if installed)."""
    flags = types.SimpleNamespace(FLAGS=types.SimpleNamespace())
    sys.modules["absl"] = types.SimpleNamespace(app=types.SimpleNamespace(run=lambda f: f(None)), flags=flags)
    config_flags = types.SimpleNamespace(DEFINE_config_file=lambda *a, **k: None)
    sys.modules["ml_collections"] = types.SimpleNamespace(ConfigDict=_ConfigDict, config_flags=config_flags)


class _TorchProxy(types.ModuleType):
    """`torch` for their module: CPU generators whatever device is asked, no CUDA device selection."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = types.SimpleNamespace(set_device=lambda *_: None)

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def Generator(device=None):  # noqa: N802
        return torch.Generator()


def load_peer(checkout: str, pipe, workdir: str):
    _stub_flag_libraries()
    sys.path.insert(0, checkout)
    import asyn_sample  # their script; its module level only defines flags

    import accelerate
    spec = importlib.util.spec_from_file_location("asyndm_config", os.path.join(checkout, "config", "config.py"))
    cfg_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg_mod)
    accelerator = accelerate.Accelerator(mixed_precision="no")
    captured = {}

    def fake_decode(pipeline, latents, device, dtype):
        captured["latents"] = latents
        return torch.zeros(latents.shape[0], 3, 1, 1)

    asyn_sample.StableDiffusionPipeline = types.SimpleNamespace(from_pretrained=lambda *a, **k: pipe)
    asyn_sample.torch = _TorchProxy()
    asyn_sample.Accelerator = lambda *a, **k: accelerator
    asyn_sample.latents_decode = fake_decode
    asyn_sample.tqdm = lambda it, **k: it  # progress bars off, as ours
    config = cfg_mod.get_config()
    config.save_path, config.exp_name = workdir, "bench"
    config.mixed_precision = "no"
    config.generate_base = config.generate_base2 = 0
    return asyn_sample, config, captured


def tiny_unet_64():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()


def main():
    ap = arguments(batch=2, repeats=3)
    ap.add_argument("--static", action="store_true", help="static masks (their static_mask=1, our mask_mode=static)")
    args = ap.parse_args()

    model = build_tiny(resolution=128)  # text encoder, tokenizer, VAE (x2), SD's DDIM scheduler
    model.unet = tiny_unet_64()
    pipe = diffusers.StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=model.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    workdir = tempfile.mkdtemp(prefix="asyndm_bench_")
    peer, config, captured = load_peer(args.checkout, pipe, workdir)
    B, n = args.batch, args.steps
    config.prompt, config.item_idx, config.item_k = PROMPT, WORD_IDX, K
    config.sample.batch_size, config.sample.num_steps, config.sample.num_batches_per_epoch = B, n, 1
    config.sample.guidance_scale, config.sample.eta, config.mask_thr, config.curve_type = 5.0, 1.0, 1.0, "bin"
    config.static_mask = int(args.static)
    peer.FLAGS.config = config

    items = ItemBatch.build(model.tokenizer, [PROMPT] * B, [[Item(w, k) for w, k in zip(WORDS, K, strict=True)]] * B)
    sampler = AsynSampler(n, config.sample.guidance_scale, config.sample.eta, progress=False, curve="bin",
                          mask_mode="static" if args.static else "dynamic", mask_threshold=config.mask_thr)

    def ours():  # same work as their main(): encode the prompts, sample with per-row seeds seed+i
        cond, neg = model.encode_prompts([PROMPT] * B), model.encode_prompts([""])
        gens = [torch.Generator().manual_seed(config.seed + i) for i in range(B)]
        return sampler.sample(model.unet, model.scheduler, cond, neg, (B, 4, 64, 64), gens, items=items)

    def theirs():
        peer.main(None)
        return captured["latents"]

    if not MEMORY_MODE:  # numeric agreement (skipped in the memory child)
        traj, final = ours(), theirs()
        diff = (traj.final - final).abs()
        print(f"AsynDM B={B} N={n} ({'static' if args.static else 'dynamic'} masks): max|final latents diff| "
              f"{diff.max():.2e} (|final| max {final.abs().max():.2f}; pixels off by >1e-3: "
              f"{(diff > 1e-3).float().mean():.2%}); our step-0 timestep values "
              f"{traj.timesteps[:, 0].unique().tolist()}, "
              f"mid-step {traj.timesteps[:, n // 2].unique().tolist()}")
    t, mem = measure({"ours": ours, "theirs": theirs}, args.repeats)
    report(f"AsynDM rollout (64x64 latent, batch {B}, {n} steps, CFG 5, {torch.get_num_threads()} thread)", t, mem)


if __name__ == "__main__":
    main()
