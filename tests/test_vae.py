"""Flux.2 VAE: loading in BFL and diffusers naming, decode/encode parity with diffusers'
`AutoencoderKLFlux2` used the way `Ideogram4Pipeline` uses it, tiling, compute dtype, bn report,
and the errors a wrong file gets.

The oracle is a tiny random `AutoencoderKLFlux2` (4 levels of 16/16/32/32 channels, 1 encoder and
2 decoder res blocks per level, 4 GroupNorm groups). Its `bn` buffers, and so the files written from
it, hold statistics that differ from the official constants (like the stock Flux.2 ones of spec
§E.2), because we claim to decode with the constants and never with the file's `bn`: the expected
pixels are built here from the constants, by hand, and then run through the oracle's decoder.
"""

import pytest
import torch
from safetensors.torch import save_file

from ideogram4_core.latents import LATENT_SCALE, LATENT_SHIFT, tokens_to_comfy
from ideogram4_core.vae import Flux2VAE, _decode_tiled, _tile_spans, decode_tokens, encode_images
from ideogram4_core.files.vae_file import (Flux2VAEFileError, compare_batch_norm, convert_diffusers_state_dict, load_vae,
                                     vae_from_state_dict)

diffusers = pytest.importorskip("diffusers")  # test-only oracle, never a runtime dependency

TINY = dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=4)
BN_EPS = 1e-4  # diffusers' batch_norm_eps default, also BFL's BatchNorm2d eps

# fp32 parity: the same math in a different order (diffusers runs attention projections as Linear on
# (B, HW, C), we as 1x1 convs on (B, C, H, W)). Measured max difference 3.8e-6 on pixels in [0, 1],
# ~30 fp32 ulps at 1.0; 1e-5 leaves room for other BLAS kernels while any real mistake (a channel
# order, a missing shortcut, a wrong eps) moves pixels by 1e-3 or more.
FP32_ATOL = 1e-5


SHIFT, SCALE = torch.tensor(LATENT_SHIFT), torch.tensor(LATENT_SCALE)  # (128,) token order (p_row, p_col, c)


def test_official_constants_are_the_spec_values():
    """Spot values of spec §E.2, so the constants the expectations use are checked on their own."""
    assert SHIFT.shape == SCALE.shape == (128,)
    assert SHIFT[0].item() == pytest.approx(0.01984364, abs=1e-8)
    assert SHIFT[32].item() == pytest.approx(0.02583857, abs=1e-8)
    assert SCALE.min().item() == pytest.approx(1.5308, abs=1e-4) and SCALE.max().item() == pytest.approx(1.9407, abs=1e-4)


