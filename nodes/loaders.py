"""Loader nodes: the two diffusion transformers, and the Qwen3-VL text encoder."""

from __future__ import annotations

import warnings

import torch
from comfy_api.latest import io

import comfy.model_management

from ..ideogram4_core.files.checkpoint import load_transformer, load_transformer_pair
from ..ideogram4_core.files.errors import SameCheckpointWarning
from ..ideogram4_core.memory import weight_bytes
from ..ideogram4_core.text.encoder import load_text_encoder
from .comfy_model import wrap_dit
from .comfy_ops import make_offloadable
from .patcher import Ideogram4ModelPatcher
from . import faults
from .files import check_choice, check_model_name, file_fingerprint, first_problem, list_models, resolve_model
from .oom import oom_guard

TextEncoderType = io.Custom("IDEOGRAM4_TEXT_ENCODER")

DIT_FOLDER = "diffusion_models"
DIT_MARKERS = ("transformer", "unconditional_transformer", "diffusion_pytorch_model.safetensors",
               "diffusion_pytorch_model.safetensors.index.json")
TE_FOLDER = "text_encoders"
TE_MARKERS = ("config.json", "text_encoder")
FROM_FOLDER = "(unconditional_transformer/ of the same folder)"
NO_UNCONDITIONAL = "(none: conditional model only)"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
DIT_QUANT = {"as stored": "as_stored", "nf4": "nf4", "fp8": "fp8"}
TE_QUANT = ["auto", "none", "fp8", "nf4"]


class Ideogram4ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        models = list_models(DIT_FOLDER, DIT_MARKERS)
        return io.Schema(
            node_id="Ideogram4ModelLoader",
            display_name="Load Ideogram 4 Models",
            category="Ideogram 4",
            description="Loads the conditional and unconditional Ideogram 4 transformers (official NF4/FP8 "
            "folders, diffusers folders, Comfy-Org single files, plain bf16 files).",
            inputs=[
                io.Combo.Input("model_name", options=models, tooltip="A model folder from models/diffusion_models "
                               "(official or diffusers layout, with transformer/ and unconditional_transformer/), "
                               "or the conditional single file, e.g. ideogram4_fp8_scaled.safetensors."),
                io.Combo.Input("unconditional_model_name", options=[FROM_FOLDER, NO_UNCONDITIONAL] + models,
                               default=FROM_FOLDER, tooltip="The unconditional transformer used for guidance: "
                               "taken from the same folder, a single file such as "
                               "ideogram4_unconditional_fp8_scaled.safetensors, or none (guidance off)."),
                io.Combo.Input("quantization", options=list(DIT_QUANT), default="as stored",
                               tooltip="Keep the file's format, or quantise a bf16/fp32 file while loading "
                               "(NF4 about 5.2 GB, FP8 about 9.3 GB per transformer)."),
                io.Combo.Input("compute_dtype", options=list(DTYPES), default="bfloat16",
                               tooltip="Activation dtype: bfloat16 as the reference; float32 for exact checks."),
            ],
            outputs=[io.Model.Output("model", display_name="model"),
                     io.Model.Output("unconditional_model", display_name="unconditional_model")],
        )

    @classmethod
    def validate_inputs(cls, model_name, unconditional_model_name, quantization, compute_dtype):
        return first_problem(
            check_model_name("model_name", model_name, DIT_FOLDER, DIT_MARKERS),
            unconditional_model_name in (FROM_FOLDER, NO_UNCONDITIONAL)
            or check_model_name("unconditional_model_name", unconditional_model_name, DIT_FOLDER, DIT_MARKERS),
            check_choice("quantization", quantization, DIT_QUANT),
            check_choice("compute_dtype", compute_dtype, DTYPES),
        )

    @classmethod
    def fingerprint_inputs(cls, model_name, unconditional_model_name, **_):
        names = [n for n in (model_name, unconditional_model_name) if n not in (FROM_FOLDER, NO_UNCONDITIONAL)]
        return "|".join(file_fingerprint(resolve_model(DIT_FOLDER, n, DIT_MARKERS)) for n in names)

    @classmethod
    def execute(cls, model_name, unconditional_model_name, quantization, compute_dtype) -> io.NodeOutput:
        options = dict(quantization=DIT_QUANT[quantization], compute_dtype=DTYPES[compute_dtype])
        path = resolve_model(DIT_FOLDER, model_name, DIT_MARKERS)
        with warnings.catch_warnings(record=True) as caught, oom_guard("loading", model_name):
            warnings.simplefilter("always", SameCheckpointWarning)
            if unconditional_model_name == FROM_FOLDER:
                if not (path / "unconditional_transformer").is_dir():
                    raise ValueError(f"{model_name} has no unconditional_transformer/ folder: pick the unconditional "
                                     "file in 'unconditional_model_name', or choose none")
                cond, uncond = load_transformer_pair(path, **options)
            elif unconditional_model_name == NO_UNCONDITIONAL:
                cond, uncond = load_transformer(path, component=_component(path), **options), None
            else:
                uncond_path = resolve_model(DIT_FOLDER, unconditional_model_name, DIT_MARKERS)
                cond, uncond = load_transformer_pair(path, uncond_path, **options)
            faults.fault_point("load")  # test-only, inert unless IDEOGRAM4_TEST_FAULT is set
        for w in caught:
            print(f"[Ideogram 4] warning: {w.message}")
        return io.NodeOutput(wrap_dit(cond), None if uncond is None else wrap_dit(uncond))


