"""Output-size rules (spec §E.3): 256-2048 px per side, multiples of 16, aspect ratio at most 6:1."""

from __future__ import annotations

import math

from .constants import MAX_ASPECT_RATIO, MAX_SIDE, MIN_SIDE, PIXELS_PER_TOKEN, SIZE_MULTIPLE


class SizeError(ValueError):
    """An image size the model does not support; the message names the rule and a valid size."""


def nearest_valid_size(width: int, height: int) -> tuple[int, int]:
    """The closest supported (width, height): each side rounded to a multiple of 16 and clamped,
    then the short side raised until the aspect ratio is within 6:1."""

    def side(value: float) -> int:
        rounded = math.floor(value / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE  # ties round up
        return min(max(rounded, MIN_SIDE), MAX_SIDE)

    w, h = side(width), side(height)
    short_min = math.ceil(max(w, h) / MAX_ASPECT_RATIO / SIZE_MULTIPLE) * SIZE_MULTIPLE
    if w < h:
        w = max(w, short_min)
    else:
        h = max(h, short_min)
    return w, h


def check_size(width: int, height: int) -> None:
    """Raise SizeError unless (width, height) is a supported output size."""
    problems = []
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise SizeError(f"{name} must be a whole number of pixels, got {value!r}")
        if not MIN_SIDE <= value <= MAX_SIDE:
            problems.append(f"{name} {value} is outside {MIN_SIDE}-{MAX_SIDE} px")
        elif value % SIZE_MULTIPLE:
            problems.append(f"{name} {value} is not a multiple of {SIZE_MULTIPLE}")
    if not problems and max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        problems.append(f"aspect ratio {max(width, height) / min(width, height):.2f}:1 exceeds {MAX_ASPECT_RATIO:g}:1")
    if problems:
        w, h = nearest_valid_size(width, height)
        raise SizeError(
            f"unsupported size {width}x{height}: {'; '.join(problems)}. Ideogram 4 needs each side in "
            f"{MIN_SIDE}-{MAX_SIDE} px, a multiple of {SIZE_MULTIPLE}, and an aspect ratio of at most "
            f"{MAX_ASPECT_RATIO:g}:1. Nearest valid size: {w}x{h}."
        )


def latent_grid(width: int, height: int) -> tuple[int, int]:
    """(grid_h, grid_w) of 16 px tokens for a checked size."""
    check_size(width, height)
    return height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN
