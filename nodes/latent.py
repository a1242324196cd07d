"""Empty latent at a checked Ideogram 4 size, with the official example sizes as presets."""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management

from ..ideogram4_core.constants import LATENT_CHANNELS, MAX_SIDE, MIN_SIDE, SIZE_MULTIPLE
from ..ideogram4_core.sizes import latent_grid
from .files import check_choice

CUSTOM = "custom (width x height below)"


def side_input(input_id: str, tooltip: str) -> io.Int.Input:
    """A width or height widget with the model's size limits (also used by the caption builder)."""
    return io.Int.Input(input_id, default=1024, min=MIN_SIDE, max=MAX_SIDE, step=SIZE_MULTIPLE, tooltip=tooltip)
# Sizes from the official docs (spec §E.3); each satisfies the size rules.
SIZE_PRESETS = {
    "1:1 1024x1024": (1024, 1024),
    "1:1 2048x2048 (highest quality)": (2048, 2048),
    "3:2 1536x1024": (1536, 1024),
    "2:3 1024x1536": (1024, 1536),
    "16:9 1920x1088": (1920, 1088),
    "9:16 1088x1920": (1088, 1920),
    "8:3 2048x768": (2048, 768),
    "4:7 1024x1792": (1024, 1792),
    "4:1 1600x400": (1600, 400),
}


class Ideogram4EmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4EmptyLatent",
            display_name="Ideogram 4 Empty Latent",
            category="Ideogram 4",
            description="An empty latent of a supported size: 256-2048 px per side, multiples of 16, "
            "aspect ratio at most 6:1.",
            inputs=[
                io.Combo.Input("size_preset", options=[CUSTOM, *SIZE_PRESETS], default="1:1 1024x1024",
                               tooltip="An official example size, or custom to use width and height."),
                side_input("width", f"Used with the custom preset: {MIN_SIDE}-{MAX_SIDE}, a multiple of {SIZE_MULTIPLE}."),
                side_input("height", f"Used with the custom preset: {MIN_SIDE}-{MAX_SIDE}, a multiple of {SIZE_MULTIPLE}."),
                io.Int.Input("batch_size", default=1, min=1, max=16, tooltip="Images per run."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent")],
        )

    @classmethod
    def validate_inputs(cls, size_preset):
        return check_choice("size_preset", size_preset, [CUSTOM, *SIZE_PRESETS])

    @classmethod
    def execute(cls, size_preset, width, height, batch_size) -> io.NodeOutput:
        if size_preset != CUSTOM:
            if size_preset not in SIZE_PRESETS:
                raise ValueError(f"unknown size preset {size_preset!r}; choose one of {', '.join(SIZE_PRESETS)}")
            width, height = SIZE_PRESETS[size_preset]
        grid_h, grid_w = latent_grid(width, height)
        samples = torch.zeros(batch_size, LATENT_CHANNELS, grid_h, grid_w,
                              device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples})
