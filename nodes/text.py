"""Caption -> CONDITIONING: checks the caption, counts its tokens, runs the text encoder and moves
it off the accelerator again."""

from __future__ import annotations

from comfy_api.latest import io

import comfy.model_management

from ..ideogram4_core.captions.issues import CaptionError
from ..ideogram4_core.captions.parse import refuse_unbounded
from ..ideogram4_core.captions.verify import CAPTION_FORMATS, DEFAULT_CAPTION_FORMAT, verify_caption
from ..ideogram4_core.memory import text_encoder_inference_bytes
from . import faults
from .files import check_choice, first_problem
from .loaders import TextEncoderType
from .oom import oom_guard

CAPTION_CHECKS = ["repair", "strict", "warn"]
PLAIN_TEXT = ["wrap", "pass"]
FORMATS = list(CAPTION_FORMATS)


def unload(patcher) -> None:
    """Move one model back to its offload device through ComfyUI's own bookkeeping."""
    loaded = comfy.model_management.current_loaded_models
    for i, entry in enumerate(loaded):
        if entry.model is patcher:
            loaded.pop(i).model_unload()
            return


class Ideogram4TextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4TextEncode",
            display_name="Ideogram 4 Text Encode",
            category="Ideogram 4",
            description="Checks a JSON caption, then encodes it with Qwen3-VL (13 tapped layers).",
            inputs=[
                TextEncoderType.Input("text_encoder", tooltip="From 'Load Ideogram 4 Text Encoder'."),
                io.String.Input("caption", multiline=True, tooltip="The structured JSON caption Ideogram 4 was "
                                "trained on (see the caption builder). At most 2048 tokens with chat framing."),
                io.Combo.Input("caption_check", options=CAPTION_CHECKS, default="repair",
                               tooltip="repair: apply only safe fixes (key order, hex case, bbox clamping/swaps, "
                               "unknown keys) and report them; strict: refuse any problem; warn: report, change nothing."),
                io.Combo.Input("plain_text", options=PLAIN_TEXT, default="wrap",
                               tooltip="A caption that is not JSON: wrap it as the high_level_description of a "
                               "minimal caption (the model only saw JSON), or pass it through unchanged."),
                io.Combo.Input("caption_format", options=FORMATS, default=DEFAULT_CAPTION_FORMAT, optional=True,
                               tooltip="as_written: a caption that needs no repair is encoded exactly as typed, as "
                               "diffusers and the official pipeline do; only a repaired caption is re-serialised "
                               "(reported). compact: always re-serialise to compact one-line JSON (another input "
                               "to the model, so another image)."),
            ],
            outputs=[
                io.Conditioning.Output("conditioning", display_name="conditioning"),
                io.Int.Output("token_count", display_name="token_count"),
                io.String.Output("caption_report", display_name="caption_report"),
            ],
        )

    @classmethod
    def validate_inputs(cls, caption_check, plain_text, caption=None, caption_format=DEFAULT_CAPTION_FORMAT):
        return first_problem(check_choice("caption_check", caption_check, CAPTION_CHECKS),
                             check_choice("plain_text", plain_text, PLAIN_TEXT),
                             check_choice("caption_format", caption_format, FORMATS),
                             _caption_bounds(caption))

    @classmethod
    def execute(cls, text_encoder, caption, caption_check, plain_text,
                caption_format=DEFAULT_CAPTION_FORMAT) -> io.NodeOutput:
        result = verify_caption(caption, mode=caption_check, plain_text=plain_text, caption_format=caption_format)
        report = result.report() if result.issues else "caption OK"
        if result.issues:
            print(f"[Ideogram 4] caption check:\n{report}")
        encoder = text_encoder.encoder
        tokens = len(encoder.tokenize(result.caption))  # refuses > 2048 tokens before any model is loaded
        with oom_guard("encoding"):
            comfy.model_management.load_models_gpu(
                [text_encoder.patcher], memory_required=text_encoder_inference_bytes(encoder.language_model, tokens))
            try:
                encoded = encoder.encode(result.caption)
                faults.fault_point("encode")  # test-only, inert unless IDEOGRAM4_TEST_FAULT is set
            finally:
                unload(text_encoder.patcher)  # the DiTs need the room; the encoder is done
        features = encoded.features.to(comfy.model_management.intermediate_device())
        count = encoded.token_counts[0]
        conditioning = [[features, {"ideogram4_token_counts": [count]}]]
        return io.NodeOutput(conditioning, count, report)


def _caption_bounds(caption) -> bool | str:
    """At POST /prompt: refuse a caption too large or too deeply nested before it is parsed (a
    linked caption arrives as None and is checked when the node runs)."""
    if not isinstance(caption, str):
        return True
    try:
        refuse_unbounded(caption)
    except CaptionError as err:
        return str(err)
    return True
