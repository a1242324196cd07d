"""The sampler loop (spec §D.3, §D.5): Euler flow matching with asymmetric guidance.

Each step runs the conditional model on [text][image] tokens and the unconditional model on the image
tokens alone, blends the velocities in fp32, v = w * v_cond + (1 - w) * v_uncond, and moves the fp32
latents from sigma to the next sigma: z <- z + (sigma - sigma_next) * v (model time t = 1 - sigma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..constants import LATENT_CHANNELS
from ..model.transformer import Ideogram4Transformer
from ..model.packing import conditional_layout, image_only_layout, pack_image_tokens
from .init_image import InitImage
from .schedule import SamplingPlan


class SamplingCancelled(Exception):
    """Raised by a step callback to stop sampling; the loop stops before the next model call."""


@dataclass
class StepInfo:
    index: int  # 0-based index of the step just finished
    total: int
    sigma_next: float  # noise level the latents are at now
    latents: torch.Tensor  # (B, N, 128) fp32 model-space tokens after this step
    denoised: torch.Tensor  # (B, N, 128) the step's estimate of the clean image, x0 = z + sigma * v (previews)


StepCallback = Callable[[StepInfo], None]
# Called with a model right before each of its forward passes, e.g. so a host can bring back a model
# its memory manager evicted meanwhile.
BeforePass = Callable[[Ideogram4Transformer], None]


def initial_noise(batch: int, num_tokens: int, seed: int) -> torch.Tensor:
    """Standard normal (B, N, 128) fp32 from a CPU generator: the same numbers diffusers draws for the
    same seed with `torch.Generator("cpu").manual_seed(seed)`, whatever device samples later."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((batch, num_tokens, LATENT_CHANNELS), generator=generator, dtype=torch.float32)


class GuidedVelocity:
    """One step's guided velocity, with everything that does not change between steps computed once:
    the two layouts, their rotary tables and the conditional pass's text embedding (the 53248-wide
    norm and projection of the caption; only its rows, never the image rows).

    `sample` uses it for every step; `scripts/benchmark.py` times exactly this call."""

    def __init__(
        self,
        model: Ideogram4Transformer,
        unconditional_model: Ideogram4Transformer | None,
        text_features: torch.Tensor,
        text_lengths: list[int],
        grid_h: int,
        grid_w: int,
        before_pass: BeforePass | None = None,
        device: torch.device | None = None,
    ):
        self.model, self.unconditional_model = model, unconditional_model
        self.before_pass = before_pass or (lambda _model: None)
        self.before_pass(model)
        # The compute device; a host that streams weights (partial loading) must name it, since
        # the model's first parameter may then live on the offload device.
        device = self.device = device or next(model.parameters()).device
        batch = text_features.shape[0]
        if len(text_lengths) != batch:
            raise ValueError(f"{batch} rows of text features but {len(text_lengths)} text lengths")
        self.cond_layout = conditional_layout(text_lengths, grid_h, grid_w).to(device)
        self.cond_rope = model.rope(self.cond_layout.position_ids)  # positions never change: compute once
        features = text_features.to(device, model.compute_dtype)
        if features.shape[1] != self.cond_layout.text_len:
            raise ValueError(f"text features have {features.shape[1]} rows, the layout expects {self.cond_layout.text_len}")
        self.text_embedding = model.embed_text(features, self.cond_layout.indicator)
        if unconditional_model is not None:
            self.uncond_layout = image_only_layout(batch, grid_h, grid_w).to(device)
            self.uncond_rope = unconditional_model.rope(self.uncond_layout.position_ids)

    def conditional(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.before_pass(self.model)
        layout = self.cond_layout
        return self.model(
            pack_image_tokens(latents, layout), t, layout.indicator, attention_mask=layout.attention_mask,
            rope=self.cond_rope, text_embedding=self.text_embedding, rows_from=layout.text_len,
        ).float()

    def unconditional(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.before_pass(self.unconditional_model)
        return self.unconditional_model(latents, t, self.uncond_layout.indicator, rope=self.uncond_rope).float()

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, guidance: float) -> torch.Tensor:
        """v = w * v_cond + (1 - w) * v_uncond in fp32 (v_cond alone without an unconditional model)."""
        v = self.conditional(latents, t)
        if self.unconditional_model is None:
            return v
        w = torch.tensor(guidance, dtype=torch.float32, device=latents.device)
        return w * v + (1.0 - w) * self.unconditional(latents, t)


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
    before_pass: BeforePass | None = None,
    device: torch.device | None = None,
    init_latents: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoise `noise` (B, N, 128) into clean model-space tokens (B, N, 128) fp32.

    Image-to-image and inpainting (`init_image.InitImage`): `init_latents` (B, N, 128) is the input
    image in model space, noised to the plan's first sigma when `plan.denoise` < 1; `mask` (B, N, 1)
    bool marks the tokens to regenerate, the others are reset to the input noised to the current
    sigma after every step. Without them (or at denoise 1 without a mask) this is text-to-image.

    text_features: (B, n, F) left-padded text features with `text_lengths` real rows per prompt
    (a single caption has no padding). Without an unconditional model every step uses the conditional
    velocity alone (for guidance-distilled models); the guidance list is then ignored.
    `callback` runs after every step and may raise SamplingCancelled (or the host's own interrupt);
    `before_pass` runs before every model call (see BeforePass); `device` is where the models
    compute (default: where the conditional model's first parameter is).
    """
    batch, num_tokens, _ = noise.shape
    if num_tokens != grid_h * grid_w:
        raise ValueError(f"noise has {num_tokens} tokens but a {grid_h}x{grid_w} grid needs {grid_h * grid_w}")
    if text_features.shape[0] != batch or len(text_lengths) != batch:
        raise ValueError(f"{text_features.shape[0]} captions for a batch of {batch} latents")

    velocity = GuidedVelocity(model, unconditional_model, text_features, text_lengths, grid_h, grid_w, before_pass,
                              device)
    device = velocity.device
    sigmas = plan.sigmas.to(device, torch.float32)
    init = InitImage.prepare(noise, init_latents, mask, plan.denoise, device)
    latents = noise.to(device, torch.float32) if init is None else init.start(sigmas[0])
    # Model time t = 1 - sigma, taken through diffusers' 0-1000 timestep scale in fp32 so t is
    # bit-identical to the reference pipeline's (the round trip moves t by 1 ulp on some steps).
    model_times = 1.0 - (sigmas * 1000.0) / 1000.0
    for i in range(plan.steps):
        v = velocity(latents, model_times[i].expand(batch), plan.guidance[i])
        denoised = latents + sigmas[i] * v
        latents = latents + (sigmas[i] - sigmas[i + 1]) * v
        if init is not None:
            latents, denoised = init.keep_unmasked(latents, sigmas[i + 1]), init.keep_unmasked(denoised, 0.0)
        if callback is not None:
            callback(StepInfo(i, plan.steps, float(sigmas[i + 1]), latents, denoised))
    return latents
