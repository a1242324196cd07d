"""Thin ComfyUI adapters (V3 node API). No model math lives here: see `ideogram4_core`."""

from comfy_api.latest import ComfyExtension, io

from .caption import Ideogram4CaptionBuilder
from .editing import Ideogram4InpaintCrop, Ideogram4InpaintStitch, Ideogram4OutpaintPad, Ideogram4VAEEncode
from .latent import Ideogram4EmptyLatent
from .loaders import Ideogram4ModelLoader, Ideogram4TextEncoderLoader
from .lora import Ideogram4LoraLoader
from .prompting import Ideogram4Describe, Ideogram4MagicPrompt
from .sampling import Ideogram4Sampler
from .text import Ideogram4TextEncode
from .vae import Ideogram4VAEDecode

NODES = [
    Ideogram4ModelLoader,
    Ideogram4TextEncoderLoader,
    Ideogram4LoraLoader,
    Ideogram4TextEncode,
    Ideogram4CaptionBuilder,
    Ideogram4MagicPrompt,
    Ideogram4Describe,
    Ideogram4EmptyLatent,
    Ideogram4Sampler,
    Ideogram4VAEDecode,
    Ideogram4VAEEncode,
    Ideogram4InpaintCrop,
    Ideogram4InpaintStitch,
    Ideogram4OutpaintPad,
]


class Ideogram4Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> Ideogram4Extension:
    return Ideogram4Extension()
