"""Packed sequences for the two passes (spec §A.8, §B).

Conditional pass, per row b with n_b text tokens and L = max_b(n_b) + N image tokens:
    [left padding (max - n_b)] [text n_b] [image N]
Padding exists only when prompts of different lengths share a batch; only then is an attention
mask built (padding attends to itself alone), so a single caption runs unmasked and SDPA may use
its fastest kernel. The unconditional pass sees the image tokens alone and no text at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..constants import (
    IMAGE_POSITION_OFFSET,
    IMAGE_SEGMENT,
    LLM_TOKEN_INDICATOR,
    OUTPUT_IMAGE_INDICATOR,
    PADDING_INDICATOR,
    SEQUENCE_PADDING_SEGMENT,
)


@dataclass
class PackedLayout:
    """Everything but the tokens themselves: where text, image and padding sit in the sequence."""

    position_ids: torch.Tensor  # (B, L, 3) long: (t, h, w)
    indicator: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor | None  # (B, 1, L, L) bool, or None when nothing is padded
    text_len: int  # rows before the image region (max text length in the batch)

    def to(self, device) -> "PackedLayout":
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return PackedLayout(self.position_ids.to(device), self.indicator.to(device), mask, self.text_len)


def image_positions(grid_h: int, grid_w: int) -> torch.Tensor:
    """(N, 3) positions (65536, 65536 + row, 65536 + col), row-major."""
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1) + IMAGE_POSITION_OFFSET


def image_only_layout(batch: int, grid_h: int, grid_w: int) -> PackedLayout:
    """Layout of the unconditional pass: image tokens only, full attention."""
    n = grid_h * grid_w
    positions = image_positions(grid_h, grid_w).expand(batch, n, 3).clone()
    indicator = torch.full((batch, n), OUTPUT_IMAGE_INDICATOR, dtype=torch.long)
    return PackedLayout(positions, indicator, None, 0)


def conditional_layout(text_lengths: list[int], grid_h: int, grid_w: int) -> PackedLayout:
    """Layout of the conditional pass for prompts of the given token counts."""
    if not text_lengths or min(text_lengths) < 1:
        raise ValueError(f"every caption needs at least one token, got lengths {text_lengths}")
    batch, max_text, n = len(text_lengths), max(text_lengths), grid_h * grid_w
    length = max_text + n
    positions = torch.zeros(batch, length, 3, dtype=torch.long)
    indicator = torch.full((batch, length), PADDING_INDICATOR, dtype=torch.long)
    segments = torch.full((batch, length), SEQUENCE_PADDING_SEGMENT, dtype=torch.long)
    positions[:, max_text:] = image_positions(grid_h, grid_w)
    indicator[:, max_text:] = OUTPUT_IMAGE_INDICATOR
    for b, n_text in enumerate(text_lengths):
        start = max_text - n_text
        positions[b, start:max_text] = torch.arange(n_text).unsqueeze(1)
        indicator[b, start:max_text] = LLM_TOKEN_INDICATOR
        segments[b, start:] = IMAGE_SEGMENT
    mask = None
    if min(text_lengths) != max_text:
        mask = (segments.unsqueeze(2) == segments.unsqueeze(1)).unsqueeze(1)
    return PackedLayout(positions, indicator, mask, max_text)


def pack_text_features(features: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """(B, n, F) left-padded text features -> (B, L, F) with zeros over the image region.

    `features` must be left-padded to layout.text_len (as the text encoder returns them)."""
    batch, n, dim = features.shape
    if n != layout.text_len:
        raise ValueError(f"text features have {n} rows but the layout expects {layout.text_len}")
    image_rows = layout.indicator.shape[1] - n
    return torch.cat([features, features.new_zeros(batch, image_rows, dim)], dim=1)


def pack_image_tokens(tokens: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """(B, N, C) image tokens -> (B, L, C) with zeros over the text region."""
    if layout.text_len == 0:
        return tokens
    batch, _, channels = tokens.shape
    return torch.cat([tokens.new_zeros(batch, layout.text_len, channels), tokens], dim=1)
