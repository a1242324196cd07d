"""Sampling schedule and guidance (spec §D): logit-normal sigmas with a resolution-aware mean, and
per-step guidance in sampling order (first entry = first, noisiest step).

`denoise` (image-to-image, inpainting) has ComfyUI KSampler's meaning: with `steps` and
denoise d < 1 the official schedule is built for floor(steps / d) steps (same mu, std and
resolution shift) and only its last `steps` steps run, so `steps` is always the number of steps
that run and the guidance list (its polish steps included) applies to them exactly as in
text-to-image: Default 20 at denoise 0.5 runs the last 20 of a 40-step schedule, 18 at 7 then 2
at 3. denoise 1 is the plain text-to-image plan. See docs/editing.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# logSNR clamps of the released schedule: t stays within [1/(1+e^9), 1/(1+e^-7.5)].
LOGSNR_MIN, LOGSNR_MAX = -15.0, 18.0
T_MIN = 1.0 / (1.0 + math.exp(0.5 * LOGSNR_MAX))
T_MAX = 1.0 / (1.0 + math.exp(0.5 * LOGSNR_MIN))
BASE_PIXELS = 512 * 512


@dataclass(frozen=True)
class Preset:
    """A released sampler setting: `steps` with `guidance`, the last `polish_steps` at `polish_guidance`."""

    steps: int
    mu: float
    std: float
    guidance: float = 7.0
    polish_guidance: float = 3.0
    polish_steps: int = 1

    def guidance_schedule(self) -> list[float]:
        return guidance_schedule(self.steps, self.guidance, self.polish_guidance, self.polish_steps)


# The official presets (spec §D.2); the only place their numbers live.
PRESETS: dict[str, Preset] = {
    "V4_QUALITY_48": Preset(steps=48, mu=0.0, std=1.5, polish_steps=3),
    "V4_DEFAULT_20": Preset(steps=20, mu=0.0, std=1.75, polish_steps=2),
    "V4_TURBO_12": Preset(steps=12, mu=0.5, std=1.75, polish_steps=1),
}


def guidance_schedule(steps: int, guidance: float, polish_guidance: float, polish_steps: int) -> list[float]:
    """`guidance` for the first steps - polish_steps steps, then `polish_guidance`, in sampling order."""
    if not 0 <= polish_steps <= steps:
        raise ValueError(f"polish_steps must be between 0 and steps ({steps}), got {polish_steps}")
    return [float(guidance)] * (steps - polish_steps) + [float(polish_guidance)] * polish_steps


def resolution_mu(mu: float, width: int, height: int) -> float:
    """Shift the schedule mean by half the log pixel ratio to 512x512: larger images, noisier steps."""
    return mu + 0.5 * math.log(width * height / BASE_PIXELS)


def sigmas(steps: int, mu: float, std: float, width: int, height: int) -> torch.Tensor:
    """(steps + 1,) float32 noise levels sigma = 1 - t, decreasing from 1 - T_MIN to a final 0.

    t(u) = clamp(1 - sigmoid(mu' + std * Phi^-1(u)), T_MIN, T_MAX) on u = k/steps, in float64.
    Like diffusers and ComfyUI the last step integrates to sigma = 0 (the official loop stops at
    1 - T_MAX = 5.5e-4, one negligible Euler increment earlier).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    t = 1.0 - torch.special.expit(resolution_mu(mu, width, height) + std * torch.special.ndtri(u))
    sigma = (1.0 - t.clamp(T_MIN, T_MAX)).flip(0)[:-1].to(torch.float32)
    return torch.cat([sigma, sigma.new_zeros(1)])


def schedule_steps(steps: int, denoise: float) -> int:
    """Length of the schedule whose last `steps` steps run at this denoise (KSampler's
    int(steps / denoise)). The 1e-9 keeps a float quotient such as 7 / 0.7 = 9.999... from losing a
    step; denoise above 0.9999 counts as 1, as in KSampler."""
    if not 0.0 < denoise <= 1.0:  # also refuses nan
        raise ValueError(f"denoise must be in (0, 1], got {denoise}: 1 = text-to-image, lower keeps more of "
                         "the input image")
    if denoise > 0.9999:
        return steps
    return max(steps, math.floor(steps / denoise + 1e-9))


@dataclass(frozen=True)
class SamplingPlan:
    """What the sampler loop needs: noise levels (steps + 1) and one guidance weight per step.
    `denoise` < 1: the sigmas are the tail of a longer schedule, and sampling starts from the
    input latent noised to sigmas[0] instead of from pure noise."""

    sigmas: torch.Tensor
    guidance: tuple[float, ...]
    denoise: float = 1.0

    def __post_init__(self):
        if len(self.guidance) != len(self.sigmas) - 1:
            raise ValueError(
                f"guidance list has {len(self.guidance)} entries but there are {len(self.sigmas) - 1} steps"
            )

    @property
    def steps(self) -> int:
        return len(self.guidance)


def _plan(steps: int, mu: float, std: float, width: int, height: int, guidance: list[float],
          denoise: float) -> SamplingPlan:
    full = sigmas(schedule_steps(steps, denoise), mu, std, width, height)
    return SamplingPlan(full[-(steps + 1):], tuple(guidance), 1.0 if denoise > 0.9999 else float(denoise))


def preset_plan(name: str, width: int, height: int, denoise: float = 1.0) -> SamplingPlan:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    return _plan(p.steps, p.mu, p.std, width, height, p.guidance_schedule(), denoise)


def custom_plan(
    width: int,
    height: int,
    steps: int,
    mu: float,
    std: float,
    guidance: float | None = None,
    polish_guidance: float | None = None,
    polish_steps: int = 0,
    guidance_list: list[float] | None = None,
    denoise: float = 1.0,
) -> SamplingPlan:
    """A plan from explicit settings: either a constant guidance with an optional polish tail, or a
    full per-step `guidance_list` (sampling order) of exactly `steps` entries (the steps that run,
    whatever the denoise)."""
    if guidance_list is not None:
        schedule = [float(g) for g in guidance_list]
    elif guidance is not None:
        polish = guidance if polish_guidance is None else polish_guidance
        schedule = guidance_schedule(steps, guidance, polish, polish_steps)
    else:
        raise ValueError("give either a guidance value or a per-step guidance list")
    if len(schedule) != steps:
        raise ValueError(f"guidance list has {len(schedule)} entries but there are {steps} steps")
    return _plan(steps, mu, std, width, height, schedule, denoise)
