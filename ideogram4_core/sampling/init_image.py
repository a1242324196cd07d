"""Sampling from an input image: image-to-image (`denoise` < 1) and inpainting (a token mask).

Flow matching interpolates linearly, so the input image x0 at noise level sigma is
    noised(sigma) = sigma * noise + (1 - sigma) * x0
(the form of diffusers' FlowMatchEulerDiscreteScheduler.scale_noise and of ComfyUI's CONST noise
scaling), with `noise` the very tensor the text-to-image path starts from (the seed's CPU draw).

- Start: at denoise < 1 the loop starts from noised(sigmas[0]), sigmas[0] being the first noise
  level of the schedule's tail (`schedule.schedule_steps`). At denoise 1 it starts from `noise`
  itself, as text-to-image does (the reference treats its first level, 1 - t_min = 0.999877, as pure
  noise), so denoise 1 without a mask is text-to-image bit for bit, whatever the input latent holds.
- Mask: after every step, tokens outside the mask are replaced by noised(sigma_next), so at every
  step they are exactly the input noised to the current level, and after the last step (sigma 0)
  exactly the input. The regenerated tokens see them as context at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class InitImage:
    init: torch.Tensor  # (B, N, 128) fp32 model-space tokens of the input image
    noise: torch.Tensor  # (B, N, 128) fp32, the seed's noise
    mask: torch.Tensor | None  # (B, N, 1) bool, True = regenerate
    denoise: float

    @classmethod
    def prepare(cls, noise: torch.Tensor, init_latents: torch.Tensor | None, mask: torch.Tensor | None,
                denoise: float, device: torch.device) -> "InitImage | None":
        """None when nothing of the input is used (text-to-image); otherwise the tensors on `device`."""
        if init_latents is None:
            if mask is not None:
                raise ValueError("a mask needs the input image's latents (init_latents) to keep outside the mask")
            if denoise < 1.0:
                raise ValueError(f"denoise {denoise} < 1 needs the input image's latents (init_latents)")
            return None
        if mask is None and denoise >= 1.0:
            return None  # pure noise start, nothing kept: exactly text-to-image
        batch, tokens, channels = noise.shape
        if init_latents.shape[1:] != (tokens, channels) or init_latents.shape[0] not in (1, batch):
            raise ValueError(f"init_latents of shape {tuple(init_latents.shape)} do not match the noise "
                             f"{tuple(noise.shape)}")
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape[1:] != (tokens, 1) or mask.shape[0] not in (1, batch):
                raise ValueError(f"mask must be bool of shape ({batch}, {tokens}, 1), got {mask.dtype} "
                                 f"{tuple(mask.shape)}")
            mask = mask.to(device).expand(batch, tokens, 1)
        init = init_latents.to(device, torch.float32).expand(batch, tokens, channels)
        return cls(init, noise.to(device, torch.float32), mask, float(denoise))

    def noised(self, sigma) -> torch.Tensor:
        return sigma * self.noise + (1.0 - sigma) * self.init

    def start(self, sigma0: torch.Tensor) -> torch.Tensor:
        latents = self.noise if self.denoise >= 1.0 else self.noised(sigma0)
        return self.keep_unmasked(latents, sigma0)

    def keep_unmasked(self, latents: torch.Tensor, sigma) -> torch.Tensor:
        """`latents` inside the mask, the input noised to `sigma` outside it (exact: a select, no blend)."""
        if self.mask is None:
            return latents
        return torch.where(self.mask, latents, self.noised(sigma))
