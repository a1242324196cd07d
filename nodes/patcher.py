"""The ModelPatcher of our models (both DiTs and the text encoder), after `comfy_ops.make_offloadable`.

It is ComfyUI's own ModelPatcher (full, partial and lowvram loading, offload, memory accounting,
clones) with three changes, all about FP8 / NF4 layers, whose `weight` holds quantised bytes:

- Weight patches (LoRA, merges: `add_patches` on `<layer>.weight`) are never merged into the
  quantised storage. They are attached to the layer's `weight_function` list as ComfyUI's own
  `LowVramPatch`, the object ComfyUI uses for streamed layers, so the layer applies them to its
  dequantised weight on every call, resident or streamed. (ComfyUI would otherwise add the LoRA to
  the raw float8 / uint8 values.) Clones share the model and keep this class.
- The extra device memory a streamed quantised layer needs while it runs (its dequantised weight)
  is part of the offload cost ComfyUI plans for.
- Buffers (the text encoder's rotary frequencies) stay on the compute device in a partial load;
  ComfyUI moves only modules that have weights.
Plain bf16 / fp32 layers are patched and loaded exactly as by ComfyUI. A native LoRA loader's patch
set that would silently miss the split q/k/v parts of a diffusers-layout NF4 model is refused with a
message naming our LoRA node (`_refuse_lora_missing_split_qkv`).
"""

from __future__ import annotations

import comfy.model_patcher
import comfy.utils
from comfy.model_patcher import LowVramPatch

from ..ideogram4_core.model import quant


class Ideogram4ModelPatcher(comfy.model_patcher.ModelPatcher):
    def _quantized_layers(self):
        return [(name, m) for name, m in self.model.named_modules() if quant.is_quantized_layer(m)]

    def _quantized_layer(self, key: str):
        module_name, _, param = key.rpartition(".")
        if param != "weight":
            return None
        try:
            module = comfy.utils.get_attr(self.model, module_name)
        except AttributeError:
            return None
        return module if quant.is_quantized_layer(module) else None

    def _route_patches(self, layers=None) -> None:
        """Exactly one LowVramPatch of this patcher, first, on each patched quantised layer; none
        on unpatched ones and none left from another clone of the same model."""
        for name, layer in layers if layers is not None else self._quantized_layers():
            key = f"{name}.weight"
            functions = [f for f in layer.weight_function if not isinstance(f, LowVramPatch)]
            if key in self.patches:
                functions.insert(0, LowVramPatch(key, self.patches))
            layer.weight_function = functions

    def patch_weight_to_device(self, key, device_to=None, *args, **kwargs):
        layer = self._quantized_layer(key)
        if layer is None:
            return super().patch_weight_to_device(key, device_to, *args, **kwargs)
        self._route_patches([(key.rpartition(".")[0], layer)])
        return layer.weight  # what ComfyUI 0.33 returns for return_weight=True: the stored tensor

    def load(self, device_to=None, *args, **kwargs):
        super().load(device_to, *args, **kwargs)
        # load() wipes the function lists of layers it keeps resident and skips re-patching the
        # ones already patched: put the patches back wherever that removed them.
        self._route_patches()
        if device_to is not None:
            for name, buffer in list(self.model.named_buffers()):
                if buffer.device != device_to:
                    module_name, _, buffer_name = name.rpartition(".")
                    comfy.utils.get_attr(self.model, module_name)._buffers[buffer_name] = buffer.to(device_to)

    def partially_unload(self, *args, **kwargs):
        freed = super().partially_unload(*args, **kwargs)
        self._route_patches()  # ComfyUI appends a LowVramPatch to every layer it streams: no doubles
        return freed

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        super().unpatch_model(device_to, unpatch_weights)
        if unpatch_weights:
            for _, layer in self._quantized_layers():
                layer.weight_function = [f for f in layer.weight_function if not isinstance(f, LowVramPatch)]

    def _load_list(self, *args, **kwargs):
        dtype = self.model_dtype()
        entries = []
        for entry in super()._load_list(*args, **kwargs):
            extra = quant.dequantized_bytes(entry[-2], dtype) if dtype is not None else 0
            entries.append((entry[0] + extra, *entry[1:]) if extra else entry)
        return entries

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        _refuse_lora_missing_split_qkv(self.model, patches)
        return super().add_patches(patches, strength_patch, strength_model)

    def patch_hook_weight_to_device(self, hooks, combined_patches, key, *args, **kwargs):
        if key in combined_patches and self._quantized_layer(key) is not None:
            raise ValueError(
                f"hook (scheduled) weight patches cannot be applied to the FP8/NF4 layer {key}: use a "
                "regular LoRA loader with this model, or load the transformers in bfloat16")
        return super().patch_hook_weight_to_device(hooks, combined_patches, key, *args, **kwargs)


def _refuse_lora_missing_split_qkv(model, patches) -> None:
    """A diffusers-layout NF4 folder stores q, k and v as separate parts (quant.ConcatLinear,
    `attention.qkv.parts.N`). ComfyUI's LoRA key map knows only the model's own keys, so native
    loaders silently drop a LoRA's fused `attention.qkv` update there. A patch set that patches
    attention outputs but no qkv part is that case: refuse it, naming the node that can."""
    keys = [k if isinstance(k, str) else k[0] for k in patches]
    if any(".attention.o." in k for k in keys) and not any(".attention.qkv.parts." in k for k in keys):
        if any(isinstance(m, quant.ConcatLinear) for m in model.modules()):
            raise ValueError(
                "this Ideogram 4 model stores attention q/k/v as separate NF4 parts (a diffusers-layout folder), so "
                "ComfyUI's LoRA loaders cannot apply a LoRA's attention.qkv update to it and would skip it silently: "
                "use the 'Ideogram 4 LoRA' node (Ideogram4LoraLoader), which applies it to every weight kind")
