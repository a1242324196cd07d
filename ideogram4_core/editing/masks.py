"""ComfyUI masks for inpainting: checks, grow, feather, and the per-token mask of the sampler.

- `grow(mask, px)`: px > 0 dilates, px < 0 erodes, by a (2|px|+1)² square (a separable max).
- `feather(mask, px)`: a Gaussian blur of standard deviation px / 2 cut at px, so the edge fades
  over about px pixels on each side and nothing reaches further than px.
- `token_mask`: a 16x16 px token is regenerated when any of its pixels has mask > 0; every other
  token is kept (`sampling.init_image`). A mask with no such token, or with nothing kept, is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import PIXELS_PER_TOKEN


class MaskError(ValueError):
    """A mask that cannot drive inpainting; the message says what to change."""


def as_masks(mask: torch.Tensor) -> torch.Tensor:
    """(H, W), (B, H, W) or (B, 1, H, W) -> (B, H, W) float32, checked to lie in [0, 1]."""
    if mask.dim() == 2:
        mask = mask[None]
    elif mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise MaskError(f"expected a MASK of shape (batch, height, width), got {tuple(mask.shape)}")
    mask = mask.float()
    if not bool(((mask >= 0) & (mask <= 1)).all()):  # also catches nan
        raise MaskError(f"mask values must lie in [0, 1] (1 = regenerate), got {mask.min().item():g} to "
                        f"{mask.max().item():g}")
    return mask


def check_pair(images: torch.Tensor, mask: torch.Tensor, what: str = "image") -> None:
    """The mask must have the image's size and a batch of 1 or the image's batch."""
    (b, h, w), (mb, mh, mw) = images.shape[:3], mask.shape
    if (mh, mw) != (h, w):
        hint = ("Use the mask that came with the image (Load Image's MASK output, or Ideogram 4 Inpaint Crop / "
                "Outpaint Pad, which output both at the same size).")
        if (mh, mw) == (64, 64) and not bool(mask.any()):
            hint = ("This is the empty 64x64 mask Load Image gives for a picture without transparency: paint the "
                    "area to change (right-click Load Image: Open in MaskEditor) or load a PNG with an alpha mask.")
        raise MaskError(f"the mask is {mw}x{mh} px but the {what} is {w}x{h} px: they must be the same size. {hint}")
    if mb not in (1, b):
        raise MaskError(f"{mb} masks for a batch of {b} images: give one mask, or one per image")


def check_not_empty(mask: torch.Tensor) -> None:
    for i, m in enumerate(mask):
        if not bool((m > 0).any()):
            which = "the mask" if len(mask) == 1 else f"mask {i + 1} of {len(mask)}"
            raise MaskError(f"{which} is empty (all zeros), so nothing would be regenerated. Paint the area "
                            "to change (right-click the Load Image node: Open in MaskEditor), or disconnect the "
                            "mask for image-to-image of the whole picture.")


def grow(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Dilate (px > 0) or erode (px < 0) (B, H, W) by |px| pixels (square neighbourhood)."""
    if px == 0:
        return mask
    if px < 0:
        return 1.0 - grow(1.0 - mask, -px)
    k = 2 * px + 1
    x = mask[:, None]
    x = F.max_pool2d(F.pad(x, (px, px, 0, 0), value=0.0), (1, k), stride=1)
    x = F.max_pool2d(F.pad(x, (0, 0, px, px), value=0.0), (k, 1), stride=1)
    return x[:, 0]


def _gaussian(px: int) -> torch.Tensor:
    offsets = torch.arange(-px, px + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / (px / 2.0)) ** 2)
    return (kernel / kernel.sum()).float()


def feather(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Blur (B, H, W) with a Gaussian (std px / 2, radius px); edges of the image are extended,
    so a mask touching the border stays 1 there."""
    if px <= 0:
        return mask
    kernel = _gaussian(px).to(mask.device)
    x = mask[:, None]
    x = F.conv2d(F.pad(x, (px, px, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, px, px), mode="replicate"), kernel.view(1, 1, -1, 1))
    # Exact zeros stay zeros beyond the radius; clamp the float error near 0 and 1.
    return x[:, 0].clamp(0.0, 1.0)


def token_mask(mask: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(B, 16·grid_h, 16·grid_w) pixel mask -> (B, grid_h·grid_w, 1) bool, True = regenerate (any
    pixel of the token > 0). Refuses a mask that regenerates nothing or keeps nothing."""
    mask = as_masks(mask)
    b, h, w = mask.shape
    if (h, w) != (grid_h * PIXELS_PER_TOKEN, grid_w * PIXELS_PER_TOKEN):
        raise MaskError(f"the mask is {w}x{h} px but the latent is {grid_w * PIXELS_PER_TOKEN}x"
                        f"{grid_h * PIXELS_PER_TOKEN} px: they must be the same size. Ideogram 4 Inpaint Crop "
                        "outputs the image to encode and its mask at the same size.")
    check_not_empty(mask)
    tokens = F.max_pool2d(mask[:, None], PIXELS_PER_TOKEN)[:, 0] > 0  # (B, grid_h, grid_w)
    for i, t in enumerate(tokens):
        if bool(t.all()):
            which = "the mask" if b == 1 else f"mask {i + 1} of {b}"
            raise MaskError(f"{which} covers the whole image (every 16 px block has masked pixels; lowest mask "
                            f"value {mask[i].min().item():g}), so nothing of the input would be kept. To change "
                            "everything, disconnect the mask and use denoise (image-to-image); to keep parts, "
                            "paint only what should change.")
    return tokens.reshape(b, grid_h * grid_w, 1)
