"""Build a workflow template, the UI workflow and its thumbnail, from its API-format twin.

    python scripts/make_template.py image_ideogram4_t2i      # one template (several names: several)
    python scripts/make_template.py --all                    # every api_workflows/*_api.json
    python scripts/make_template.py NAME --no-thumbnail      # the workflow only

Reads   api_workflows/<name>_api.json  the graph and every value (edit this one; the source of truth)
        api_workflows/<name>.note.txt  the text of the template's "Read me" note (optional);
                                       a line `{model_files}` becomes the shared model-file guide
Writes  workflows/<name>.json          the UI-format workflow ComfyUI lists as a template
        workflows/<name>.jpg           its thumbnail: the workflow as the real front end draws it

It boots a temporary ComfyUI test host (tests/comfy_host.py) serving --frontend (default: the
newest tested release, installed by `scripts/setup_comfyui.sh --frontend 1.58.1`) and opens it in
Debian's Chromium through Playwright. Socket and widget order, slot types and output names come
from the server's /object_info; node sizes from the front end itself (each node's computeSize once
loaded); columns from the graph (`arrange`). The conventions are in docs/workflows.md.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

API_DIR = REPO / "api_workflows"  # not a folder ComfyUI lists templates from
TEMPLATE_DIR = REPO / "workflows"  # ComfyUI lists every *.json directly in here
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")  # the front end adds "control after generate" to these
SEED_CONTROL = "fixed"  # so the first run gives the API twin's image; switch to randomize in the UI
NOTE_WIDTH, GAP_X, GAP_Y, MARGIN, TITLE_HEIGHT = 440, 60, 50, 40, 30
OPEN_ZOOM, OPEN_AT = 0.7, (80, 100)  # the saved view: the graph's top-left corner at these pixels
MIN_SIZE = {"SaveImage": (520, 580), "PreviewImage": (520, 580)}  # room to show the image
# The thumbnail is drawn at THUMB_PX (a zoom the front end draws in full detail), then scaled.
THUMB_PX, THUMB_PAD, THUMBNAIL, JPEG_QUALITY = 1200, 150, (600, 600), 85

# Download links as ComfyUI's own Ideogram 4 template gives them; the front end offers to download
# a listed file that is missing from its folder.
HF = "https://huggingface.co/Comfy-Org"
MODEL_FILES = {
    "Ideogram4ModelLoader": [
        ("ideogram4_fp8_scaled.safetensors", f"{HF}/Ideogram-4/resolve/main/diffusion_models", "diffusion_models"),
        ("ideogram4_unconditional_fp8_scaled.safetensors", f"{HF}/Ideogram-4/resolve/main/diffusion_models",
         "diffusion_models")],
    "Ideogram4TextEncoderLoader": [
        ("qwen3vl_8b_fp8_scaled.safetensors", f"{HF}/Qwen3-VL/resolve/main/text_encoders", "text_encoders")],
    "VAELoader": [("flux2-vae.safetensors", f"{HF}/flux2-dev/resolve/main/split_files/vae", "vae")],
    # No download link (url None): the note says where to get it; a placeholder while drawing only.
    "Ideogram4LoraLoader": [("ideogram_4_turbotime_lora.safetensors", None, "loras")],
}

MODEL_FILES_GUIDE = """Where the model files go

ComfyUI/models/diffusion_models/  (Load Ideogram 4 Models)
  Either the Comfy-Org single files (huggingface.co/Comfy-Org/Ideogram-4, diffusion_models/):
    ideogram4_fp8_scaled.safetensors                -> model_name
    ideogram4_unconditional_fp8_scaled.safetensors  -> unconditional_model_name
  or an official release folder, copied whole: ideogram-4-fp8/ or ideogram-4-nf4/
  (from ideogram-ai; it holds transformer/ and unconditional_transformer/):
    the folder, e.g. ideogram-4-fp8/                -> model_name
    (unconditional_transformer/ of the same folder) -> unconditional_model_name

ComfyUI/models/text_encoders/  (Load Ideogram 4 Text Encoder)
  qwen3vl_8b_fp8_scaled.safetensors (huggingface.co/Comfy-Org/Qwen3-VL, text_encoders/)
  or the official release's text_encoder/ folder, copied whole -> text_encoder_name

ComfyUI/models/vae/  (Load VAE)
  flux2-vae.safetensors (huggingface.co/Comfy-Org/flux2-dev, split_files/vae/) -> vae_name

