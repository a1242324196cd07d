"""Image-to-image, inpainting and outpainting in the core (issue 13): denoise plans, the sampler
started from an input latent with and without a mask, tiled VAE encoding as decoding's inverse
against diffusers' AutoencoderKLFlux2, and the pixel-side helpers (sizes, masks, crop / stitch,
outpaint padding). Semantics: docs/editing.md."""

import math

import pytest
import torch

from ideogram4_core.editing.crop import mask_box, prepare_inpaint, stitch
from ideogram4_core.editing.images import fit_images, rgb
from ideogram4_core.editing.masks import MaskError, feather, grow, token_mask
from ideogram4_core.editing.outpaint import pad_for_outpaint
from ideogram4_core.latents import (LATENT_SCALE, LATENT_SHIFT, denormalize, normalize, tokens_to_vae_latent,
                                    vae_latent_to_tokens)
from ideogram4_core.sampling.sampler import initial_noise, sample
from ideogram4_core.sampling.schedule import PRESETS, custom_plan, preset_plan, schedule_steps, sigmas
from ideogram4_core.sizes import SizeError, latent_grid
from ideogram4_core.vae import _encode_tiled, decode_tokens, encode_images
from ideogram4_core.files.vae_file import convert_diffusers_state_dict, vae_from_state_dict
from oracle_models import model_pair

diffusers = pytest.importorskip("diffusers")  # test-only oracle

WIDTH, HEIGHT = 256, 320  # the size the schedules are built for
# The sampler loops run on a smaller token grid (the loop itself never checks sizes) to keep them
# quick on a loaded 2-core CI machine; the mask tests use the real 256x320 grid.
LOOP_GRID = (5, 6)
N = LOOP_GRID[0] * LOOP_GRID[1]
GRID = latent_grid(WIDTH, HEIGHT)


# --- denoise plans ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("denoise", [0.25, 0.5, 0.7, 0.95])
def test_denoise_runs_the_last_steps_of_a_longer_official_schedule(preset, denoise):
    """KSampler's meaning: the schedule of floor(steps / denoise) steps, its last `steps` steps,
    with the preset's own guidance list (polish steps last) on the steps that run."""
    p = PRESETS[preset]
    plan = preset_plan(preset, 1024, 1024, denoise)
    total = math.floor(p.steps / denoise + 1e-9)
    assert schedule_steps(p.steps, denoise) == total
    assert torch.equal(plan.sigmas, sigmas(total, p.mu, p.std, 1024, 1024)[-(p.steps + 1):])
    assert plan.guidance == tuple(p.guidance_schedule()) and plan.steps == p.steps
    assert plan.denoise == denoise and plan.sigmas[-1] == 0.0
    # 12 / 0.95 floors to 12: the full schedule (as in KSampler), started from the noised input.
    full_start = preset_plan(preset, 1024, 1024).sigmas[0]
    assert plan.sigmas[0] < full_start if total > p.steps else plan.sigmas[0] == full_start


def test_denoise_one_is_the_text_to_image_plan():
    for denoise in (1.0, 0.99995):  # KSampler also counts > 0.9999 as 1
        plan = preset_plan("V4_DEFAULT_20", 512, 768, denoise)
        full = preset_plan("V4_DEFAULT_20", 512, 768)
        assert torch.equal(plan.sigmas, full.sigmas) and plan.guidance == full.guidance and plan.denoise == 1.0


def test_denoise_custom_plans_and_bad_values():
    plan = custom_plan(512, 512, steps=6, mu=0.0, std=1.75, guidance_list=[1, 2, 3, 4, 5, 6], denoise=0.5)
    assert plan.guidance == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert torch.equal(plan.sigmas, sigmas(12, 0.0, 1.75, 512, 512)[-7:])
    assert schedule_steps(7, 0.7) == 10 and schedule_steps(3, 0.3) == 10  # float quotients just under 10
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"denoise must be in \(0, 1\]"):
            preset_plan("V4_TURBO_12", 512, 512, bad)


# --- the sampler from an input latent ----------------------------------------------------------


@pytest.fixture(scope="module")
def dits():
    _, cond = model_pair(seed=31)
    _, uncond = model_pair(seed=32)
    return cond, uncond


