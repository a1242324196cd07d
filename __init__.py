"""ComfyUI entry point for the Ideogram 4 node pack.

ComfyUI imports this folder as a package. Outside ComfyUI (pytest, plain Python) there is no
`comfy_api`, so nothing is registered and the import still succeeds.
"""

WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension  # noqa: F401  (present only inside ComfyUI)
except ImportError:  # not running inside ComfyUI
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import comfy_entrypoint  # noqa: F401

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"] if ComfyExtension is not None else ["WEB_DIRECTORY"]
