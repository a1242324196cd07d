"""Sigmas and guidance against diffusers' Ideogram 4 schedule and the spec's worked numbers."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.ideogram4.pipeline_ideogram4 import _logit_normal_sigmas, _resolution_aware_mu

from ideogram4_core.sampling.schedule import PRESETS, T_MIN, custom_plan, guidance_schedule, preset_plan, sigmas

SIZES = [(256, 256), (1024, 1024), (2048, 2048), (1600, 400), (272, 1632)]


def diffusers_sigmas(steps, mu, std, width, height):
    """What Ideogram4Pipeline hands its scheduler, then the scheduler's own list (with its final 0)."""
    scheduler = FlowMatchEulerDiscreteScheduler()
    schedule = _logit_normal_sigmas(steps, _resolution_aware_mu(height=height, width=width, base_mu=mu), std=std)
    scheduler.set_timesteps(sigmas=schedule.tolist())
    return scheduler.sigmas


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_preset_sigmas_match_diffusers(preset, size):
    p = PRESETS[preset]
    ours = preset_plan(preset, *size).sigmas
    expected = diffusers_sigmas(p.steps, p.mu, p.std, *size)
    assert ours.dtype == torch.float32 and ours.shape == (p.steps + 1,)
    diff = (ours - expected).abs().max().item()
    print(f"{preset} {size}: max |diff| = {diff:.1e}")
    assert torch.equal(ours, expected), "the README claims the schedule is bit-exact with diffusers"


def test_spec_worked_values():
    """Appendix B of the spec (numpy-derived): 1024^2 DEFAULT_20 and 512^2 DEFAULT_20."""
    s = preset_plan("V4_DEFAULT_20", 1024, 1024).sigmas
    assert s[0].item() == pytest.approx(1 - T_MIN, abs=1e-6)
    assert s[:4].tolist() == pytest.approx([0.99988, 0.9727, 0.9496, 0.9246], abs=1e-4)
    assert s[-4:-1].tolist() == pytest.approx([0.2459, 0.1751, 0.1011], abs=1e-4)
    assert s[-1].item() == 0.0
    s512 = preset_plan("V4_DEFAULT_20", 512, 512).sigmas
    assert s512[1:4].tolist() == pytest.approx([0.9468, 0.9040, 0.8598], abs=1e-4)


def test_guidance_lists_in_sampling_order():
    assert PRESETS["V4_QUALITY_48"].guidance_schedule() == [7.0] * 45 + [3.0] * 3
    assert PRESETS["V4_DEFAULT_20"].guidance_schedule() == [7.0] * 18 + [3.0] * 2
    assert PRESETS["V4_TURBO_12"].guidance_schedule() == [7.0] * 11 + [3.0] * 1
    # Sampling order: the polish steps are the last (least noisy) ones, never the first.
    plan = preset_plan("V4_TURBO_12", 1024, 1024)
    assert plan.guidance[0] == 7.0 and plan.guidance[-1] == 3.0


def test_custom_plans():
    plan = custom_plan(1024, 1024, steps=10, mu=0.2, std=1.3, guidance=5.0, polish_guidance=2.0, polish_steps=4)
    assert plan.guidance == (5.0,) * 6 + (2.0,) * 4
    assert torch.equal(plan.sigmas, sigmas(10, 0.2, 1.3, 1024, 1024))
    listed = custom_plan(512, 768, steps=3, mu=0.0, std=1.75, guidance_list=[4, 5, 6])
    assert listed.guidance == (4.0, 5.0, 6.0)
    with pytest.raises(ValueError, match="3 entries but there are 4 steps"):
        custom_plan(512, 512, steps=4, mu=0.0, std=1.0, guidance_list=[1, 2, 3])
    with pytest.raises(ValueError, match="polish_steps"):
        guidance_schedule(5, 7.0, 3.0, 6)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_plan("V4_FAST", 512, 512)