After adding files, press R (or refresh the page) and pick them in the lists."""


def api_path(name: str) -> Path:
    return API_DIR / f"{name}_api.json"


def template_names() -> list[str]:
    return sorted(p.name[: -len("_api.json")] for p in API_DIR.glob("*_api.json"))


def note_text(name: str) -> str:
    path = API_DIR / f"{name}.note.txt"
    text = path.read_text(encoding="utf-8") if path.is_file() else "{model_files}\n"
    return text.replace("{model_files}", MODEL_FILES_GUIDE).strip()


# -- the graph ----------------------------------------------------------------------------------


def ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the front end's order: input_order required, then optional."""
    inputs = info.get("input", {})
    order = info.get("input_order") or {k: list(inputs.get(k, {})) for k in ("required", "optional")}
    return [(name, inputs[sec][name], sec == "optional")
            for sec in ("required", "optional") for name in order.get(sec, [])]


def options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: list) -> bool:
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options(spec).get("forceInput")


def has_seed_control(name: str, spec: list) -> bool:
    return options(spec).get("control_after_generate", name in SEED_NAMES) and spec[0] == "INT"


def socket_type(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def topological_order(api: dict) -> list[str]:
    deps = {nid: {v[0] for v in n["inputs"].values() if isinstance(v, list)} for nid, n in api.items()}
    done: list[str] = []
    while len(done) < len(deps):
        ready = sorted((n for n, d in deps.items() if n not in done and d <= set(done)), key=int)
        if not ready:
            raise ValueError("the API workflow has a cycle")
        done += ready
    return done


def model_downloads(node: dict) -> dict:
    """The node's `models` property: download links for the listed files it uses."""
    used = {v for v in node["inputs"].values() if isinstance(v, str)}
    files = [{"name": name, "url": f"{url}/{name}", "directory": folder}
             for name, url, folder in MODEL_FILES.get(node["class_type"], []) if name in used and url]
    return {"models": files} if files else {}


def build(api: dict, object_info: dict, note: str) -> dict:
    """The UI workflow (litegraph 0.4) as the front end saves one: every input in /object_info
    order, widget inputs marked with their widget (a linked one carries its link and keeps its
    default value), seeds followed by their control value. Positions come from `arrange`."""
    missing = sorted({n["class_type"] for n in api.values()} - set(object_info))
    if missing:
        raise ValueError(f"node types not on the server: {missing}")
    order = topological_order(api)
    nodes, links = {}, []
    for nid in order:
        node = api[nid]
        info = object_info[node["class_type"]]
        unknown = sorted(set(node["inputs"]) - {name for name, _, _ in ordered_inputs(info)})
        if unknown:
            raise ValueError(f"node {nid} ({node['class_type']}): no such inputs {unknown}")
        inputs, widgets = [], []
        for name, spec, optional in ordered_inputs(info):
            value = node["inputs"].get(name)
            linked = isinstance(value, list)
            entry = {"name": name, "type": socket_type(spec), "link": None, **({"shape": 7} if optional else {})}
            if linked:
                entry["link"] = link_id = len(links) + 1
                src_id, src_slot = value
                links.append([link_id, int(src_id), src_slot, int(nid), len(inputs), entry["type"]])
            if is_widget(spec):
                entry["widget"] = {"name": name}
                widgets.append(options(spec).get("default") if value is None or linked else value)
                if has_seed_control(name, spec):
                    widgets.append(SEED_CONTROL)
            inputs.append(entry)
        nodes[nid] = {
            "id": int(nid), "type": node["class_type"], "pos": [0, 0], "size": [400, 100], "flags": {},
            "order": order.index(nid), "mode": 0, "inputs": inputs,
            "outputs": [{"name": out_name, "type": out_type, "links": [], "slot_index": i}
                        for i, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"]))],
            "title": node.get("_meta", {}).get("title", info["display_name"]),
            "properties": {"Node name for S&R": node["class_type"], **model_downloads(node)},
            "widgets_values": widgets,
        }
    for link_id, src, src_slot, _dst, _slot, _type in links:
        nodes[str(src)]["outputs"][src_slot]["links"].append(link_id)
    note_id = max(int(n) for n in api) + 1
    note_node = {"id": note_id, "type": "Note", "pos": [0, 0], "size": [NOTE_WIDTH, 17 * note.count("\n") + 80],
                 "flags": {}, "order": len(order), "mode": 0, "inputs": [], "outputs": [],
                 "title": "Read me: model files and how to use this template", "properties": {},
                 "widgets_values": [note], "color": "#432", "bgcolor": "#653"}
    return {
        "last_node_id": note_id, "last_link_id": len(links),
        "nodes": [nodes[n] for n in sorted(nodes, key=int)] + [note_node],
        "links": links, "groups": [], "config": {}, "version": 0.4,
        # Front ends that keep the saved view open it on the note, then the graph to its right.
        "extra": {"ds": {"scale": OPEN_ZOOM, "offset": [round(OPEN_AT[0] / OPEN_ZOOM - MARGIN),
                                                        round(OPEN_AT[1] / OPEN_ZOOM - MARGIN)]}},
    }


def arrange(ui: dict, sizes: dict[int, list[float]]) -> dict:
    """Lay the graph out left to right in columns, each node just left of its first consumer
    (so loaders sit next to the node they feed), stacked in the order of their consumers; the
    note goes first. `sizes` are the front end's minimum sizes by node id."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    consumers: dict[int, set[int]] = {i: set() for i in nodes}
    for _lid, src, _ss, dst, _ds, _t in ui["links"]:
        consumers[src].add(dst)
    graph = [i for i, n in nodes.items() if n["type"] != "Note"]
    depth: dict[int, int] = {}
    for i in sorted(graph, key=lambda i: nodes[i]["order"]):  # longest path from a source
        feeders = [src for _l, src, _s, dst, _d, _t in ui["links"] if dst == i]
        depth[i] = 1 + max((depth[f] for f in feeders), default=-1)
    last = max(depth.values())
    column: dict[int, int] = {}
    for i in sorted(graph, key=lambda i: -nodes[i]["order"]):  # sinks first
        column[i] = min((column[c] - 1 for c in consumers[i]), default=last)
    row: dict[int, float] = {}  # y of each placed node
    x = MARGIN
    for note in (n for n in nodes.values() if n["type"] == "Note"):
        note["pos"] = [x, MARGIN]
        x += note["size"][0] + GAP_X
    columns = {c: [i for i in graph if column[i] == c] for c in sorted(set(column.values()), reverse=True)}
    for c, members in columns.items():  # right to left, so consumers are placed first
        members.sort(key=lambda i: (min((row[d] for d in consumers[i]), default=0), i))
        y = MARGIN
        for i in members:
            w, h = (10 * -(-v // 10) for v in sizes[i])  # round up to the grid
            nodes[i]["size"] = [int(w), int(h)]
            row[i] = y
            y += h + GAP_Y
    width = {c: max(nodes[i]["size"][0] for i in members) for c, members in columns.items()}
    for c in sorted(columns):
        for i in columns[c]:
            nodes[i]["pos"] = [x, int(row[i])]
        x += width[c] + GAP_X
    return ui


# -- the front end ------------------------------------------------------------------------------

MEASURE = """async (workflow) => {
    await app.loadGraphData(workflow);
    const sizes = {};
    for (const n of app.graph._nodes) {
        const fresh = LiteGraph.createNode(n.type);  // a new node's size, after every extension ran
        const min = n.computeSize();
        sizes[n.id] = [Math.max(min[0], fresh?.size?.[0] ?? 0), Math.max(min[1], fresh?.size?.[1] ?? 0)];
    }
    return sizes;
}"""

# Frame a square of the graph (graph coordinates x, y, side) at `px` pixels, `pad` pixels inside
# the viewport, so the app's corner controls stay outside the clip; focus mode (the front end's
# own command) hides its menus.
FRAME = """async ([workflow, [x, y, side], px, pad]) => {
    await app.loadGraphData(workflow);
    await app.extensionManager.command.execute('Workspace.ToggleFocusMode');
    const canvas = app.canvas, scale = px / side;
    canvas.ds.scale = scale;
    canvas.ds.offset = [pad / scale - x, pad / scale - y];
    canvas.setDirty(true, true);
    await new Promise(r => setTimeout(r, 1500));  // DOM widgets follow the canvas on the next frames
}"""


def thumbnail_region(ui: dict) -> tuple[float, float, float]:
    """The square the thumbnail shows: as wide as the graph's shorter side, centred on its
    largest node (the builder, an image loader: what tells templates apart), kept on the graph."""
    nodes = [n for n in ui["nodes"] if n["type"] != "Note"]
    box = [min(n["pos"][0] for n in nodes), min(n["pos"][1] - TITLE_HEIGHT for n in nodes),
           max(n["pos"][0] + n["size"][0] for n in nodes), max(n["pos"][1] + n["size"][1] for n in nodes)]
    side = min(box[2] - box[0], box[3] - box[1]) + 2 * MARGIN
    hero = max(nodes, key=lambda n: n["size"][0] * n["size"][1])
    centre = (hero["pos"][0] + hero["size"][0] / 2, hero["pos"][1] + hero["size"][1] / 2)
    corner = [min(max(c - side / 2, lo - MARGIN), hi + MARGIN - side)
              for c, lo, hi in zip(centre, box[:2], box[2:])]
    return corner[0], corner[1], side


def placeholder_model_files(host, api: dict) -> None:
    """Empty files under the workflow's model names, so the front end draws the loaders as a user
    with the files sees them (not flagged missing). Nothing ever reads them."""
    for node in api.values():
        for name, _url, folder in MODEL_FILES.get(node["class_type"], []):
            if name in node["inputs"].values():
                (host.models_dir / folder / name).touch()
        # Load Image's picture, drawn in the thumbnail: ComfyUI's own input/example.png, which
        # every ComfyUI install has (the editing templates start from it).
        if node["class_type"] == "LoadImage" and node["inputs"].get("image") == "example.png":
            from comfy_host import comfyui_dir

            shutil.copyfile(comfyui_dir() / "input" / "example.png", host.input_dir / "example.png")


def front_end_pass(host, ui: dict, thumbnail: Path | None) -> dict:
    """Measure the nodes, arrange the graph, and (optionally) render the thumbnail."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from front_end import launch, open_app

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": THUMB_PX + 2 * THUMB_PAD, "height": THUMB_PX + 2 * THUMB_PAD})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            open_app(page, host.url)
            sizes = {int(k): v for k, v in page.evaluate(MEASURE, ui).items()}
            for node in ui["nodes"]:
                floor = MIN_SIZE.get(node["type"], (0, 0))
                sizes[node["id"]] = [max(a, b) for a, b in zip(sizes[node["id"]], floor)]
            ui = arrange(ui, sizes)
            if thumbnail is not None:
                open_app(page, host.url)
                page.evaluate(FRAME, [ui, thumbnail_region(ui), THUMB_PX, THUMB_PAD])
                shot = page.screenshot(clip={"x": THUMB_PAD, "y": THUMB_PAD, "width": THUMB_PX, "height": THUMB_PX})
                image = Image.open(io.BytesIO(shot)).convert("RGB").resize(THUMBNAIL, Image.LANCZOS)
                image.save(thumbnail, "JPEG", quality=JPEG_QUALITY, optimize=True)
                print(f"wrote {thumbnail} ({image.width}x{image.height})")
            if errors:
                raise RuntimeError(f"the front end reported errors: {errors}")
        finally:
            browser.close()
    return ui


def make(name: str, host, thumbnail: bool) -> None:
    api = json.loads(api_path(name).read_text(encoding="utf-8"))
    ui = build(api, host.object_info(), note_text(name))
    placeholder_model_files(host, api)
    ui = front_end_pass(host, ui, TEMPLATE_DIR / f"{name}.jpg" if thumbnail else None)
    out = TEMPLATE_DIR / f"{name}.json"
    out.write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(ui['nodes'])} nodes, {len(ui['links'])} links)")


def main(argv=None) -> int:
    from front_end import NEWEST_FRONTEND, host_with_frontend

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="template names (api_workflows/<name>_api.json)")
    parser.add_argument("--all", action="store_true", help="every template in api_workflows/")
    parser.add_argument("--no-thumbnail", action="store_true", help="leave workflows/<name>.jpg as it is")
    parser.add_argument("--frontend", default=NEWEST_FRONTEND, help="front-end version to measure and draw with")
    args = parser.parse_args(argv)
    names = template_names() if args.all else args.names
    unknown = [n for n in names if not api_path(n).is_file()]
    if not names or unknown:
        parser.error(f"no API twin for {unknown}" if unknown else "name a template or pass --all; "
                     f"known: {template_names()}")
    quiet = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}  # nothing drawn over the graph
    with host_with_frontend(args.frontend, settings=quiet) as host:
        for name in names:
            make(name, host, thumbnail=not args.no_thumbnail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
