"""Latent layouts and the official normalisation (spec §E.2, Appendix A).

Three spaces meet here:
- model tokens: (B, N, 128) in (p_row, p_col, c) channel order, normalised; what the DiT sees;
- ComfyUI LATENT: (B, 128, H/16, W/16) in Flux.2's (c, p_row, p_col) channel order, same values;
- raw VAE latents: (B, 32, H/8, W/8), what the Flux.2 VAE decoder takes.
The official constants, not a VAE file's batch-norm statistics, map model tokens to raw latents.
"""

from __future__ import annotations

import torch

from .constants import PATCH_SIZE, VAE_CHANNELS

# Official per-channel constants in token order: index = (2 * p_row + p_col) * 32 + c.
# Decode: raw = z * LATENT_SCALE + LATENT_SHIFT; encode: z = (raw - LATENT_SHIFT) / LATENT_SCALE.
LATENT_SHIFT = (
    0.01984364, 0.10149707, 0.29689495, 0.27188619, -0.21445648, -0.15979549, 0.05021099, -0.15083604,
    -0.15360136, -0.20131799, 0.01922352, 0.0622626, 0.10140969, -0.06739428, 0.3758261, -0.233712,
    0.35164491, -0.02590912, -0.0271935, -0.10833897, -0.1476848, -0.01130957, -0.2298372, 0.23526423,
    -0.10893522, 0.11957631, 0.04047799, 0.3134589, -0.17225064, -0.18646109, -0.34691978, -0.03571246,
    0.02583857, 0.10190072, 0.28402294, 0.26952152, -0.21634675, -0.17938656, 0.04358909, -0.15007621,
    -0.1548502, -0.18971131, 0.02710861, 0.05609494, 0.10697846, -0.06854968, 0.38167698, -0.24269937,
    0.35705471, -0.03063305, -0.02946109, -0.11244286, -0.14336038, -0.01362137, -0.21863696, 0.23228983,
    -0.11739769, 0.11693044, 0.02563311, 0.31356594, -0.17420591, -0.19006285, -0.34905377, -0.04025005,
    0.01924137, 0.07652984, 0.2995608, 0.2628057, -0.22011674, -0.12715361, 0.04879879, -0.14075719,
    -0.15935895, -0.2123584, 0.01974813, 0.05523547, 0.10011992, -0.06428964, 0.37781868, -0.21491644,
    0.34254215, -0.03153528, -0.0310082, -0.10761415, -0.14730405, -0.02475182, -0.2285588, 0.2515081,
    -0.10445128, 0.12446, 0.07062869, 0.30880162, -0.18016875, -0.18869164, -0.34533499, -0.0129177,
    0.02578168, 0.07993659, 0.28642181, 0.26038408, -0.22459419, -0.14820155, 0.04059549, -0.14043529,
    -0.16111187, -0.2020305, 0.02602069, 0.04852717, 0.10432153, -0.06309942, 0.38402443, -0.22397003,
    0.34814481, -0.03774432, -0.03381438, -0.11245691, -0.14128767, -0.02853208, -0.21752016, 0.24872463,
    -0.11399775, 0.1222687, 0.05620835, 0.309178, -0.18065738, -0.19401479, -0.34495114, -0.01760592,
)
LATENT_SCALE = (
    1.6393369, 1.7020448, 1.7364257, 1.900048, 1.6675316, 1.6905958, 1.568532, 1.6231494,
    1.8910663, 1.5808667, 1.6082213, 1.6096299, 1.6332213, 1.5607436, 1.7341953, 1.7919265,
    1.6404063, 1.6680281, 1.603903, 1.7548049, 1.6318759, 1.6433459, 1.6172288, 1.6014605,
    1.6345922, 1.5529148, 1.687715, 1.6841566, 1.7896605, 1.6663164, 1.6562669, 1.6597643,
    1.6348761, 1.6951325, 1.7293376, 1.9131066, 1.6703506, 1.7228686, 1.5671925, 1.6193483,
    1.8862886, 1.5691154, 1.5945513, 1.6082987, 1.6247061, 1.5605285, 1.73677, 1.7756361,
    1.6373254, 1.6637053, 1.5950895, 1.7515395, 1.6302927, 1.6451767, 1.6165934, 1.5972204,
    1.6410312, 1.5408531, 1.6861039, 1.6777275, 1.7899856, 1.6662171, 1.6545896, 1.6604131,
    1.6471086, 1.681635, 1.7400029, 1.9278479, 1.6741119, 1.6739555, 1.5740653, 1.6219936,
    1.876182, 1.5584375, 1.5743878, 1.6171105, 1.630943, 1.5564403, 1.731243, 1.8066663,
    1.6463621, 1.6593201, 1.6081619, 1.7568267, 1.6469587, 1.6312172, 1.6138083, 1.6047865,
    1.6339603, 1.5350507, 1.6553429, 1.6713228, 1.803172, 1.6767314, 1.6570094, 1.6842626,
    1.6533972, 1.6754064, 1.732985, 1.9406735, 1.6789361, 1.7063512, 1.5730906, 1.6192855,
    1.8714881, 1.5624487, 1.5669715, 1.6158439, 1.627595, 1.5548038, 1.7348411, 1.7905514,
    1.6468877, 1.6612149, 1.6013589, 1.7525457, 1.6479833, 1.6298992, 1.6138159, 1.6079288,
    1.6393967, 1.5307576, 1.6537132, 1.6680119, 1.8002909, 1.6759148, 1.6565517, 1.6853345,
)


