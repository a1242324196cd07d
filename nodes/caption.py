"""Caption builder node: fields + a drawn layout -> a verified JSON caption and a layout preview.

The web widget (web/ideogram4_caption_builder.js) edits the `layout` input, a JSON string that
ComfyUI saves in the workflow like any other widget value, so API users can pass the same text:

    {"version": 1,
     "color_palette": ["#1B1B2F", "#F5C542"],                       # global palette, <= 16
     "elements": [
      {"type": "obj", "bbox": [200, 300, 800, 900], "desc": "a red fox", "color_palette": ["#D35400"]},
      {"type": "text", "bbox": [40, 100, 160, 900], "text": "SALE", "desc": "bold sans-serif"}]}

Elements use the caption's own element keys (bbox [y_min, x_min, y_max, x_max], 0..1000 per axis);
every key is optional except that unknown keys are refused, so typos never vanish silently. A blank
layout ("") means "nothing drawn yet": then `import_caption`, when given, is the caption.
"""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..ideogram4_core.captions.build import STYLE_KINDS, build_caption
from ..ideogram4_core.captions.issues import CaptionError
from ..ideogram4_core.captions.preview import render_layout_preview
from ..ideogram4_core.captions.schema import ELEMENT_KEYS
from ..ideogram4_core.captions.verify import verify_caption
from .latent import side_input

LAYOUT_VERSION = 1
LAYOUT_KEYS = ("version", "color_palette", "elements")
STYLE_CHOICES = ["photo", "art_style", "none"]
assert set(STYLE_CHOICES) == set(STYLE_KINDS)
PREVIEW_LONG_EDGE = 512


class LayoutError(ValueError):
    """The layout string is not the editor's format (distinct from caption problems)."""


def parse_layout(layout: str) -> dict | None:
    """The layout as {"color_palette": [...], "elements": [...]}, or None when blank."""
    if not layout or not layout.strip():
        return None
    try:
        data = json.loads(layout)
    except ValueError as exc:
        raise LayoutError(f"layout is not valid JSON ({exc}). Fix: clear it, or use the builder's "
                          "canvas, which writes it for you.") from None
    if not isinstance(data, dict):
        raise LayoutError('layout must be a JSON object {"version": 1, "color_palette": [...], "elements": [...]}.')
    unknown = [k for k in data if k not in LAYOUT_KEYS]
    if unknown:
        raise LayoutError(f"layout has unknown keys {unknown}; allowed: {list(LAYOUT_KEYS)}.")
    if data.get("version", LAYOUT_VERSION) != LAYOUT_VERSION:
        raise LayoutError(f"layout version {data.get('version')!r} is not supported (expected {LAYOUT_VERSION}).")
    palette, elements = data.get("color_palette", []), data.get("elements", [])
    if not isinstance(palette, list) or not isinstance(elements, list):
        raise LayoutError("layout color_palette and elements must be lists.")
    for i, element in enumerate(elements):
        if not isinstance(element, dict):
            raise LayoutError(f"layout elements[{i}] must be an object.")
        bad = sorted(set(element) - ELEMENT_KEYS)
        if bad:
            raise LayoutError(f"layout elements[{i}] has unknown keys {bad}; allowed: {sorted(ELEMENT_KEYS)}.")
    return {"color_palette": palette, "elements": elements}


def caption_from_inputs(layout: str, import_caption: str, fields: dict) -> tuple[dict | str, list[str]]:
    """What to verify: a caption dict built from the fields and layout, or the imported text."""
    parsed = parse_layout(layout)
    if parsed is None and import_caption and import_caption.strip():
        return import_caption, ["layout is blank: using import_caption as the caption (node fields ignored)."]
    parsed = parsed or {"color_palette": [], "elements": []}
    # build_caption keeps a palette in a style block even with style "none", so the verifier
    # reports the missing style fields instead of the colours disappearing.
    caption = build_caption(**fields, color_palette=parsed["color_palette"], elements=parsed["elements"])
    return caption, []


