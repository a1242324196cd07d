"""Thin ComfyUI adapters (V3 node API). No model math lives here: see `ideogram4_core`."""

from comfy_api.latest import ComfyExtension, io


class Ideogram4Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []


async def comfy_entrypoint() -> Ideogram4Extension:
    return Ideogram4Extension()
