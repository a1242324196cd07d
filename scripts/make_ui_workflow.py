"""Build the UI-format (litegraph) workflow from the API-format one and a server's /object_info.

    python scripts/make_ui_workflow.py                          # starts a temporary test host
    python scripts/make_ui_workflow.py --server http://127.0.0.1:8188

Node ids, titles and values come from workflows/image_ideogram4_t2i_api.json; socket and widget
order, slot types and output names come from /object_info, so the two files cannot drift apart.
A Note node saying where each model file goes is added. Re-run after changing either file.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
API_WORKFLOW = REPO / "workflows" / "image_ideogram4_t2i_api.json"
UI_WORKFLOW = REPO / "workflows" / "image_ideogram4_t2i.json"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")  # the front end adds "control after generate" to these
SEED_CONTROL = "fixed"  # so the first run gives the API twin's image; switch to randomize in the UI

# Readable left-to-right layout: loaders | caption and size | sampler and decode | image.
LAYOUT = {
    "Note": ([-480, 0], [440, 700]),
    "Ideogram4ModelLoader": ([0, 0], [400, 180]),
    "Ideogram4TextEncoderLoader": ([0, 230], [400, 130]),
    "VAELoader": ([0, 410], [400, 60]),
    "Ideogram4TextEncode": ([450, 0], [480, 440]),
    "Ideogram4EmptyLatent": ([450, 490], [480, 160]),
    "Ideogram4Sampler": ([980, 0], [360, 400]),
    "Ideogram4VAEDecode": ([980, 450], [360, 100]),
    "SaveImage": ([1390, 0], [600, 650]),
}

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
}

NOTE = """Ideogram 4 text-to-image: where the model files go

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

After adding files, press R (or refresh the page) and pick them in the lists.

Presets
- Ideogram 4 Sampler, preset: Default 20 (the everyday choice), Quality 48 (best detail,
  48 steps, so about 2.4x the time), Turbo 12 (fastest drafts). Custom uses steps, mu, std, guidance,
  polish_guidance and polish_steps (or guidance_list); the named presets ignore those widgets.
- Ideogram 4 Empty Latent, size_preset: the official sizes; "custom (width x height below)"
  uses width and height (256-2048 px, multiples of 16, at most 6:1).
- seed is fixed so the same settings give the same image; set "control after generate" to
  randomize for a new image on every run.

Caption: a JSON caption works best (see the default). caption_check "repair" applies only safe
fixes and reports them in caption_report; plain text is wrapped into a minimal JSON caption.
"""


def fetch_object_info(server: str) -> dict:
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as r:
        return json.load(r)


def ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the front end's order: input_order required, then optional."""
    inputs = info.get("input", {})
    order = info.get("input_order") or {k: list(inputs.get(k, {})) for k in ("required", "optional")}
    return [(name, inputs[sec][name], sec == "optional")
            for sec in ("required", "optional") for name in order.get(sec, [])]


def is_widget(spec: list) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def has_seed_control(name: str, spec: list) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return opts.get("control_after_generate", name in SEED_NAMES) and spec[0] == "INT"


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
             for name, url, folder in MODEL_FILES.get(node["class_type"], []) if name in used]
    return {"models": files} if files else {}


def build(api: dict, object_info: dict) -> dict:
    missing = sorted({n["class_type"] for n in api.values()} - set(object_info))
    if missing:
        raise ValueError(f"node types not on the server: {missing}")
    order = topological_order(api)
    nodes, links = {}, []
    for nid in order:
        node = api[nid]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec, optional in ordered_inputs(info):
            value = node["inputs"].get(name)
            if is_widget(spec):
                if isinstance(value, list):
                    raise ValueError(f"node {nid}: widget {name} is linked; convert it by hand")
                widgets.append(spec[1].get("default") if value is None and len(spec) > 1 else value)
                if has_seed_control(name, spec):
                    widgets.append(SEED_CONTROL)
                continue
            link_id = None
            if isinstance(value, list):
                link_id = len(links) + 1
                src_id, src_slot = value
                links.append([link_id, int(src_id), src_slot, int(nid), len(inputs), spec[0]])
            inputs.append({"name": name, "type": spec[0], "link": link_id, **({"shape": 7} if optional else {})})
        pos, size = LAYOUT.get(node["class_type"], ([0, 700 + 150 * len(nodes)], [400, 120]))
        nodes[nid] = {
            "id": int(nid), "type": node["class_type"], "pos": pos, "size": size, "flags": {},
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
    pos, size = LAYOUT["Note"]
    note = {"id": note_id, "type": "Note", "pos": pos, "size": size, "flags": {}, "order": len(order),
            "mode": 0, "inputs": [], "outputs": [], "title": "Read me: model files and presets",
            "properties": {}, "widgets_values": [NOTE], "color": "#432", "bgcolor": "#653"}
    return {
        "last_node_id": note_id, "last_link_id": len(links),
        "nodes": [nodes[n] for n in sorted(nodes, key=int)] + [note],
        "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [560, 80]}}, "version": 0.4,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="a running ComfyUI with this pack (default: start a temporary test host)")
    parser.add_argument("--api", type=Path, default=API_WORKFLOW)
    parser.add_argument("--out", type=Path, default=UI_WORKFLOW)
    args = parser.parse_args(argv)
    if args.server:
        object_info = fetch_object_info(args.server)
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from comfy_host import ComfyHost

        with ComfyHost() as host:
            object_info = host.object_info()
    ui = build(json.loads(args.api.read_text()), object_info)
    args.out.write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out} ({len(ui['nodes'])} nodes, {len(ui['links'])} links)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
