"""The whole sampling loop against diffusers' Ideogram4Pipeline(output_type="latent").

Both get the same tiny weights, the same caption (so the same text features: we take them from the
pipeline's own encode_prompt, with max_sequence_length = caption length so it adds no padding), the
same seed through a CPU generator, and each preset's schedule and guidance list.
The README claims the loop is bit-exact: the latents after the last step are `torch.equal` to the
pipeline's in fp32 (the model, the schedule, the model time t = 1 - sigma through diffusers'
0-1000 timestep scale and the Euler step are the same fp32 operations in the same order).
"""

import pytest
import torch

from ideogram4_core.sampling.sampler import SamplingCancelled, initial_noise, sample
from ideogram4_core.sampling.schedule import PRESETS, preset_plan
from ideogram4_core.sizes import latent_grid
from oracle_models import model_pair, oracle_pipeline, reference_features

CAPTION = '{"high_level_description":"a red fox","compositional_deconstruction":{"background":"snow","elements":[]}}'
WIDTH, HEIGHT = 256, 320  # smallest legal sizes keep the loop fast; non-square catches transposes


@pytest.fixture(scope="module")
def models():
    cond_ref, cond = model_pair(seed=11)
    uncond_ref, uncond = model_pair(seed=12)
    return oracle_pipeline(cond_ref, uncond_ref), cond, uncond


@pytest.mark.parametrize("preset", list(PRESETS))
def test_loop_matches_diffusers_pipeline(models, preset):
    pipe, cond, uncond = models
    p, seed = PRESETS[preset], 1234
    grid_h, grid_w = latent_grid(WIDTH, HEIGHT)
    feats, n = reference_features(pipe, CAPTION, grid_h, grid_w)

    expected = pipe(
        CAPTION, height=HEIGHT, width=WIDTH, num_inference_steps=p.steps, guidance_schedule=p.guidance_schedule(),
        mu=p.mu, std=p.std, max_sequence_length=n, generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent",
    ).images
    with torch.no_grad():
        got = sample(cond, uncond, feats, [n], grid_h, grid_w, preset_plan(preset, WIDTH, HEIGHT),
                     initial_noise(1, grid_h * grid_w, seed))
    diff = (expected - got).abs().max().item()
    print(f"{preset}: max |diff| = {diff:.2e} (latent scale {expected.abs().max().item():.1f})")
    assert torch.equal(expected, got)


def test_noise_is_diffusers_cpu_generator_noise():
    from diffusers.utils.torch_utils import randn_tensor

    expected = randn_tensor((2, 24, 128), generator=torch.Generator("cpu").manual_seed(99), dtype=torch.float32)
    assert torch.equal(initial_noise(2, 24, 99), expected)


def test_callback_sees_every_step_and_cancel_stops_within_one_step(models):
    _, cond, uncond = models
    plan = preset_plan("V4_TURBO_12", WIDTH, HEIGHT)
    grid_h, grid_w = latent_grid(WIDTH, HEIGHT)
    feats = torch.randn(1, 5, cond.config.llm_features_dim)
    noise = initial_noise(1, grid_h * grid_w, 0)
    seen = []
    calls = {"cond": 0}
    cond.register_forward_hook(lambda *_: calls.__setitem__("cond", calls["cond"] + 1))

    passes = []
    with torch.no_grad():
        sample(cond, uncond, feats, [5], grid_h, grid_w, plan, noise, callback=seen.append,
               before_pass=lambda m: passes.append("cond" if m is cond else "uncond"))
    assert [s.index for s in seen] == list(range(12)) and calls["cond"] == 12
    # The host hears of every pass first (to swap models in): once at set-up, then cond, uncond per step.
    assert passes == ["cond"] + ["cond", "uncond"] * 12
    # The last step lands on sigma 0, where the latents are the step's clean-image estimate.
    assert seen[-1].sigma_next == 0.0 and torch.equal(seen[-1].latents, seen[-1].denoised)

    def cancel_after_third(step):
        if step.index == 2:
            raise SamplingCancelled()

    calls["cond"] = 0
    with pytest.raises(SamplingCancelled), torch.no_grad():
        sample(cond, uncond, feats, [5], grid_h, grid_w, plan, noise, callback=cancel_after_third)
    assert calls["cond"] == 3, "no model call may run after a cancel"


def test_cond_only_sampling_matches_diffusers_at_guidance_1(models):
    """Guidance-distilled use: no unconditional model, the conditional velocity alone. That is the
    pipeline at a constant guidance of 1, where v = 1 * v_cond + 0 * v_uncond = v_cond exactly in
    fp32 (whatever finite v_uncond its unconditional model gives), so the latents must be equal."""
    pipe, cond, uncond = models
    plan = preset_plan("V4_TURBO_12", WIDTH, HEIGHT)
    grid_h, grid_w = latent_grid(WIDTH, HEIGHT)
    feats, n = reference_features(pipe, CAPTION, grid_h, grid_w)
    seed = 3
    expected = pipe(
        CAPTION, height=HEIGHT, width=WIDTH, num_inference_steps=plan.steps, guidance_scale=1.0,
        guidance_schedule=None, mu=PRESETS["V4_TURBO_12"].mu, std=PRESETS["V4_TURBO_12"].std,
        max_sequence_length=n, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
    ).images
    noise = initial_noise(1, grid_h * grid_w, seed)
    with torch.no_grad():
        out = sample(cond, None, feats, [n], grid_h, grid_w, plan, noise)
        guided = sample(cond, uncond, feats, [n], grid_h, grid_w, plan, noise)
    print(f"cond-only: max |diff| = {(expected - out).abs().max().item():.2e}")
    assert torch.equal(expected, out)
    # The plan's guidance list (7 then 3) is ignored without an unconditional model, never applied.
    assert not torch.allclose(out, guided)
