"""Decode Ideogram 4 latents with a Flux.2 VAE, applying the official latent constants rather than
the batch-norm statistics stored in the VAE file (spec §E.2)."""

from __future__ import annotations

import contextlib
import weakref

import torch

from comfy_api.latest import io

import comfy.model_management

from ..ideogram4_core.constants import LATENT_CHANNELS, PIXELS_PER_TOKEN
from ..ideogram4_core.latents import comfy_to_tokens
from ..ideogram4_core.memory import release_freed_heap
from ..ideogram4_core.vae import decode_tokens
from ..ideogram4_core.files.vae_file import compare_batch_norm, vae_from_state_dict
from . import faults
from .oom import oom_guard

# One converted decoder per ComfyUI VAE object, dropped with it.
_DECODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def flux2_decoder(vae):
    """Our Flux.2 autoencoder built from the weights ComfyUI's VAELoader read (kept on the VAE's
    offload device between runs)."""
    if vae not in _DECODERS:
        state = vae.get_sd()
        model = vae_from_state_dict(state, device=comfy.model_management.vae_offload_device(),
                                    dtype=vae.vae_dtype, source="the connected VAE")
        comparison = compare_batch_norm(model)
        if comparison is not None:
            print(f"[Ideogram 4] {comparison}")
        _DECODERS[vae] = model
    return _DECODERS[vae]


@contextlib.contextmanager
def _cancellable(decoder):
    """Check ComfyUI's Cancel flag before each decoder stage (and each tile), so a long decode on a
    slow device stops within one stage instead of running to the end."""
    def check(*_):
        comfy.model_management.throw_exception_if_processing_interrupted()

    stages = [m for name in ("mid", "up") for m in _children(decoder, name)]
    handles = [m.register_forward_pre_hook(check) for m in stages]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _children(decoder, name):
    module = getattr(decoder, name, None)
    if module is None:
        return []
    return list(module) if isinstance(module, torch.nn.ModuleList) else [module]


class Ideogram4VAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4VAEDecode",
            display_name="Ideogram 4 VAE Decode",
            category="Ideogram 4",
            description="Latent -> image with a Flux.2 VAE and Ideogram's official latent constants.",
            inputs=[
                io.Latent.Input("samples", tooltip="An Ideogram 4 latent (from the Ideogram 4 Sampler)."),
                io.Vae.Input("vae", tooltip="The Flux.2 VAE (flux2-vae.safetensors) from ComfyUI's Load VAE node."),
                io.Int.Input("tile_size", default=0, min=0, max=4096, step=64,
                             tooltip="0 decodes in one piece (exactly as the reference). Otherwise tiles of this "
                             "many pixels with overlap, for large images on small GPUs."),
            ],
            outputs=[io.Image.Output("image", display_name="image")],
        )

    @classmethod
    def execute(cls, samples, vae, tile_size) -> io.NodeOutput:
        latent = samples["samples"]
        if latent.ndim != 4 or latent.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"expected an Ideogram 4 latent of shape (B, {LATENT_CHANNELS}, H/16, W/16), got "
                             f"{tuple(latent.shape)}; connect the Ideogram 4 Sampler's output")
        batch, _, grid_h, grid_w = latent.shape
        size = f"{grid_w * PIXELS_PER_TOKEN}x{grid_h * PIXELS_PER_TOKEN}, batch {batch}, tile_size {tile_size}"
        with oom_guard("decoding", size):
            model = flux2_decoder(vae)
            device = comfy.model_management.vae_device()
            model.to(device)
            # test-only fault point before the full-resolution level, inert unless IDEOGRAM4_TEST_FAULT is set
            hook = faults.fault_before(model.decoder.up[0], "decode")
            try:
                with hook, _cancellable(model.decoder):
                    images = decode_tokens(model, comfy_to_tokens(latent).to(device), grid_h, grid_w,
                                           tile_size=tile_size or None)
            finally:
                model.to(comfy.model_management.vae_offload_device())
                # Decoding frees hundreds of MB of full-resolution temporaries (GBs at 2048^2 on a
                # CPU host); give them back instead of letting the server's resident memory keep them.
                release_freed_heap()
        return io.NodeOutput(images.to(comfy.model_management.intermediate_device()))
