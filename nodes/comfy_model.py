"""Our DiT as a ComfyUI `MODEL`: a ModelPatcher around a BaseModel, so ComfyUI's memory manager
loads, offloads and accounts for it, and native samplers can drive it (flow matching, shift 1)."""

from __future__ import annotations

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base

from ..ideogram4_core.constants import MAX_TEXT_TOKENS
from ..ideogram4_core.latents import comfy_to_tokens, tokens_to_comfy
from ..ideogram4_core.memory import dit_inference_bytes, weight_bytes
from ..ideogram4_core.model.transformer import Ideogram4Transformer
from ..ideogram4_core.model.packing import conditional_layout, image_only_layout, pack_image_tokens
from .comfy_ops import make_offloadable
from .patcher import Ideogram4ModelPatcher


class Ideogram4ModelConfig(comfy.supported_models_base.BASE):
    # The DiT is built by our loader, never by ComfyUI from a config (see Ideogram4BaseModel).
    unet_config = {"disable_unet_model_creation": True}
    latent_format = comfy.latent_formats.Flux2  # 128 channels at /16; previews use its RGB factors
    sampling_settings = {"shift": 1.0, "multiplier": 1.0}  # sigma in, model time = 1 - sigma
    supported_inference_dtypes = [torch.bfloat16, torch.float32]


class ComfyDiT(torch.nn.Module):
    """ComfyUI's calling convention around our DiT: (B, 128, H/16, W/16) latents, sigma as the
    timestep, `context` = text features or None for the image-only unconditional pass. Returns
    what ComfyUI's flow (CONST) sampling expects: noise - x0 = -velocity, in latent layout.

    It is a second view of the very same modules, not a container: it shares the DiT's child,
    parameter and buffer tables, so the MODEL's state-dict keys are `diffusion_model.<original
    Ideogram key>` (e.g. `diffusion_model.layers.0.attention.qkv.weight`), the names ComfyUI's LoRA
    key map (`comfy.lora.model_lora_keys_unet`) and its weight patches expect, with no extra
    `dit.` level and no second copy of any weight. Whatever ComfyUI patches, moves or restores
    through these names is what the DiT itself runs with (`unwrap_dit`)."""

    def __init__(self, dit: Ideogram4Transformer):
        super().__init__()
        for table in ("_modules", "_parameters", "_buffers"):
            object.__setattr__(self, table, getattr(dit, table))
        object.__setattr__(self, "_dit", dit)  # a plain attribute: not a submodule, not in the state dict

    @property
    def dit(self) -> Ideogram4Transformer:
        return self._dit

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.compute_dtype

    def forward(self, x, timesteps, context=None, attention_mask=None, **_):
        batch, _, grid_h, grid_w = x.shape
        tokens = comfy_to_tokens(x)
        t = 1.0 - timesteps.float()
        if context is None:
            layout = image_only_layout(batch, grid_h, grid_w).to(x.device)
            v = self.dit(tokens, t, layout.indicator, layout.position_ids)
        else:
            lengths = [context.shape[1]] * batch
            if attention_mask is not None:  # left-padded captions of different lengths
                lengths = attention_mask.reshape(batch, -1).sum(dim=1).tolist()
            layout = conditional_layout([int(n) for n in lengths], grid_h, grid_w).to(x.device)
            # `context` covers the text rows only: the DiT never projects the all-zero image rows.
            v = self.dit(pack_image_tokens(tokens, layout), t, layout.indicator, layout.position_ids,
                         context, layout.attention_mask, rows_from=layout.text_len)
        return tokens_to_comfy(-v.float(), grid_h, grid_w)


class Ideogram4BaseModel(comfy.model_base.BaseModel):
    def __init__(self, dit: Ideogram4Transformer, device=None):
        super().__init__(Ideogram4ModelConfig(Ideogram4ModelConfig.unet_config), model_type=comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = ComfyDiT(dit)

    def get_dtype(self):
        return self.diffusion_model.dtype

    def memory_required(self, input_shape, cond_shapes={}):
        # For native samplers: a batch of cond + uncond passes over the longest caption seen.
        text = max([s[1] for s in cond_shapes.get("c_crossattn", []) if len(s) > 1] or [MAX_TEXT_TOKENS])
        batch, _, grid_h, grid_w = input_shape
        return dit_inference_bytes(self.diffusion_model.dit, batch, text + grid_h * grid_w, masked=True)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        mask = kwargs.get("attention_mask")
        if mask is not None and not bool(mask.all()):
            out["attention_mask"] = comfy.conds.CONDRegular(mask)
        return out


def wrap_dit(dit: Ideogram4Transformer) -> comfy.model_patcher.ModelPatcher:
    """A MODEL whose weights ComfyUI moves between the load and offload devices, whole or layer by
    layer (partial loading, --lowvram, --novram, --reserve-vram)."""
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    base = Ideogram4BaseModel(make_offloadable(dit), device=offload_device)
    return Ideogram4ModelPatcher(base, load_device, offload_device, size=weight_bytes(dit))


def unwrap_dit(model: comfy.model_patcher.ModelPatcher) -> Ideogram4Transformer:
    """The Ideogram 4 DiT inside a MODEL, or a clear error for any other model."""
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(inner, ComfyDiT):
        kind = type(getattr(model, "model", model)).__name__
        raise ValueError(
            f"this input needs an Ideogram 4 model from the 'Load Ideogram 4 Models' node, got a {kind} model"
        )
    return inner.dit
