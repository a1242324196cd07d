"""Image-to-image, inpainting and outpainting nodes: VAE Encode, Inpaint Crop / Stitch, Outpaint
Pad. The math is in `ideogram4_core.editing` and `ideogram4_core.vae`; see docs/editing.md."""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management

from ..ideogram4_core.constants import PIXELS_PER_TOKEN
from ..ideogram4_core.editing.crop import MODES, prepare_inpaint, stitch as stitch_crop
from ..ideogram4_core.editing.images import SIZE_MODES, fit_images, rgb
from ..ideogram4_core.editing.outpaint import FILLS, pad_for_outpaint
from ..ideogram4_core.latents import tokens_to_comfy
from ..ideogram4_core.memory import release_freed_heap
from ..ideogram4_core.vae import encode_images
from .files import check_choice
from .oom import oom_guard
from .vae import flux2_decoder

StitchType = io.Custom("IDEOGRAM4_STITCH")


class Ideogram4VAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4VAEEncode",
            display_name="Ideogram 4 VAE Encode",
            category="Ideogram 4",
            description="Image -> Ideogram 4 latent with a Flux.2 VAE and the official latent constants: the exact "
            "inverse of Ideogram 4 VAE Decode's conversion. For image-to-image and inpainting.",
            inputs=[
                io.Image.Input("pixels", tooltip="The image (batch). An alpha channel is ignored, as in ComfyUI's VAE "
                               "Encode; Load Image gives transparency as its MASK output."),
                io.Vae.Input("vae", tooltip="The Flux.2 VAE (flux2-vae.safetensors) from ComfyUI's Load VAE node."),
                io.Combo.Input("size_mode", options=list(SIZE_MODES), default="refuse",
                               tooltip="An image that is not a supported size (256-2048 px per side, multiples of "
                               "16, at most 6:1): refuse (error naming the nearest valid size), resize (scale, "
                               "keeping the aspect ratio, to multiples of 16) or crop (cut to multiples of 16 "
                               "around the centre). A supported size is never changed."),
                io.Int.Input("tile_size", default=0, min=0, max=4096, step=64,
                             tooltip="0 encodes in one piece (exactly as the reference). Otherwise tiles of this "
                             "many pixels with overlap, for large images on small GPUs."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent")],
        )

    @classmethod
    def validate_inputs(cls, size_mode):
        return check_choice("size_mode", size_mode, SIZE_MODES)

    @classmethod
    def execute(cls, pixels, vae, size_mode, tile_size) -> io.NodeOutput:
        images = fit_images(rgb(pixels), size_mode)
        batch, height, width, _ = images.shape
        with oom_guard("encoding the image", f"{width}x{height}, batch {batch}, tile_size {tile_size}"):
            model = flux2_decoder(vae)
            if model.encoder is None:
                raise ValueError("the connected VAE file has no encoder (a decoder-only file), so it cannot "
                                 "encode images; load the full flux2-vae.safetensors")
            device = comfy.model_management.vae_device()
            model.to(device)
            try:
                # One image at a time: the encoder's full-resolution activations dominate memory.
                tokens = [encode_images(model, images[i:i + 1].to(device), tile_size=tile_size or None)
                          for i in range(batch)]
            finally:
                model.to(comfy.model_management.vae_offload_device())
                release_freed_heap()
        grid_h, grid_w = height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN
        samples = tokens_to_comfy(torch.cat(tokens), grid_h, grid_w)
        return io.NodeOutput({"samples": samples.to(comfy.model_management.intermediate_device()), "ideogram4": True})


class Ideogram4InpaintCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4InpaintCrop",
            display_name="Ideogram 4 Inpaint Crop",
            category="Ideogram 4",
            description="Prepares inpainting: grows and feathers the mask, crops around it (or takes the whole "
            "image) and scales that to a supported size near the chosen resolution. Encode the image, sample "
            "with the mask, decode, then Ideogram 4 Inpaint Stitch puts the result back.",
            inputs=[
                io.Image.Input("image", tooltip="The image to inpaint."),
                io.Mask.Input("mask", tooltip="1 = regenerate (Load Image's mask: paint it in the Mask Editor)."),
                io.Combo.Input("mode", options=list(MODES), default=MODES[0],
                               tooltip="crop around mask: sample only the masked area plus context, at a good "
                               "size (best for small masks in large images); whole image: sample all of it."),
                io.Int.Input("grow", default=8, min=-256, max=256,
                             tooltip="Pixels to widen (or, negative, shrink) the mask by."),
                io.Int.Input("feather", default=16, min=0, max=256,
                             tooltip="Pixels over which the mask edge fades; the stitch blends new and old "
                             "pixels across it."),
                io.Int.Input("context", default=64, min=0, max=2048,
                             tooltip="crop around mask: pixels of surrounding picture the model sees on each side."),
                io.Int.Input("resolution", default=1024, min=0, max=2048, step=16,
                             tooltip="The crop is scaled to about this many pixels squared (1024: about 1 MP), "
                             "rounded to a supported size. 0 keeps its own scale."),
            ],
            outputs=[io.Image.Output("crop_image", display_name="image"), io.Mask.Output("crop_mask", display_name="mask"),
                     StitchType.Output("stitch_info", display_name="stitch")],
        )

    @classmethod
    def validate_inputs(cls, mode):
        return check_choice("mode", mode, MODES)

    @classmethod
    def execute(cls, image, mask, mode, grow, feather, context, resolution) -> io.NodeOutput:
        work, work_mask, info = prepare_inpaint(image, mask, grow, feather, mode, context, resolution)
        return io.NodeOutput(work, work_mask, info)


