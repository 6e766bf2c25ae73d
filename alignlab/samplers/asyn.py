"""The asynchronous sampler (AsynDM, docs/asyndm.md): every latent pixel has its own timestep.

Pixels of the prompt's items (masks from cross-attention) follow a concave schedule and stay noisier
for longer than the background, which follows the DDIM grid, so they are denoised against clearer
context. Each step is still a Gaussian DDIM step with a log-probability: trajectories store the
per-pixel timestep maps (B, n, h, w), which encode the masks used, and `step_log_prob` re-scores them
exactly, so the RL methods can sample with `sampler=asyn`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from alignlab.core.attention import AttentionStore, CaptureProcessor, attention_processors, capture_layers
from alignlab.core.ddim import ddim_step
from alignlab.core.masks import item_attention, largest_k, relative_masks, upsample_nearest
from alignlab.core.per_pixel_unet import PerPixelUNet
from alignlab.samplers.ddim import DDIMSampler, Trajectory, draw_noise, guided_noise
from alignlab.core.timestep_schedules import CURVES, Grid, check_decreasing, next_state
from alignlab.core.token_spans import ItemBatch
from alignlab.errors import ConfigError, require_at_least_one

VARIANTS = ("dm", "dm_concave", "asyndm")
MASK_MODES = ("dynamic", "static")


def _copy(generator: torch.Generator) -> torch.Generator:
    return torch.Generator(generator.device).set_state(generator.get_state())


@dataclass
class AsynState:
    """Where a batch of asynchronous chains stands before its next step. `denoise` advances it in place
    (like the generator), so a second call continues the first; `index` copies it for branches."""

    s: torch.Tensor  # (B, h, w) float timestep state
    k_map: torch.Tensor  # (B, h, w) curvature each pixel follows in the next update (0: linear)
    items: ItemBatch | None  # dynamic masks: rebuilt from these items' attention after every step

    def index(self, rows) -> AsynState:
        return AsynState(self.s[rows], self.k_map[rows], None if self.items is None else self.items.index(rows))


class AsynSampler(DDIMSampler):
    """DDIM with per-pixel timesteps. `sample(..., variant=)` gives the paper's three variants from the
    same noise: dm (every pixel on the DDIM grid), dm_concave (every pixel on the concave curve of the
    prompt's largest k) and asyndm (item pixels concave, with dynamic or static masks)."""

    needs_items = True  # RLMethod.rollout passes the prompts' item words

    def __init__(self, num_steps: int = 20, guidance_scale: float = 5.0, eta: float = 1.0, progress: bool = True,
                 curve: str = "bin", mask_mode: str = "dynamic", mask_threshold: float = 1.0,
                 capture_downscale: int | None = None):
        super().__init__(num_steps, guidance_scale, eta, progress)
        if curve not in CURVES:
            raise ConfigError(f"sampler.curve must be one of {', '.join(CURVES)}, got {curve!r}")
        if mask_mode not in MASK_MODES:
            raise ConfigError(f"sampler.mask_mode must be dynamic or static, got {mask_mode!r}")
        if mask_threshold <= 0:
            raise ConfigError(f"sampler.mask_threshold must be > 0, got {mask_threshold}")
        if capture_downscale is not None:
            require_at_least_one("sampler", capture_downscale=capture_downscale)
        self.curve, self.mask_mode = curve, mask_mode
        self.mask_threshold, self.capture_downscale = mask_threshold, capture_downscale

    def check_prompts(self, prompt_set, split: str, prompts: list[str]) -> None:
        """Items are looked up prompt by prompt as each batch is sampled: a split that names none is refused
        before the run starts rather than at its first rollout."""
        if not any(prompt_set.items_for(prompt) for prompt in prompts):
            raise ConfigError(f"sampler=asyn needs prompts with item words in the '{split}' split of prompt set "
                              f"'{prompt_set.name}' (e.g. prompts=asyn_animals)")

    def grid(self, scheduler) -> Grid:
        config = scheduler.config
        return Grid(config.num_train_timesteps, self.num_steps, config.steps_offset)

    @torch.no_grad()
    def sample(self, unet, scheduler, prompt_embeds, negative_embeds, latent_shape, generator,
               items: ItemBatch | None = None, variant: str = "asyndm") -> Trajectory:
        """A full rollout from fresh noise drawn from `generator` (one, or one per row) as DDIMSampler.sample
        draws it, so the variants share their initial and per-step noise, and `dm` reproduces the
        synchronous sampler when N divides T."""
        device = prompt_embeds.device
        latents = draw_noise(latent_shape, generator, device) * scheduler.init_noise_sigma
        state = self.initial_state(unet, scheduler, latents, prompt_embeds, negative_embeds, generator, items, variant)
        return self.denoise(unet, scheduler, latents, prompt_embeds, negative_embeds, generator, state=state)

    def initial_state(self, unet, scheduler, latents, prompt_embeds, negative_embeds, generator,
                      items: ItemBatch | None, variant: str) -> AsynState:
        """The state before step 0: T + τ everywhere, updated once with r = N under the first masks.
        asyndm's first masks: dynamic, the whole image belongs to the item with the largest token
        index; static, masks averaged over a DM run from the same noise (an extra sampling pass)."""
        if variant not in VARIANTS:
            raise ConfigError(f"the AsynDM variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        batch, _, height, width = latents.shape
        k_map, dynamic = latents.new_zeros(batch, 1, 1), None
        if variant != "dm":
            items = self._check_items(items, batch).to(latents.device)
            if variant == "dm_concave":
                k_map = (items.k * items.valid).amax(dim=1)[:, None, None]
            elif self.mask_mode == "dynamic":
                last = items.k.gather(1, items.last.clamp(min=0)[:, None])[:, 0] * (items.last >= 0)
                k_map, dynamic = last[:, None, None], items
            else:
                k_map = self._static_k_map(unet, scheduler, latents, prompt_embeds, negative_embeds, generator, items)
        k_map = k_map.expand(batch, height, width).contiguous()
        grid = self.grid(scheduler)
        s = next_state(torch.full_like(k_map, grid.start), grid.num_steps, k_map, self.curve, grid)
        return AsynState(s, k_map, dynamic)

    def denoise(self, unet, scheduler, latents, prompt_embeds, negative_embeds, generator, start: int = 0,
                end: int | None = None, *, state: AsynState) -> Trajectory:
        """Denoise steps [start, end) from `latents` and `state` (the state before step `start`).

        Dynamic masks lag one step: the attention of step j's UNet pass sets the masks of step j+1's
        update (no extra pass), as in the official code."""
        on_attention = None
        if state.items is not None:
            def on_attention(maps):
                state.k_map = self._k_map(maps, state.items, latents.shape[-2:])
        return self._denoise(unet, scheduler, latents, prompt_embeds, negative_embeds, generator, start, end, state,
                             state.items, on_attention)

    def rescore(self, unet, scheduler, traj: Trajectory, step, negative_embeds, guidance_scale=None):
        """As DDIMSampler.rescore, with the stored per-pixel timestep maps."""
        return super().rescore(PerPixelUNet(unet), scheduler, traj, step, negative_embeds, guidance_scale)

    # -- internals ----------------------------------------------------------------------------
    def _check_items(self, items: ItemBatch | None, batch: int) -> ItemBatch:
        if items is None or not bool(items.valid.any()):
            raise ConfigError("sampler=asyn needs item words for the prompts: use a prompt set whose prompts list "
                              "their items (e.g. prompts=asyn_animals)")
        if bool(items.k[items.valid].isnan().any()):
            raise ConfigError("sampler=asyn needs a curvature k for every item: give the prompt set's prompts "
                              "(or items) a k in (0, 1)")
        if items.valid.shape[0] != batch:
            raise ValueError(f"{items.valid.shape[0]} prompts' items for a batch of {batch}")
        return items

    def _k_map(self, maps: torch.Tensor, items: ItemBatch, size) -> torch.Tensor:
        """Item attention (B, I, h, w) -> masks by the relative rule -> largest k -> latent size."""
        masks = relative_masks(maps, items.valid, self.mask_threshold)
        return upsample_nearest(largest_k(masks, items.k), tuple(size))

    def _static_k_map(self, unet, scheduler, latents, prompt_embeds, negative_embeds, generator, items):
        """Masks from the item attention averaged over a full DM run with the same per-step noise."""
        copy = [_copy(g) for g in generator] if isinstance(generator, (list, tuple)) else _copy(generator)
        dm = self.initial_state(unet, scheduler, latents, prompt_embeds, negative_embeds, copy, None, "dm")
        maps = []
        self._denoise(unet, scheduler, latents, prompt_embeds, negative_embeds, copy, 0, None, dm, items, maps.append)
        return self._k_map(torch.stack(maps).mean(dim=0), items, latents.shape[-2:])

    def _denoise(self, unet, scheduler, latents, prompt_embeds, negative_embeds, generator, start, end,
                 state: AsynState, watch: ItemBatch | None, on_attention) -> Trajectory:
        """The loop; with `watch`, each UNet pass captures cross-attention and hands the item maps
        (B, I, h, w) to `on_attention`."""
        end = self.num_steps if end is None else end
        grid = self.grid(scheduler)
        batch, device = latents.shape[0], latents.device
        store = AttentionStore(conditional_half=self.guidance_scale != 1.0)
        capture = nullcontext()
        if watch is not None:
            layers, size = capture_layers(unet, tuple(latents.shape[-2:]), self.capture_downscale)
            capture = attention_processors(layers, CaptureProcessor(store))
        per_pixel = PerPixelUNet(unet)
        chain, logps, steps, prev_steps = [latents], [], [], []
        with capture:
            for j in tqdm(range(start, end), desc="sampling", leave=False, disable=not self.progress):
                s_next = next_state(state.s, self.num_steps - j - 1, state.k_map, self.curve, grid)
                t, t_next = state.s.round().long(), s_next.round().long()
                check_decreasing(t, t_next, j)
                store.reset()
                eps = guided_noise(per_pixel, chain[-1], t, prompt_embeds, negative_embeds, self.guidance_scale)
                if watch is not None:
                    on_attention(item_attention(store.mean(), watch.weights, size))
                noise = draw_noise(latents.shape, generator, device)
                result = ddim_step(scheduler, eps, t, t_next, chain[-1], self.eta, noise=noise)
                chain.append(result.prev_sample)
                logps.append(result.log_prob)
                steps.append(t)
                prev_steps.append(t_next)
                state.s = s_next
        no_steps = state.s.new_zeros(batch, 0, *latents.shape[-2:], dtype=torch.long)
        return Trajectory(
            latents=torch.stack(chain, dim=1),
            timesteps=torch.stack(steps, dim=1) if steps else no_steps,
            prev_timesteps=torch.stack(prev_steps, dim=1) if steps else no_steps,
            log_probs=torch.stack(logps, dim=1) if logps else latents.new_zeros(batch, 0),
            prompt_embeds=prompt_embeds,
        )
