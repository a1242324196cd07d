"""Latent layouts, the official normalisation, and the size rules."""

import pytest
import torch

from ideogram4_core.latents import (
    LATENT_SCALE,
    LATENT_SHIFT,
    comfy_to_tokens,
    denormalize,
    normalize,
    tokens_to_comfy,
    tokens_to_vae_latent,
    vae_latent_to_tokens,
)
from ideogram4_core.sizes import SizeError, check_size, latent_grid, nearest_valid_size


def test_constants_are_the_official_ones():
    assert len(LATENT_SHIFT) == len(LATENT_SCALE) == 128
    # Spot values from the official latent_norm.py (token order (p_row, p_col, c)).
    assert LATENT_SHIFT[0] == 0.01984364 and LATENT_SHIFT[32] == 0.02583857 and LATENT_SHIFT[127] == -0.01760592
    assert LATENT_SCALE[0] == 1.6393369 and LATENT_SCALE[127] == 1.6853345
    assert 1.53 < min(LATENT_SCALE) and max(LATENT_SCALE) < 1.941


def test_comfy_layout_channel_order():
    """ComfyUI channel 4c + 2 p_row + p_col holds token channel (2 p_row + p_col) * 32 + c."""
    grid_h, grid_w = 3, 5
    tokens = torch.randn(2, grid_h * grid_w, 128)
    comfy = tokens_to_comfy(tokens, grid_h, grid_w)
    assert comfy.shape == (2, 128, grid_h, grid_w)
    for c, pr, pc in [(0, 0, 0), (7, 1, 0), (31, 1, 1), (12, 0, 1)]:
        # token index r * grid_w + col sits at comfy[..., r, col]
        assert torch.equal(comfy[:, 4 * c + 2 * pr + pc, 2, 4], tokens[:, 2 * grid_w + 4, (2 * pr + pc) * 32 + c])
    assert torch.equal(comfy_to_tokens(comfy), tokens)


def test_vae_latent_patchify_round_trip_and_pixel_placement():
    grid_h, grid_w = 2, 3
    raw = torch.randn(1, 32, 2 * grid_h, 2 * grid_w)
    tokens = vae_latent_to_tokens(raw)
    assert tokens.shape == (1, grid_h * grid_w, 128)
    # token (r, col), patch (pr, pc), channel c = latent pixel (2r + pr, 2col + pc) of channel c
    r, col, pr, pc, c = 1, 2, 1, 0, 9
    assert tokens[0, r * grid_w + col, (2 * pr + pc) * 32 + c] == raw[0, c, 2 * r + pr, 2 * col + pc]
    assert torch.equal(tokens_to_vae_latent(tokens, grid_h, grid_w), raw)


def test_normalisation_round_trip():
    z = torch.randn(1, 6, 128)
    raw = denormalize(z)
    assert torch.allclose(raw[0, 0], z[0, 0] * torch.tensor(LATENT_SCALE) + torch.tensor(LATENT_SHIFT))
    assert torch.allclose(normalize(raw), z, atol=1e-6)


@pytest.mark.parametrize("size", [(256, 256), (2048, 2048), (1920, 1088), (1600, 400), (272, 1632), (2048, 352)])
def test_valid_sizes(size):
    check_size(*size)
    assert latent_grid(*size) == (size[1] // 16, size[0] // 16)


@pytest.mark.parametrize(
    "size, fragment, nearest",
    [
        ((1000, 1000), "not a multiple of 16", (1008, 1008)),
        ((128, 512), "outside 256-2048", (256, 512)),
        ((4096, 1024), "outside 256-2048", (2048, 1024)),
        ((2048, 256), "aspect ratio 8.00:1 exceeds 6:1", (2048, 352)),
        ((256, 1792), "aspect ratio 7.00:1", (304, 1792)),
    ],
)
def test_invalid_sizes_name_the_rule_and_a_valid_size(size, fragment, nearest):
    with pytest.raises(SizeError) as err:
        check_size(*size)
    message = str(err.value)
    assert fragment in message and "256-2048 px" in message and f"Nearest valid size: {nearest[0]}x{nearest[1]}" in message
    assert nearest_valid_size(*size) == nearest
    check_size(*nearest)


def test_non_integer_size_refused():
    with pytest.raises(SizeError, match="whole number"):
        check_size(1024.0, 1024)