class Ideogram4CaptionBuilder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4CaptionBuilder",
            display_name="Ideogram 4 Caption Builder",
            category="Ideogram 4",
            description="Build a structured JSON caption: draw element boxes on the canvas, edit their text, "
            "description and colours, set the style. The caption is checked (safe repairs applied, "
            "anything else refused) before it leaves the node.",
            inputs=[
                io.String.Input("high_level_description", multiline=True, default="",
                                tooltip="One or two sentences summarising the whole image."),
                io.Combo.Input("style", options=STYLE_CHOICES, default="photo",
                               tooltip="Which style block to write: photo (camera details) or art_style; "
                               "none writes no style block (then leave the global palette empty)."),
                io.String.Input("photo_or_art_style", default="",
                                tooltip="The photo value (e.g. '35mm, f/1.4, bokeh') or the art_style value "
                                "(e.g. 'flat vector illustration'), following `style`."),
                io.String.Input("aesthetics", default="", tooltip="Aesthetic keywords, e.g. 'moody, cinematic'."),
                io.String.Input("lighting", default="", tooltip="Lighting, e.g. 'golden hour, rim light'."),
                io.String.Input("medium", default="",
                                tooltip="e.g. photograph, illustration, 3d_render, painting, graphic_design."),
                io.String.Input("background", multiline=True, default="",
                                tooltip="The backdrop behind the elements."),
                side_input("width", "Target image width in pixels: sets the canvas aspect ratio and the preview."),
                side_input("height", "Target image height in pixels: sets the canvas aspect ratio and the preview."),
                io.String.Input("layout", multiline=True, default="",
                                tooltip='Editor state, written by the canvas: {"version":1,"color_palette":[...],'
                                '"elements":[{"type","bbox":[y_min,x_min,y_max,x_max] on 0..1000,"text","desc",'
                                '"color_palette"}]}. Blank means nothing drawn (import_caption is used).'),
                io.String.Input("import_caption", multiline=True, default="", optional=True,
                                tooltip="An existing caption (any tool's, fences and trailing commas are fine). "
                                "The Import button loads it into the editor; when the layout is blank it is "
                                "used as the caption itself."),
            ],
            outputs=[
                io.String.Output("caption", display_name="caption",
                                 tooltip="The JSON caption, verified in repair mode: compact when built from the "
                                 "fields and layout; an imported caption that needs no repair, as written."),
                io.Image.Output("layout_preview", display_name="layout_preview",
                                tooltip="The boxes and palettes at the target aspect ratio."),
            ],
        )

    @classmethod
    def validate_inputs(cls, style=None, layout=None):
        # Runs at POST /prompt, so a bad layout is refused before anything runs. ComfyUI 0.3.75
        # does not check V3 combo values itself, hence `style`. Linked inputs arrive as None.
        # Caption rules are checked in execute, where every issue can be listed.
        if style is not None and style not in STYLE_CHOICES:
            return f"style: {style!r} is not one of {STYLE_CHOICES}"
        try:
            parse_layout(layout if isinstance(layout, str) else "")
        except LayoutError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, high_level_description, style, photo_or_art_style, aesthetics, lighting, medium,
                background, width, height, layout, import_caption="") -> io.NodeOutput:
        fields = dict(high_level_description=high_level_description, background=background, style=style,
                      photo=photo_or_art_style if style == "photo" else "",
                      art_style=photo_or_art_style if style == "art_style" else "",
                      aesthetics=aesthetics, lighting=lighting, medium=medium)
        source, notes = caption_from_inputs(layout, import_caption, fields)
        try:
            result = verify_caption(source, mode="repair", plain_text="wrap")
        except CaptionError as exc:
            raise CaptionError(exc.issues, "Ideogram 4 Caption Builder: caption refused, fix these in the "
                               "editor (paths are caption JSON paths; elements[i] is box i+1)") from None
        preview = render_layout_preview(result.data or result.caption, width, height, PREVIEW_LONG_EDGE)
        report = "\n".join(notes + ([result.report()] if result.issues else ["caption OK"]))
        return io.NodeOutput(result.caption, preview.unsqueeze(0), ui={"ideogram4_report": [report]})


def parse_for_editor(text: str) -> dict:
    """An existing caption parsed for the editor: repaired when possible, else as written."""
    try:
        result = verify_caption(text, mode="repair", plain_text="wrap")
    except CaptionError as exc:
        # Refused captions still load (as written) so the user can fix them on the canvas.
        try:
            result = verify_caption(text, mode="warn", plain_text="wrap")
        except CaptionError:  # too large or too deep: nothing to load
            result = None
        if result is None or result.data is None:
            return {"ok": False, "data": None, "report": str(exc)}
    return {"ok": result.ok, "data": result.data, "report": result.report()}


def _register_routes() -> None:
    """POST /ideogram4/parse_caption {"caption": text}: the Import button uses the core parser."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:  # not inside a ComfyUI server
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return

    @server.routes.post("/ideogram4/parse_caption")
    async def parse_caption_route(request):
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"ok": False, "data": None, "report": "request body is not JSON"}, status=400)
        text = body.get("caption") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return web.json_response({"ok": False, "data": None, "report": "expected {\"caption\": text}"}, status=400)
        return web.json_response(parse_for_editor(text))


_register_routes()