def _constant(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device)


def denormalize(tokens: torch.Tensor) -> torch.Tensor:
    """Model-space tokens -> raw VAE-latent tokens (still patchified), float32."""
    return tokens.float() * _constant(LATENT_SCALE, tokens) + _constant(LATENT_SHIFT, tokens)


def normalize(raw_tokens: torch.Tensor) -> torch.Tensor:
    """Raw VAE-latent tokens -> model-space tokens, float32."""
    return (raw_tokens.float() - _constant(LATENT_SHIFT, raw_tokens)) / _constant(LATENT_SCALE, raw_tokens)


def tokens_to_comfy(tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(B, N, 128) in (p_row, p_col, c) order -> (B, 128, grid_h, grid_w) in (c, p_row, p_col) order."""
    b = tokens.shape[0]
    grid = tokens.reshape(b, grid_h, grid_w, PATCH_SIZE, PATCH_SIZE, VAE_CHANNELS)
    return grid.permute(0, 5, 3, 4, 1, 2).reshape(b, -1, grid_h, grid_w)


def comfy_to_tokens(latent: torch.Tensor) -> torch.Tensor:
    """(B, 128, grid_h, grid_w) in (c, p_row, p_col) order -> (B, N, 128) in (p_row, p_col, c) order."""
    b, _, grid_h, grid_w = latent.shape
    grid = latent.reshape(b, VAE_CHANNELS, PATCH_SIZE, PATCH_SIZE, grid_h, grid_w)
    return grid.permute(0, 4, 5, 2, 3, 1).reshape(b, grid_h * grid_w, -1)


def tokens_to_vae_latent(raw_tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Unpatchify raw tokens (B, N, 128) -> (B, 32, 2 * grid_h, 2 * grid_w) for the VAE decoder."""
    b = raw_tokens.shape[0]
    grid = raw_tokens.reshape(b, grid_h, grid_w, PATCH_SIZE, PATCH_SIZE, VAE_CHANNELS)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(b, VAE_CHANNELS, grid_h * PATCH_SIZE, grid_w * PATCH_SIZE)


def vae_latent_to_tokens(latent: torch.Tensor) -> torch.Tensor:
    """Patchify (B, 32, H/8, W/8) raw latents -> (B, N, 128) raw tokens in (p_row, p_col, c) order."""
    b, c, height, width = latent.shape
    grid_h, grid_w = height // PATCH_SIZE, width // PATCH_SIZE
    grid = latent.reshape(b, c, grid_h, PATCH_SIZE, grid_w, PATCH_SIZE)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(b, grid_h * grid_w, -1)
