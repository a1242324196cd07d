"""The sampler loop (spec §D.3, §D.5): Euler flow matching with asymmetric guidance.

Each step runs the conditional model on [text][image] tokens and the unconditional model on the image
tokens alone, blends the velocities in fp32, v = w * v_cond + (1 - w) * v_uncond, and moves the fp32
latents from sigma to the next sigma: z <- z + (sigma - sigma_next) * v (model time t = 1 - sigma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .constants import LATENT_CHANNELS
from .model import Ideogram4Transformer
from .packing import conditional_layout, image_only_layout, pack_image_tokens, pack_text_features
from .schedule import SamplingPlan


class SamplingCancelled(Exception):
    """Raised by a step callback to stop sampling; the loop stops before the next model call."""


@dataclass
class StepInfo:
    index: int  # 0-based index of the step just finished
    total: int
    sigma_next: float  # noise level the latents are at now
    latents: torch.Tensor  # (B, N, 128) fp32 model-space tokens after this step


StepCallback = Callable[[StepInfo], None]


def initial_noise(batch: int, num_tokens: int, seed: int) -> torch.Tensor:
    """Standard normal (B, N, 128) fp32 from a CPU generator: the same numbers diffusers draws for the
    same seed with `torch.Generator("cpu").manual_seed(seed)`, whatever device samples later."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((batch, num_tokens, LATENT_CHANNELS), generator=generator, dtype=torch.float32)


def sample(
    model: Ideogram4Transformer,
    unconditional_model: Ideogram4Transformer | None,
    text_features: torch.Tensor,
    text_lengths: list[int],
    grid_h: int,
    grid_w: int,
    plan: SamplingPlan,
    noise: torch.Tensor,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Denoise `noise` (B, N, 128) into clean model-space tokens (B, N, 128) fp32.

    text_features: (B, n, F) left-padded text features with `text_lengths` real rows per prompt
    (a single caption has no padding). Without an unconditional model every step uses the conditional
    velocity alone (for guidance-distilled models); the guidance list is then ignored.
    `callback` runs after every step and may raise SamplingCancelled (or the host's own interrupt).
    """
    device = next(model.parameters()).device
    batch, num_tokens, _ = noise.shape
    if num_tokens != grid_h * grid_w:
        raise ValueError(f"noise has {num_tokens} tokens but a {grid_h}x{grid_w} grid needs {grid_h * grid_w}")
    if text_features.shape[0] != batch or len(text_lengths) != batch:
        raise ValueError(f"{text_features.shape[0]} captions for a batch of {batch} latents")

    cond_layout = conditional_layout(text_lengths, grid_h, grid_w).to(device)
    cond_features = pack_text_features(text_features.to(device, model.compute_dtype), cond_layout)
    cond_rope = model.rope(cond_layout.position_ids)  # positions never change: compute once
    if unconditional_model is not None:
        uncond_layout = image_only_layout(batch, grid_h, grid_w).to(device)
        uncond_rope = unconditional_model.rope(uncond_layout.position_ids)

    latents = noise.to(device, torch.float32)
    sigmas = plan.sigmas.to(device, torch.float32)
    # Model time t = 1 - sigma, taken through diffusers' 0-1000 timestep scale in fp32 so t is
    # bit-identical to the reference pipeline's (the round trip moves t by 1 ulp on some steps).
    model_times = 1.0 - (sigmas * 1000.0) / 1000.0
    for i in range(plan.steps):
        t = model_times[i].expand(batch)
        v = model(
            pack_image_tokens(latents, cond_layout),
            t,
            cond_layout.indicator,
            llm_features=cond_features,
            attention_mask=cond_layout.attention_mask,
            rope=cond_rope,
        )[:, cond_layout.text_len :].float()
        if unconditional_model is not None:
            v_uncond = unconditional_model(latents, t, uncond_layout.indicator, rope=uncond_rope).float()
            w = torch.tensor(plan.guidance[i], dtype=torch.float32, device=device)
            v = w * v + (1.0 - w) * v_uncond
        latents = latents + (sigmas[i] - sigmas[i + 1]) * v
        if callback is not None:
            callback(StepInfo(i, plan.steps, float(sigmas[i + 1]), latents))
    return latents
