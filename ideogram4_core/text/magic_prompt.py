"""Magic prompt: plain text in, a caption that passes the strict verifier out, generated locally by
the loaded Qwen3-VL with its LM head (spec §G).

    result = magic_prompt(model, tokenizer, "a fox reading a newspaper", MagicPromptOptions(seed=3),
                          device="cuda", on_token=callback)
    result.caption        # compact canonical JSON caption

The system prompt (prompts/*.txt) is this project's own text: it teaches the caption schema of
spec §G.3. The user turn gives the target aspect ratio (W:H reduced, as the official magic
prompt does) and the idea. Decoding is constrained to `caption_grammar.generation_schema`, and
`finish_caption` turns the result into the verified caption (the official expander strips bboxes;
here that is `bboxes="strip"`, and keeping them is the default).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..captions.verify import verify_caption
from ..constants import MAX_TEXT_TOKENS
from .caption_grammar import CaptionShape, generation_schema
from .constraint import CaptionConstraint
from .generate import Generated, Sampling, generate
from .generative import GenerativeQwen3VL
from .tokenizer import Qwen3VLTokenizer

PROMPTS_DIR = Path(__file__).with_name("prompts")
BBOX_CHOICES = ("keep", "strip")


@dataclass(frozen=True)
class CaptionRequest:
    """Options shared by the magic prompt and describe.

    bboxes: "keep" (every element gets one) or "strip" (generated, then removed, as the official
    magic prompt does). style: write a style_description. max_tokens bounds the generated caption.
    """

    bboxes: str = "keep"
    style: bool = True
    temperature: float = 0.7
    seed: int = 0
    max_tokens: int = 1024

    def __post_init__(self):
        if self.bboxes not in BBOX_CHOICES:
            raise ValueError(f"bboxes must be one of {BBOX_CHOICES}, got {self.bboxes!r}")

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, max_tokens=self.max_tokens)


@dataclass
class CaptionResult:
    caption: str  # verified, compact canonical JSON
    generated: Generated  # tokens, raw text and timings


@functools.lru_cache(maxsize=None)
def _prompt_file(name: str) -> str:
    return (PROMPTS_DIR / name).read_text(encoding="utf-8").strip()


def system_prompt(task: str) -> str:
    """The system turn for "magic_prompt" or "describe", with the caption format filled in."""
    return _prompt_file(f"{task}.txt").replace("{caption_format}", _prompt_file("caption_format.txt"))


def aspect_ratio(width: int, height: int) -> str:
    """"16:9" for 1920 x 1080: width:height reduced by their greatest common divisor."""
    divisor = math.gcd(int(width), int(height)) or 1
    return f"{int(width) // divisor}:{int(height) // divisor}"


def request_line(request: CaptionRequest) -> str:
    return "Include a style_description." if request.style else "Leave out style_description."


def magic_prompt_turn(prompt: str, width: int, height: int, request: CaptionRequest) -> str:
    """The user turn: target aspect ratio, what to include, then the idea verbatim."""
    return (f"Aspect ratio of the image (width:height): {aspect_ratio(width, height)}\n"
            f"{request_line(request)}\nIdea: {prompt.strip()}")


def finish_caption(text: str, strip_bboxes: bool) -> str:
    """The generated text as a verified caption. The grammar already fixes everything the strict
    verifier checks except min <= max inside a bbox; repair mode swaps such a pair (and would fix
    nothing else here), then the strict verifier has the last word."""
    repaired = verify_caption(text, mode="repair", plain_text="pass").data
    if strip_bboxes:
        for element in repaired["compositional_deconstruction"]["elements"]:
            element.pop("bbox", None)
    caption = verify_caption(repaired, mode="strict").caption
    return caption


def run_caption_generation(model: GenerativeQwen3VL, tokenizer: Qwen3VLTokenizer, prompt_ids: list[int],
                           shape: CaptionShape, request: CaptionRequest, *, device: torch.device | str,
                           image=None, on_token: Callable[[int], None] | None = None) -> CaptionResult:
    """Constrained generation of one caption, then `finish_caption`."""
    constraint = CaptionConstraint(tokenizer, model.config.vocab_size, generation_schema(shape))
    generated = generate(model, tokenizer, [prompt_ids], [constraint], [request.seed], request.sampling,
                         device=device, image=image, on_token=on_token)[0]
    caption = finish_caption(generated.text, strip_bboxes=request.bboxes == "strip")
    count = tokenizer.count_tokens(caption)
    if count > MAX_TEXT_TOKENS:
        raise ValueError(f"the generated caption is {count} tokens, over the text encoder's {MAX_TEXT_TOKENS}; "
                         "lower max_tokens")
    return CaptionResult(caption, generated)


def magic_prompt_ids(tokenizer: Qwen3VLTokenizer, prompt: str, width: int, height: int,
                     request: CaptionRequest) -> list[int]:
    """The framed prompt (system turn, user turn, assistant turn opened)."""
    if not prompt.strip():
        raise ValueError("the prompt is empty; write the idea for the picture")
    return tokenizer.frame_chat(system_prompt("magic_prompt"), magic_prompt_turn(prompt, width, height, request))


def magic_prompt(model: GenerativeQwen3VL, tokenizer: Qwen3VLTokenizer, prompt: str, request: CaptionRequest,
                 *, width: int = 1024, height: int = 1024, device: torch.device | str,
                 on_token: Callable[[int], None] | None = None) -> CaptionResult:
    """A caption for the idea `prompt` at the target size; see the module docstring."""
    ids = magic_prompt_ids(tokenizer, prompt, width, height, request)
    shape = CaptionShape(style=request.style, bboxes=True, palettes="optional")
    return run_caption_generation(model, tokenizer, ids, shape, request, device=device, on_token=on_token)