class Ideogram4InpaintStitch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4InpaintStitch",
            display_name="Ideogram 4 Inpaint Stitch",
            category="Ideogram 4",
            description="Puts an inpainted crop back into the original image; pixels outside the crop are never "
            "changed, and with blend only the (feathered) mask area takes new pixels.",
            inputs=[
                StitchType.Input("stitch", tooltip="From Ideogram 4 Inpaint Crop."),
                io.Image.Input("image", tooltip="The decoded result of sampling the crop."),
                io.Boolean.Input("blend", default=True,
                                 tooltip="On: new pixels only inside the feathered mask, blended across its edge "
                                 "(the rest of the crop stays exactly the original). Off: the whole crop."),
            ],
            outputs=[io.Image.Output("stitched_image", display_name="image")],
        )

    @classmethod
    def execute(cls, stitch, image, blend) -> io.NodeOutput:
        return io.NodeOutput(stitch_crop(stitch, image, blend))


class Ideogram4OutpaintPad(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        side = dict(default=0, min=0, max=2048, step=8)
        return io.Schema(
            node_id="Ideogram4OutpaintPad",
            display_name="Ideogram 4 Outpaint Pad",
            category="Ideogram 4",
            description="Extends the image on the chosen edges and outputs a mask of the new area, for "
            "Ideogram 4 Inpaint Crop.",
            inputs=[
                io.Image.Input("image", tooltip="The image to extend."),
                io.Int.Input("left", tooltip="Pixels to add on the left.", **side),
                io.Int.Input("top", tooltip="Pixels to add at the top.", **side),
                io.Int.Input("right", tooltip="Pixels to add on the right.", **side),
                io.Int.Input("bottom", tooltip="Pixels to add at the bottom.", **side),
                io.Combo.Input("fill", options=list(FILLS), default="edge",
                               tooltip="What the new area starts as: edge (repeat the edge pixels), mirror "
                               "(reflect the image), gray. Matters only at denoise below 1."),
                io.Int.Input("overlap", default=32, min=0, max=512,
                             tooltip="Pixels of the original, next to each new edge, that are regenerated too "
                             "(the mask fades over them) so the seam blends."),
            ],
            outputs=[io.Image.Output("padded_image", display_name="image"),
                     io.Mask.Output("padded_mask", display_name="mask")],
        )

    @classmethod
    def validate_inputs(cls, fill):
        return check_choice("fill", fill, FILLS)

    @classmethod
    def execute(cls, image, left, top, right, bottom, fill, overlap) -> io.NodeOutput:
        padded, mask = pad_for_outpaint(image, left, top, right, bottom, fill, overlap)
        return io.NodeOutput(padded, mask)