def _component(path):
    return "transformer" if (path / "transformer").is_dir() else None


class _PatchableModule(torch.nn.Module):
    """ModelPatcher assigns `model.device`, which transformers models expose read-only; this holder
    gives it a plain attribute while moving the very same language model."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.device = next(module.parameters()).device
        self.dtype = dtype

    def get_dtype(self) -> torch.dtype:  # the compute dtype, for ModelPatcher.model_dtype()
        return self.dtype


class TextEncoderHandle:
    """The loaded encoder plus a ModelPatcher so ComfyUI accounts for its memory and moves it,
    whole or layer by layer (partial loading, --lowvram, --novram)."""

    def __init__(self, encoder):
        self.encoder = encoder
        make_offloadable(encoder.language_model)
        self.patcher = Ideogram4ModelPatcher(
            _PatchableModule(encoder.language_model, encoder.dtype),
            load_device=comfy.model_management.text_encoder_device(),
            offload_device=comfy.model_management.text_encoder_offload_device(),
            size=weight_bytes(encoder.language_model),
        )
        encoder.execution_device = self.patcher.load_device


class Ideogram4TextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4TextEncoderLoader",
            display_name="Load Ideogram 4 Text Encoder",
            category="Ideogram 4",
            description="Loads the Qwen3-VL-8B language model with an offline tokenizer. The LM head and the vision "
            "tower are not loaded here; Magic Prompt and Describe read them when they run.",
            inputs=[
                io.Combo.Input("text_encoder_name", options=list_models(TE_FOLDER, TE_MARKERS),
                               tooltip="From models/text_encoders: qwen3vl_8b_fp8_scaled.safetensors, a bf16 "
                               "single file, or a Qwen3-VL folder (the official release's text_encoder/)."),
                io.Combo.Input("quantization", options=TE_QUANT, default="auto",
                               tooltip="auto keeps the file's format; none dequantises to the compute dtype; "
                               "fp8/nf4 quantise a bf16 file while loading (NF4 needs about 4.5 GB)."),
                io.Combo.Input("compute_dtype", options=list(DTYPES), default="bfloat16",
                               tooltip="Activation dtype: bfloat16 as the reference; float32 for exact checks."),
            ],
            outputs=[TextEncoderType.Output("text_encoder", display_name="text_encoder")],
        )

    @classmethod
    def validate_inputs(cls, text_encoder_name, quantization, compute_dtype):
        return first_problem(
            check_model_name("text_encoder_name", text_encoder_name, TE_FOLDER, TE_MARKERS),
            check_choice("quantization", quantization, TE_QUANT),
            check_choice("compute_dtype", compute_dtype, DTYPES),
        )

    @classmethod
    def fingerprint_inputs(cls, text_encoder_name, **_):
        return file_fingerprint(resolve_model(TE_FOLDER, text_encoder_name, TE_MARKERS))

    @classmethod
    def execute(cls, text_encoder_name, quantization, compute_dtype) -> io.NodeOutput:
        path = resolve_model(TE_FOLDER, text_encoder_name, TE_MARKERS)
        with oom_guard("loading", text_encoder_name):
            encoder = load_text_encoder(path, device=comfy.model_management.text_encoder_offload_device(),
                                        dtype=DTYPES[compute_dtype], quantize=quantization)
        return io.NodeOutput(TextEncoderHandle(encoder))