def run(dits, plan, seed=5, **kwargs):
    cond, uncond = dits
    feats = torch.randn(1, 7, cond.config.llm_features_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return sample(cond, uncond, feats, [7], *LOOP_GRID, plan, initial_noise(1, N, seed), **kwargs)


def input_latent(seed=9):
    return torch.randn(1, N, 128, generator=torch.Generator().manual_seed(seed))


def test_denoise_one_equals_text_to_image_bit_for_bit(dits):
    plan = preset_plan("V4_TURBO_12", WIDTH, HEIGHT)
    t2i = run(dits, plan)
    assert torch.equal(run(dits, preset_plan("V4_TURBO_12", WIDTH, HEIGHT, 1.0), init_latents=input_latent()), t2i)


def test_img2img_starts_from_the_noised_input(dits):
    """The first model call sees sigma0 * noise + (1 - sigma0) * x0 at t = 1 - sigma0."""
    plan = preset_plan("V4_TURBO_12", WIDTH, HEIGHT, 0.5)
    x0, seen = input_latent(), []
    handle = dits[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        run(dits, plan, init_latents=x0)
    finally:
        handle.remove()
    sigma0 = plan.sigmas[0]
    expected = sigma0 * initial_noise(1, N, 5) + (1 - sigma0) * x0
    assert torch.equal(seen[0][:, -N:].float(), expected)  # the image rows of the packed sequence


def test_denoise_near_zero_returns_the_input(dits):
    """At denoise 0.01 the loop starts at sigma 0.0094 (256x320, Default 20) and integrates only
    that far. The tiny random models' velocity is not x0 - noise (with guidance 7 it is ~10x the
    latents), so the residue is ~sigma0 * |v|: measured mean |out - x0| 0.061, 0.87% of the mean
    change at denoise 1 (7.1; max 0.36 against 32). The bound allows ~3x that."""
    x0 = input_latent()
    plan = preset_plan("V4_DEFAULT_20", WIDTH, HEIGHT, 0.01)
    near = (run(dits, plan, init_latents=x0) - x0).abs()
    far = (run(dits, preset_plan("V4_DEFAULT_20", WIDTH, HEIGHT), init_latents=x0) - x0).abs()
    ratio = (near.mean() / far.mean()).item()
    print(f"denoise 0.01: sigma0 {plan.sigmas[0].item():.4f}, |out - x0| mean {near.mean():.4f} max "
          f"{near.max():.3f}; denoise 1: mean {far.mean():.2f} max {far.max():.1f}; ratio {ratio:.4f}")
    assert plan.sigmas[0] < 0.01 and ratio < 0.025


def test_mask_keeps_the_noised_input_outside_at_every_step(dits):
    x0, noise = input_latent(), initial_noise(1, N, 5)
    mask = torch.zeros(1, N, 1, dtype=torch.bool)
    mask[:, 7:18] = True
    for denoise in (1.0, 0.6):
        plan = preset_plan("V4_TURBO_12", WIDTH, HEIGHT, denoise)
        steps = []
        out = run(dits, plan, init_latents=x0, mask=mask, callback=steps.append)
        assert len(steps) == plan.steps
        keep = ~mask[0, :, 0]
        for step in steps:
            sigma = plan.sigmas[step.index + 1]
            assert torch.equal(step.latents[:, keep], (sigma * noise + (1 - sigma) * x0)[:, keep])
            assert torch.equal(step.denoised[:, keep], x0[:, keep])  # previews show the input there
        assert torch.equal(out[:, keep], x0[:, keep])  # sigma 0: exactly the input
        assert (out[:, ~keep] - x0[:, ~keep]).abs().mean() > 0.1  # and the masked tokens were regenerated


def test_bad_sampler_inputs(dits):
    cond, uncond = dits
    feats = torch.randn(1, 3, cond.config.llm_features_dim)
    plan = preset_plan("V4_TURBO_12", WIDTH, HEIGHT, 0.5)
    with pytest.raises(ValueError, match="needs the input image's latents"):
        sample(cond, uncond, feats, [3], *LOOP_GRID, plan, initial_noise(1, N, 0))
    with pytest.raises(ValueError, match="mask needs the input image's latents"):
        sample(cond, uncond, feats, [3], *LOOP_GRID, preset_plan("V4_TURBO_12", WIDTH, HEIGHT), initial_noise(1, N, 0),
               mask=torch.ones(1, N, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not match the noise"):
        sample(cond, uncond, feats, [3], *LOOP_GRID, plan, initial_noise(1, N, 0), init_latents=torch.zeros(1, N - 1, 128))


# --- VAE encode: decode's inverse, tiled ---------------------------------------------------------

TINY_VAE = dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=4)
FP32_ATOL = 1e-5  # as in test_vae.py: same math in another order, ~30 fp32 ulps


@pytest.fixture(scope="module")
def vaes():
    torch.manual_seed(0)
    oracle = diffusers.AutoencoderKLFlux2(**TINY_VAE).eval()
    with torch.no_grad():
        oracle.bn.running_mean.copy_(torch.tensor(LATENT_SHIFT))
        oracle.bn.running_var.copy_(torch.tensor(LATENT_SCALE) ** 2 - oracle.config.batch_norm_eps)
    return oracle, vae_from_state_dict(convert_diffusers_state_dict(oracle.state_dict()), norm_groups=4)


def test_normalisation_and_patchify_invert_decode_exactly():
    tokens = torch.randn(2, 6 * 10, 128, generator=torch.Generator().manual_seed(4))
    assert torch.equal(vae_latent_to_tokens(tokens_to_vae_latent(tokens, 6, 10)), tokens)
    # (z * s + m - m) / s: one rounding in each direction, so at most a couple of ulps.
    assert (normalize(denormalize(tokens)) - tokens).abs().max() <= 4 * torch.finfo(torch.float32).eps * 8


def test_round_trip_matches_diffusers(vaes):
    """tokens -> pixels -> tokens with our code equals diffusers' decode then encode (bn constants
    equal to the official ones, DESIGN §5)."""
    oracle, ours = vaes
    tokens = torch.randn(1, 6 * 10, 128, generator=torch.Generator().manual_seed(5))
    pixels = decode_tokens(ours, tokens, 6, 10)
    again = encode_images(ours, pixels)
    with torch.no_grad():
        std = torch.sqrt(oracle.bn.running_var + oracle.config.batch_norm_eps)
        raw = tokens_to_vae_latent(tokens * std + oracle.bn.running_mean, 6, 10)
        decoded = (oracle.decode(raw).sample.clamp(-1, 1) + 1) / 2
        mean = oracle.encode(decoded * 2 - 1).latent_dist.mean
        reference = (vae_latent_to_tokens(mean) - oracle.bn.running_mean) / std
    assert (pixels.permute(0, 3, 1, 2) - decoded).abs().max() < FP32_ATOL
    assert (again - reference).abs().max() < FP32_ATOL


def test_tiled_encoding(vaes):
    _, ours = vaes
    images = torch.rand(1, 192, 256, 3, generator=torch.Generator().manual_seed(6))
    whole = encode_images(ours, images)
    assert torch.equal(encode_images(ours, images, tile_size=256, tile_overlap=64), whole)  # one tile
    tiled = encode_images(ours, images, tile_size=128, tile_overlap=64)
    # Approximate by design (tiles see their own GroupNorm statistics), like tiled decoding; the
    # tiny random VAE is a harsh case (see test_vae.py). Measured mean 0.011 on latents of std 0.17.
    error = (tiled - whole).abs()
    print(f"tiled encode: mean {error.mean():.4f}, max {error.max():.4f}, latent std {whole.std():.3f}")
    assert error.mean() < 0.1 * whole.std()

    def blockwise(x):  # an encoder without context: each 8x8 block -> its mean
        return torch.nn.functional.avg_pool2d(x, 8).repeat(1, 11, 1, 1)[:, :32]

    x = torch.rand(2, 3, 8 * 37, 8 * 50, generator=torch.Generator().manual_seed(7))
    for tile, overlap in ((16, 4), (24, 12), (25, 0)):
        assert (_encode_tiled(blockwise, x, tile, overlap) - blockwise(x)).abs().max() < 1e-6


# --- sizes and channels --------------------------------------------------------------------------


def test_size_modes():
    image = torch.rand(2, 300, 500, 3)
    with pytest.raises(SizeError, match=r"500x300 px.*Nearest valid size: 496x304.*'resize' \(scales it to "
                                         r"496x304\) or 'crop' \(cuts it to 496x288\)"):
        fit_images(image, "refuse")
    assert fit_images(image, "resize").shape == (2, 304, 496, 3)
    assert fit_images(torch.rand(1, 300, 400, 3), "resize").shape == (1, 304, 400, 3)
    assert fit_images(torch.rand(1, 3000, 4000, 3), "resize").shape == (1, 1536, 2048, 3)  # aspect kept
    assert fit_images(torch.rand(1, 100, 150, 3), "resize").shape == (1, 256, 384, 3)
    cropped = fit_images(image, "crop")
    assert cropped.shape == (2, 288, 496, 3) and torch.equal(cropped, image[:, 6:294, 2:498])  # no resampling
    small = fit_images(torch.rand(1, 100, 150, 3), "crop")  # below 256 px: scaled up (aspect kept), then cut
    assert small.shape == (1, 256, 384, 3)
    assert fit_images(torch.rand(1, 100, 1000, 3), "crop").shape == (1, 256, 1536, 3)  # 10:1 cut to 6:1 first
    assert fit_images(torch.rand(1, 3000, 2100, 3), "crop").shape == (1, 2048, 1424, 3)
    valid = torch.rand(1, 256, 320, 3)
    assert all(torch.equal(fit_images(valid, mode), valid) for mode in ("refuse", "resize", "crop"))


def test_alpha_and_grey_channels():
    rgba = torch.rand(1, 16, 16, 4)
    assert torch.equal(rgb(rgba), rgba[..., :3])
    grey = torch.rand(1, 16, 16, 1)
    assert torch.equal(rgb(grey), grey.expand(1, 16, 16, 3))
    with pytest.raises(ValueError, match="3 or 4 channels"):
        rgb(torch.rand(1, 16, 16, 2))


# --- masks ---------------------------------------------------------------------------------------


def test_grow_and_feather():
    mask = torch.zeros(1, 64, 64)
    mask[0, 20:40, 20:40] = 1
    grown = grow(mask, 3)
    assert grown[0, 17:43, 17:43].eq(1).all() and grown.sum() == 26 * 26
    assert torch.equal(grow(grown, -3), mask)
    soft = feather(mask, 6)
    assert soft[0, 30, 30] > 0.999 and 0.4 < soft[0, 20, 30] < 0.7  # the edge is about half way
    assert soft[0, :14].eq(0).all() and soft[0, 14:46, 14:46].gt(0).all()  # reaches exactly 6 px out
    edge = torch.zeros(1, 32, 32)
    edge[0, :, :8] = 1
    assert feather(edge, 4)[0, :, 0].eq(1).all()  # a mask at the border stays 1 there


def test_token_mask_and_its_errors():
    mask = torch.zeros(1, HEIGHT, WIDTH)
    mask[0, 40, 33] = 0.2  # one pixel of token (row 2, column 2)
    tokens = token_mask(mask, *GRID)
    assert tokens.shape == (1, GRID[0] * GRID[1], 1) and tokens.dtype == torch.bool
    assert tokens.sum() == 1 and tokens[0, 2 * GRID[1] + 2, 0]
    with pytest.raises(MaskError, match="empty"):
        token_mask(torch.zeros(1, HEIGHT, WIDTH), *GRID)
    with pytest.raises(MaskError, match="covers the whole image"):
        token_mask(torch.ones(1, HEIGHT, WIDTH), *GRID)
    with pytest.raises(MaskError, match="mask is 256x256 px but the latent is 256x320"):
        token_mask(torch.ones(1, 256, 256), *GRID)
    with pytest.raises(MaskError, match=r"in \[0, 1\]"):
        token_mask(torch.full((1, HEIGHT, WIDTH), 2.0), *GRID)


# --- crop and stitch, outpaint -------------------------------------------------------------------


def test_crop_and_stitch_touch_nothing_outside_the_mask():
    image = torch.rand(1, 600, 900, 3, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(1, 600, 900)
    mask[0, 300:340, 500:560] = 1
    work, work_mask, info = prepare_inpaint(image, mask, grow_px=4, feather_px=8, context=32, resolution=512)
    x, y, w, h = info.box
    assert (x, y, w, h) == (500 - 44, 300 - 44, 60 + 88, 40 + 88)  # mask + grow + feather + context
    assert work.shape[1:3] == work_mask.shape[1:] == (info.size[1], info.size[0])
    assert abs(info.size[0] * info.size[1] - 512 ** 2) < 0.1 * 512 ** 2
    out = stitch(info, torch.rand(1, *work.shape[1:], generator=torch.Generator().manual_seed(9)))
    changed = (out != image).any(-1)[0]
    inside = torch.zeros_like(changed)
    inside[y:y + h, x:x + w] = True
    assert not changed[~inside].any()  # outside the crop
    assert not changed[info.blend_mask[0].eq(0).nonzero().add(torch.tensor([y, x])).unbind(1)].any()
    assert changed[320, 530]  # the centre of the mask was replaced
    whole = stitch(info, work, blend=False)
    assert torch.equal(whole[:, :y], image[:, :y]) and not torch.equal(whole[:, y:y + h, x:x + w], image[:, y:y + h, x:x + w])


def test_whole_image_mode_keeps_a_valid_image_unresampled():
    image = torch.rand(1, 256, 320, 3)
    mask = torch.zeros(1, 256, 320)
    mask[0, 10:20, 10:20] = 1
    work, _, info = prepare_inpaint(image, mask, mode="whole image", resolution=0)
    assert info.box == (0, 0, 320, 256) and torch.equal(work, image)


def test_crop_errors():
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(MaskError, match="mask is 32x32 px but the image is 64x64"):
        prepare_inpaint(image, torch.ones(1, 32, 32))
    with pytest.raises(MaskError, match="empty"):
        prepare_inpaint(image, torch.zeros(1, 64, 64))
    with pytest.raises(MaskError, match="covers the whole image"):
        prepare_inpaint(image, torch.ones(1, 64, 64))
    thin = torch.zeros(1, 64, 64)
    thin[0, 30, :] = 1
    with pytest.raises(MaskError, match="empty"):
        prepare_inpaint(image, thin, grow_px=-1)
    _, _, info = prepare_inpaint(torch.rand(1, 256, 256, 3), thin.repeat_interleave(4, 1).repeat_interleave(4, 2))
    with pytest.raises(ValueError, match="Inpaint Crop made a"):
        stitch(info, torch.rand(1, 64, 64, 3))


def test_mask_box_respects_the_aspect_limit():
    mask = torch.zeros(1, 400, 1000)
    mask[0, 200, 100:900] = 1  # an 800x1 line
    x, y, w, h = mask_box(mask, 0, 1000, 400)
    assert w == 800 and h >= 800 / 6 and y <= 200 < y + h


def test_outpaint_pad():
    image = torch.rand(1, 100, 80, 3)
    padded, mask = pad_for_outpaint(image, left=16, bottom=24, fill="edge")
    assert padded.shape == (1, 124, 96, 3) and mask.shape == (1, 124, 96)
    assert torch.equal(padded[:, :100, 16:], image) and mask[0, :100, 16:].eq(0).all()
    assert mask[0, :, :16].eq(1).all() and mask[0, 100:].eq(1).all()
    assert torch.equal(padded[0, 5, :16], image[0, 5, :1].expand(16, 3))  # edge pixels repeated
    mirrored, _ = pad_for_outpaint(image, right=200, fill="mirror")  # wider than the image
    assert torch.equal(mirrored[0, :, 80:160], image[0].flip(1)) and torch.equal(mirrored[0, :, 160:240], image[0])
    gray, faded = pad_for_outpaint(image, top=8, fill="gray", overlap=4)
    assert gray[0, :8].eq(0.5).all()
    assert faded[0, 8:13, 0].tolist() == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        pad_for_outpaint(image)