def flux2_like_bn(vae) -> None:
    """bn statistics off the constants on every channel (mean by 0.1 or more, std 8-12 % larger),
    the kind of gap spec §E.2 reports between stock Flux.2 statistics and Ideogram's."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        vae.bn.running_mean.copy_(SHIFT - 0.1 - 0.05 * torch.rand(128, generator=gen))
        std = SCALE * (1.08 + 0.04 * torch.rand(128, generator=gen))
        vae.bn.running_var.copy_(std**2 - BN_EPS)


def official_bn_state(state: dict) -> dict:
    """A BFL-named state dict whose `bn` holds the official constants in token order."""
    return dict(state, **{"bn.running_mean": SHIFT.clone(), "bn.running_var": SCALE**2 - BN_EPS})


@pytest.fixture(scope="module")
def oracle():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLFlux2(**TINY).eval()
    flux2_like_bn(vae)
    assert (vae.bn.running_mean - SHIFT).abs().min() > 0.09  # every channel differs from the constants
    return vae


@pytest.fixture(scope="module")
def files(oracle, tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    oracle.save_pretrained(root / "vae")  # official layout: diffusers naming + config.json
    bfl = root / "flux2-vae-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in convert_diffusers_state_dict(oracle.state_dict()).items()}, bfl)
    return {"diffusers": root / "vae" / "diffusion_pytorch_model.safetensors", "bfl": bfl, "root": root}


@pytest.fixture(scope="module")
def vae(files):
    return load_vae(files["bfl"], norm_groups=4)


def random_tokens(batch, grid_h, grid_w, seed=1):
    return torch.randn(batch, grid_h * grid_w, 128, generator=torch.Generator().manual_seed(seed))


def reference_decode(oracle, tokens, grid_h, grid_w, mean=SHIFT, std=SCALE):
    """The official decode (spec §E.2): z·LATENT_SCALE + LATENT_SHIFT on tokens, unpatchify, the
    oracle's decoder, then diffusers' postprocess. `mean`/`std` let a test decode with other statistics."""
    with torch.no_grad():
        z = tokens * std.view(1, 1, -1) + mean.view(1, 1, -1)
        b = z.shape[0]
        z = z.view(b, grid_h, grid_w, 2, 2, 32).permute(0, 5, 1, 3, 2, 4).reshape(b, 32, 2 * grid_h, 2 * grid_w)
        decoded = oracle.decode(z, return_dict=False)[0]
        images = diffusers.image_processor.VaeImageProcessor().postprocess(decoded, output_type="pt")
    return images.permute(0, 2, 3, 1)


# --- architecture and names --------------------------------------------------------------------


def test_default_config_is_the_real_flux2_vae():
    """Parameter counts of spec §E.1, and names/shapes equal to converted diffusers defaults (32 groups,
    4 levels, 3 decoder blocks: the up-block index reversal at real scale)."""
    with torch.device("meta"):
        ours = Flux2VAE()
        theirs = diffusers.AutoencoderKLFlux2()
    millions = lambda m: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)  # noqa: E731
    assert (millions(ours), millions(ours.encoder), millions(ours.decoder)) == (84.0, 34.4, 49.6)
    converted = {k: tuple(v.shape) for k, v in convert_diffusers_state_dict(theirs.state_dict()).items()}
    assert converted == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_converter_names():
    sd = convert_diffusers_state_dict(diffusers.AutoencoderKLFlux2(**TINY).state_dict())
    assert sd["decoder.up.3.block.0.conv1.weight"].shape[0] == 32  # up_blocks.0 = most channels
    assert sd["decoder.up.0.block.1.conv2.weight"].shape[0] == 16  # up_blocks.3 = full resolution
    assert "decoder.up.3.upsample.conv.weight" in sd and "decoder.up.0.upsample.conv.weight" not in sd
    assert "decoder.up.1.block.0.nin_shortcut.weight" in sd  # entered from up.2 with 32, makes 16
    assert sd["decoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)
    assert sd["encoder.mid.attn_1.proj_out.weight"].shape == (32, 32, 1, 1)
    assert {"encoder.quant_conv.weight", "decoder.post_quant_conv.bias", "decoder.norm_out.weight",
            "encoder.mid.block_2.conv1.weight", "encoder.down.2.downsample.conv.weight", "bn.running_var"} <= set(sd)


def test_both_namings_and_layout_variants_load_the_same_weights(files, vae, oracle, tmp_path):
    from_diffusers = load_vae(files["diffusers"])  # group count from the config.json beside it
    assert from_diffusers.config == vae.config and vae.config.norm_groups == 4
    expected = vae.state_dict()
    bfl = convert_diffusers_state_dict(oracle.state_dict())
    # ComfyUI-style top-level 1x1 convs, and a full-pipeline prefix with unrelated keys beside it.
    top_level = {k.replace("decoder.post_quant_conv", "post_quant_conv").replace("encoder.quant_conv", "quant_conv"): v
                 for k, v in bfl.items()}
    prefixed = {"first_stage_model." + k: v for k, v in bfl.items()} | {"model.diffusion_model.x.weight": torch.ones(2)}
    for variant in (from_diffusers.state_dict(), vae_from_state_dict(top_level, norm_groups=4).state_dict(),
                    vae_from_state_dict(prefixed, norm_groups=4).state_dict()):
        assert variant.keys() == expected.keys()
        assert all(torch.equal(variant[k], expected[k]) for k in expected)


# --- decode / encode parity ----------------------------------------------------------------------


def test_decode_uses_the_official_constants_not_the_file_bn(vae, oracle):
    grid_h, grid_w = 6, 10  # non-square: catches a swapped unpatchify
    tokens = random_tokens(2, grid_h, grid_w)
    ours = decode_tokens(vae, tokens, grid_h, grid_w)
    reference = reference_decode(oracle, tokens, grid_h, grid_w)
    assert ours.shape == (2, 96, 160, 3) and ours.dtype == torch.float32
    assert 0.0 <= ours.min() and ours.max() <= 1.0
    assert ((reference == 0) | (reference == 1)).float().mean() < 0.05  # not a comparison of clamped values
    assert (ours - reference).abs().max().item() < FP32_ATOL
    # Decoding with the file's bn (as diffusers' pipeline would) gives visibly other pixels, so the
    # comparison above would catch a decode that read the file's statistics.
    with_bn = reference_decode(oracle, tokens, grid_h, grid_w, oracle.bn.running_mean,
                               torch.sqrt(oracle.bn.running_var + BN_EPS))
    assert (ours - with_bn).abs().max().item() > 100 * FP32_ATOL


def test_encode_matches_diffusers(vae, oracle):
    images = torch.rand(2, 96, 160, 3, generator=torch.Generator().manual_seed(2))
    tokens = encode_images(vae, images)
    with torch.no_grad():
        mean = oracle.encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean  # (2, 32, 12, 20)
        raw = mean.view(2, 32, 6, 2, 10, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 60, 128)
        reference = (raw - SHIFT) / SCALE  # the constants, not the file's bn
    assert tokens.shape == (2, 60, 128)
    assert (tokens - reference).abs().max().item() < FP32_ATOL


def test_bf16_compute_leaves_the_module_alone(vae):
    """bf16 keeps 8 mantissa bits (relative step 2^-8): ~0.4% per op, and the decoder chains ~40
    ops. Measured: max 0.04, mean 0.002 on pixels in [0, 1]; the bounds allow ~2.5x of that."""
    tokens = random_tokens(1, 6, 10)
    fp32 = decode_tokens(vae, tokens, 6, 10)
    bf16 = decode_tokens(vae, tokens, 6, 10, dtype=torch.bfloat16)
    assert vae.dtype == torch.float32 and bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().mean() < 5e-3 and (bf16 - fp32).abs().max() < 0.1


# --- tiling --------------------------------------------------------------------------------------


def test_single_tile_is_exact(vae):
    tokens = random_tokens(1, 6, 10)
    untiled = decode_tokens(vae, tokens, 6, 10)
    for tile in (160, 1024):  # exactly the image's long side, and larger
        assert torch.equal(decode_tokens(vae, tokens, 6, 10, tile_size=tile, tile_overlap=64), untiled)


@pytest.mark.parametrize("length,tile,overlap", [(48, 16, 4), (50, 16, 8), (17, 16, 2), (128, 128, 32),
                                                 (256, 128, 32), (300, 128, 32)])
def test_tile_spans_cover_with_overlap(length, tile, overlap):
    spans = _tile_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(end - start == min(tile, length) for start, end in spans)
    assert all(prev[1] - nxt[0] >= overlap - 1 for prev, nxt in zip(spans, spans[1:]))  # -1: rounding


def test_blend_weights_sum_to_one():
    """With a decoder that has no context (each latent pixel -> an 8x8 block), tiled decoding must
    reproduce the untiled result up to fp32 rounding of the weights (1e-6)."""
    def blockwise(z):
        return z[:, :3].repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)

    z = torch.randn(2, 32, 37, 50, generator=torch.Generator().manual_seed(3))
    for tile, overlap in ((16, 4), (16, 8), (24, 12), (25, 0), (37, 0)):  # (25, 0): tiles that just touch
        tiled = _decode_tiled(blockwise, z, tile, overlap)
        assert (tiled - blockwise(z)).abs().max() < 1e-6


def test_tiled_close_to_untiled(vae):
    """Tiles see their own GroupNorm/attention statistics, so tiling is approximate by design. The
    tiny random VAE is a harsh case (random weights amplify statistic shifts; tiles of 48 latent
    pixels barely exceed its ~14-pixel receptive radius). Measured at 384 px tiles, 192 px overlap
    on a 384x512 image: mean 0.004, max 0.054. Bounds: mean < 0.01 (~2.5/255), max < 0.15."""
    tokens = random_tokens(1, 24, 32)
    untiled = decode_tokens(vae, tokens, 24, 32)
    tiled = decode_tokens(vae, tokens, 24, 32, tile_size=384, tile_overlap=192)
    error = (tiled - untiled).abs()
    assert error.mean() < 0.01 and error.max() < 0.15


# --- batch-norm statistics report ----------------------------------------------------------------


def test_bn_report_finds_the_channel_order(oracle):
    state = official_bn_state(convert_diffusers_state_dict(oracle.state_dict()))
    assert compare_batch_norm(vae_from_state_dict(state, norm_groups=4)).matching_order() == "token"
    # The same numbers stored in Flux.2's (c, p_row, p_col) order, as ComfyUI would read them.
    flux2 = dict(state)
    for name in ("bn.running_mean", "bn.running_var"):
        flux2[name] = tokens_to_comfy(state[name].view(1, 1, 128), 1, 1).flatten()
    assert compare_batch_norm(vae_from_state_dict(flux2, norm_groups=4)).matching_order() == "flux2"
    # Statistics like the third-party "official Flux.2" ones (spec §E.2: mean ~ -0.07, std ~ 1.8).
    other = dict(state, **{"bn.running_mean": torch.full((128,), -0.07), "bn.running_var": torch.full((128,), 3.2)})
    report = compare_batch_norm(vae_from_state_dict(other, norm_groups=4))
    assert report.matching_order() is None and "differ" in report.summary()
    no_bn = {k: v for k, v in state.items() if not k.startswith("bn.")}
    assert compare_batch_norm(vae_from_state_dict(no_bn, norm_groups=4)) is None


# --- files that are not a Flux.2 VAE -------------------------------------------------------------


def test_decoder_only_file_decodes_but_cannot_encode(vae, oracle):
    state = {k: v for k, v in convert_diffusers_state_dict(oracle.state_dict()).items() if not k.startswith("encoder.")}
    decoder_only = vae_from_state_dict(state, norm_groups=4)
    tokens = random_tokens(1, 2, 3)
    assert torch.equal(decode_tokens(decoder_only, tokens, 2, 3), decode_tokens(vae, tokens, 2, 3))
    with pytest.raises(ValueError, match="no encoder"):
        encode_images(decoder_only, torch.rand(1, 32, 48, 3))


def test_flux1_vae_is_refused(tmp_path):
    flux1 = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                    block_out_channels=(8, 8), layers_per_block=1, latent_channels=16, norm_num_groups=4)
    path = tmp_path / "ae.safetensors"
    save_file({k: v.contiguous() for k, v in flux1.state_dict().items()}, path)
    with pytest.raises(Flux2VAEFileError, match=r"ae\.safetensors is not a Flux\.2 VAE: .*16 latent channels \(Flux\.1"):
        load_vae(path)


def test_dit_file_is_refused(tmp_path):
    path = tmp_path / "ideogram4_fp8_scaled.safetensors"
    save_file({"embed_image_indicator.weight": torch.zeros(4, 8), "layers.0.attention.qkv.weight": torch.zeros(24, 8)}, path)
    with pytest.raises(Flux2VAEFileError, match="Ideogram 4 diffusion transformer.*Expected a Flux.2 VAE"):
        load_vae(path)


def test_incomplete_or_mismatched_files(files, oracle, tmp_path):
    state = convert_diffusers_state_dict(oracle.state_dict())
    broken = {k: v.contiguous() for k, v in state.items() if k != "decoder.mid.attn_1.q.weight"}
    broken["decoder.up.0.block.0.conv1.bias"] = torch.zeros(7)
    path = tmp_path / "broken.safetensors"
    save_file(broken, path)
    with pytest.raises(Flux2VAEFileError, match=r"broken\.safetensors .*missing 1: decoder\.mid\.attn_1\.q\.weight"
                                                r".*wrong shape 1: decoder\.up\.0\.block\.0\.conv1\.bias \(7,\)"):
        load_vae(path, norm_groups=4)
    with pytest.raises(Flux2VAEFileError, match="3 groups cannot split"):
        load_vae(files["bfl"], norm_groups=3)


def test_unreadable_files_are_refused(tmp_path):
    pickle = tmp_path / "vae.ckpt"
    pickle.write_bytes(b"\x80\x04")
    garbage = tmp_path / "vae.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    for path, message in ((pickle, "only .safetensors"), (garbage, "not a readable safetensors"),
                          (tmp_path / "absent.safetensors", "does not exist")):
        with pytest.raises(Flux2VAEFileError, match=message):
            load_vae(path)
