"""The LoRA node: a LoRA file from ComfyUI's `loras` folder applied to the conditional and/or the
unconditional transformer through ComfyUI's own patch mechanism (clone + add_patches), so it is
removable (the graph without it gives the bit-identical image), chains with other LoRA nodes and
native model patches, and is applied by ComfyUI's model manager:
- bf16 / fp32 layers: merged into the weight when the model is loaded (ComfyUI keeps a backup and
  restores it for the unpatched model);
- FP8 / NF4 layers: applied on every call to the dequantised weight of that layer alone, never to
  the stored bytes (nodes/patcher.py), so a 9B model is never dequantised as a whole.
File formats and errors: ideogram4_core/lora."""

from __future__ import annotations

from collections import OrderedDict

from comfy_api.latest import io
from comfy.weight_adapter.lora import LoRAAdapter

from ..ideogram4_core.lora import LoraFile, linear_shapes, load_lora, patch_targets
from .comfy_model import unwrap_dit
from .files import check_model_name, file_fingerprint, first_problem, list_models, resolve_model

LORA_FOLDER = "loras"
NO_MARKERS: tuple[str, ...] = ()  # single .safetensors files only, no folders
MODEL_KEY_PREFIX = "diffusion_model."  # our MODEL's state-dict keys (nodes/comfy_model.ComfyDiT)
CACHE_SIZE = 4  # converted files kept in memory (a chain re-run with one strength changed reuses them)
_cache: OrderedDict = OrderedDict()


def cached_lora(path, shapes: dict) -> LoraFile:
    """The converted file, read again only when it changed on disk or the model has other shapes."""
    key = (file_fingerprint(path), tuple(sorted(shapes.items())))
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    lora = load_lora(path, shapes)
    _cache[key] = lora
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return lora


def apply_lora(model, lora_path, strength: float, which: str):
    """A clone of `model` with the LoRA added as ComfyUI weight patches of `strength`; returns
    (clone, LoraFile). `model` itself is left as it is."""
    dit = unwrap_dit(model)
    lora = cached_lora(lora_path, linear_shapes(dit))
    patches = {MODEL_KEY_PREFIX + key: LoRAAdapter(set(), (w.up, w.down, w.alpha, None, None, None))
               for key, w in patch_targets(dit, lora.layers).items()}
    patched = model.clone()
    added = patched.add_patches(patches, strength)
    missing = sorted(set(patches) - {k if isinstance(k, str) else k[0] for k in added})
    if missing:  # cannot happen for a model that unwrap_dit accepted; said loudly if it ever does
        raise RuntimeError(f"the {which} model has no weights {missing[:5]} for this LoRA")
    print(f"[Ideogram 4] LoRA {lora.path.name} ({lora.format}) on the {which} model, strength {strength:g}")
    return patched, lora


class Ideogram4LoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4LoraLoader",
            display_name="Ideogram 4 LoRA",
            category="Ideogram 4",
            description="Applies a LoRA (diffusers/peft, ai-toolkit, kohya, OneTrainer, musubi/SimpleTuner files) to "
            "the Ideogram 4 transformers: by default to the conditional one only, as diffusers does. Chain several. "
            "Works on bf16/fp32, FP8 and NF4 weights; removing the node gives the original image back.",
            inputs=[
                io.Model.Input("model", tooltip="The conditional transformer (from 'Load Ideogram 4 Models' or "
                               "another LoRA node)."),
                io.Model.Input("unconditional_model", optional=True,
                               tooltip="The unconditional transformer, passed through (patched only when "
                               "strength_uncond is not 0). Leave unconnected for distilled, guidance-free use."),
                io.Combo.Input("lora_name", options=list_models(LORA_FOLDER, NO_MARKERS),
                               tooltip="A .safetensors LoRA from models/loras (pickled .pt/.ckpt files are never read)."),
                io.Float.Input("strength_cond", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength on the conditional transformer (1 = as trained; diffusers' "
                               "set_adapters weight)."),
                io.Float.Input("strength_uncond", default=0.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength on the unconditional transformer. Keep 0: LoRAs are trained on "
                               "the conditional model, and patching both gives a saturated patch-mosaic image."),
            ],
            # V3 ids must differ from the input ids; the sockets still read model / unconditional_model.
            outputs=[io.Model.Output("model_out", display_name="model"),
                     io.Model.Output("unconditional_model_out", display_name="unconditional_model")],
        )

    @classmethod
    def validate_inputs(cls, lora_name, **_):
        return first_problem(check_model_name("lora_name", lora_name, LORA_FOLDER, NO_MARKERS))

    @classmethod
    def fingerprint_inputs(cls, lora_name, **_):
        return file_fingerprint(resolve_model(LORA_FOLDER, lora_name, NO_MARKERS))

    @classmethod
    def execute(cls, model, lora_name, strength_cond=1.0, strength_uncond=0.0,
                unconditional_model=None) -> io.NodeOutput:
        path = resolve_model(LORA_FOLDER, lora_name, NO_MARKERS)
        unwrap_dit(model)  # a clear error for a MODEL that is not an Ideogram 4 transformer
        if unconditional_model is not None:
            unwrap_dit(unconditional_model)
        if strength_cond != 0:
            model, _ = apply_lora(model, path, strength_cond, "conditional")
        if strength_uncond != 0:
            if unconditional_model is None:
                raise ValueError("strength_uncond is not 0 but no unconditional_model is connected")
            unconditional_model, _ = apply_lora(unconditional_model, path, strength_uncond, "unconditional")
        return io.NodeOutput(model, unconditional_model)
