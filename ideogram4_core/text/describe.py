"""Describe: an image in, a caption with bboxes and palettes out, for "remix this layout".

    result = describe(model, tokenizer, image, CaptionRequest(temperature=0.3), device="cuda")
    result.caption          # verified caption; bboxes locate elements in this image

The image goes through transformers' own Qwen2-VL image processor with Qwen3-VL's settings
(16-pixel patches, 2x2 merge, mean = std = 0.5; size rounded to multiples of 32 within
MIN_PIXELS..MAX_PIXELS), then through the vision tower of the loaded Qwen3-VL
(`GenerativeQwen3VL` with a vision tower). Decoding is constrained as for the magic prompt, with
bboxes and palettes required on every element and on the style block.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .caption_grammar import CaptionShape
from .generate import ImageInput
from .generative import GenerativeQwen3VL
from .magic_prompt import CaptionRequest, CaptionResult, aspect_ratio, request_line, run_caption_generation, system_prompt
from .tokenizer import Qwen3VLTokenizer

# Qwen3-VL's preprocessor settings (its preprocessor_config.json).
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)
# Pixel budget: at most 1024 x 1024 pixels, i.e. 4096 patches and 1024 image tokens for the
# 8B's 16-pixel patches merged 2 x 2; Qwen3-VL's own minimum of 256 x 256.
MAX_PIXELS = 1024 * 1024
MIN_PIXELS = 256 * 256


def _image_processor(vision_config):
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as Processor
    except ImportError:  # transformers before the PIL/torchvision split
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as Processor
    return Processor(patch_size=vision_config.patch_size, temporal_patch_size=vision_config.temporal_patch_size,
                     merge_size=vision_config.spatial_merge_size, image_mean=list(IMAGE_MEAN),
                     image_std=list(IMAGE_STD), size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})


def preprocess_image(image: torch.Tensor, vision_config) -> ImageInput:
    """(H, W, 3) float in 0..1 (a ComfyUI IMAGE row) -> pixel patches and their grid. The image is
    quantised to 8 bits first, as the reference processor expects a decoded picture."""
    if image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected one RGB image (height, width, 3), got shape {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    features = _image_processor(vision_config)(images=[np.ascontiguousarray(pixels)], return_tensors="pt",
                                               input_data_format="channels_last")
    return ImageInput(features["pixel_values"], features["image_grid_thw"].long())


def image_token_count(image: ImageInput, vision_config) -> int:
    return int(image.grid_thw.prod()) // vision_config.spatial_merge_size ** 2


def largest_image(vision_config) -> tuple[int, int]:
    """(patches, image tokens) of the largest image describe feeds the vision tower."""
    patches = MAX_PIXELS // vision_config.patch_size ** 2
    return patches, patches // vision_config.spatial_merge_size ** 2


def describe_turn(width: int, height: int, request: CaptionRequest) -> str:
    return (f"Aspect ratio of the image (width:height): {aspect_ratio(width, height)}\n"
            f"{request_line(request)}\nWrite the caption of this picture.")


def describe_ids(tokenizer: Qwen3VLTokenizer, width: int, height: int, request: CaptionRequest,
                 image_tokens: int) -> list[int]:
    """The framed prompt: system turn, the image and the request in the user turn, assistant opened."""
    return tokenizer.frame_chat(system_prompt("describe"), describe_turn(width, height, request),
                                image_tokens=image_tokens)


def describe(model: GenerativeQwen3VL, tokenizer: Qwen3VLTokenizer, image: torch.Tensor, request: CaptionRequest,
             *, device: torch.device | str, on_token: Callable[[int], None] | None = None) -> CaptionResult:
    """A caption of `image` ((H, W, 3), 0..1); see the module docstring."""
    if not model.has_vision:
        raise ValueError("describe needs a Qwen3-VL with its vision tower")
    inputs = preprocess_image(image, model.vision_config)
    ids = describe_ids(tokenizer, int(image.shape[1]), int(image.shape[0]), request,
                       image_token_count(inputs, model.vision_config))
    shape = CaptionShape(style=request.style, bboxes=True, palettes="required")
    return run_caption_generation(model, tokenizer, ids, shape, request, device=device, image=inputs,
                                  on_token=on_token)
