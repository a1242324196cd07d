"""The bundled workflow templates, their API twins and the submit script against a real ComfyUI server.

Templates follow docs/workflows.md: `workflows/` holds only UI workflows (<name>.json) and their
thumbnails (<name>.jpg), which ComfyUI lists and serves as templates; each has its API-format twin
in `api_workflows/<name>_api.json`. Every UI workflow is checked the way the front end reads it:
node types, links (endpoints, slots, types), inputs and widget values in /object_info order, and
the front end's own API conversion of it must be its twin. The twins are posted with model names
the server does not have, which it must refuse up front. The submit script runs as a subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from comfy_host import PACK_NAME, ComfyHost, free_port

try:
    from comfy_host import require_comfyui
except ImportError:  # older comfy_host: the rule lived in the host smoke test
    from test_comfy_host import require_comfyui

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = REPO / "workflows"
API_DIR = REPO / "api_workflows"
TEMPLATES = sorted(p.stem for p in TEMPLATE_DIR.glob("*.json"))
T2I = "image_ideogram4_t2i"
SUBMIT = REPO / "scripts" / "submit_api_workflow.py"
FRONT_END_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # not in /object_info
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL = "control_after_generate"
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
MODEL_INPUTS = {"1": ["model_name", "unconditional_model_name"], "2": ["text_encoder_name"], "6": ["vae_name"]}
# Model-name inputs by node type and the folder they list: placeholders make the twins' names valid.
MODEL_FOLDERS = {"Ideogram4ModelLoader": {"model_name": "diffusion_models", "unconditional_model_name": "diffusion_models"},
                 "Ideogram4TextEncoderLoader": {"text_encoder_name": "text_encoders"}, "VAELoader": {"vae_name": "vae"},
                 "Ideogram4LoraLoader": {"lora_name": "loras"}}


def load_ui(name: str) -> dict:
    return json.loads((TEMPLATE_DIR / f"{name}.json").read_text(encoding="utf-8"))


def load_api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}_api.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def comfy():
    require_comfyui()
    host = ComfyHost()
    # Placeholders under the twins' file names, so that name validation at POST /prompt sees them
    # listed (nothing here ever runs a model).
    for name in TEMPLATES:
        for node in load_api(name).values():
            for key, folder in MODEL_FOLDERS.get(node["class_type"], {}).items():
                value = node["inputs"].get(key)
                if isinstance(value, str) and value.endswith(".safetensors"):
                    (host.models_dir / folder / value).write_bytes(b"")
    try:
        host.start()
        assert host.pack_loaded(), "the pack did not import:\n" + host.log_tail(80)
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="module")
def info(comfy):
    return comfy.object_info()


@pytest.fixture(scope="module", params=TEMPLATES)
def template(request):
    """(name, UI workflow, API twin) of each template."""
    return request.param, load_ui(request.param), load_api(request.param)


@pytest.fixture(scope="module")
def ui():
    return load_ui(T2I)


@pytest.fixture(scope="module")
def api():
    return load_api(T2I)


def input_specs(node_info: dict):
    """(name, spec) of the node's inputs in the front end's order: required, then optional."""
    inputs, order = node_info.get("input", {}), node_info.get("input_order", {})
    for section in ("required", "optional"):
        for name in order.get(section, list(inputs.get(section, {}))):
            yield name, inputs[section][name]


def options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: list) -> bool:
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options(spec).get("forceInput")


def widget_names(node_info: dict) -> list[str]:
    """What widgets_values holds, in order; a seed-like INT is followed by its control value."""
    names = []
    for name, spec in input_specs(node_info):
        if is_widget(spec):
            names.append(name)
            if spec[0] == "INT" and options(spec).get("control_after_generate", name in ("seed", "noise_seed")):
                names.append(SEED_CONTROL)
    return names


def input_types(node_info: dict) -> dict[str, str]:
    return {name: "COMBO" if isinstance(spec[0], list) else spec[0] for name, spec in input_specs(node_info)}


def run_submit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUBMIT), *args], capture_output=True, text=True, timeout=timeout)


# -- the template folder ------------------------------------------------------------------------


def test_template_folder_holds_ui_workflows_and_their_thumbnails_only():
    """ComfyUI lists every *.json directly in workflows/ as a template: nothing else may be there."""
    assert T2I in TEMPLATES
    found = sorted(p.name for p in TEMPLATE_DIR.iterdir())
    assert found == sorted(f"{name}{ext}" for name in TEMPLATES for ext in (".json", ".jpg"))
    for name in TEMPLATES:
        assert {"nodes", "links", "version"} <= set(load_ui(name)), f"{name}.json is not a UI workflow"
        twin = load_api(name)
        assert twin and all({"class_type", "inputs"} <= set(n) for n in twin.values()), name


@pytest.mark.parametrize("name", TEMPLATES)
def test_thumbnail_is_a_square_jpeg_with_content(name):
    from PIL import Image, ImageStat

    with Image.open(TEMPLATE_DIR / f"{name}.jpg") as image:
        assert image.format == "JPEG"  # the front end asks for <name>.jpg for custom-node templates
        assert image.width == image.height >= 256, image.size  # template cards are square
        assert ImageStat.Stat(image.convert("L")).stddev[0] > 10, "a blank frame"


# -- every template ------------------------------------------------------------------------------


def test_server_lists_and_serves_exactly_the_ui_templates(comfy):
    assert sorted(comfy.get("/workflow_templates")[PACK_NAME]) == TEMPLATES
    for name in TEMPLATES:
        assert comfy.get(f"/api/workflow_templates/{PACK_NAME}/{name}.json") == load_ui(name)
        with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/{PACK_NAME}/{name}.jpg", timeout=30) as r:
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.read() == (TEMPLATE_DIR / f"{name}.jpg").read_bytes()


def test_every_node_type_exists_on_the_server(info, template):
    _name, ui, api = template
    ui_types = {n["type"] for n in ui["nodes"]} - FRONT_END_ONLY
    api_types = {n["class_type"] for n in api.values()}
    assert sorted((ui_types | api_types) - set(info)) == []
    assert api_types == ui_types


def test_t2i_uses_every_pack_node_of_the_text_to_image_path(api):
    pack = {"Ideogram4ModelLoader", "Ideogram4TextEncoderLoader", "Ideogram4CaptionBuilder", "Ideogram4TextEncode",
            "Ideogram4EmptyLatent", "Ideogram4Sampler", "Ideogram4VAEDecode"}
    assert pack <= {n["class_type"] for n in api.values()}


def test_pack_inputs_all_have_tooltips(comfy):
    pack = comfy.pack_nodes()
    assert len(pack) >= 6, sorted(pack)
    missing = [f"{node_id}.{name}" for node_id, node in pack.items()
               for name, spec in input_specs(node) if not options(spec).get("tooltip")]
    assert missing == []


@pytest.mark.parametrize("node_id", ["1", "2", "6"])
def test_api_workflow_with_unknown_model_files_is_refused_before_running(comfy, api, node_id):
    prompt = json.loads(json.dumps(api))
    for name in MODEL_INPUTS[node_id]:
        prompt[node_id]["inputs"][name] = f"no_such_{name}.safetensors"
    status, body = comfy.post_prompt_raw(prompt)
    assert status == 400, body
    errors = body["node_errors"]
    # Only the model-name node may be refused: every other value of the workflow passes the checks.
    assert set(errors) == {node_id}, json.dumps(errors, indent=1)[:3000]
    found = errors[node_id]["errors"]
    assert all(e["type"] in ("value_not_in_list", "custom_validation_failed") for e in found), found
    # V1 combos report each bad input; our V3 nodes' validate_inputs reports the problem against its
    # inputs (ComfyUI's mechanism) with a message that names the input and the bad file.
    text = json.dumps(found)
    for name in MODEL_INPUTS[node_id]:
        assert f"no_such_{name}.safetensors" in text or name in {e["extra_info"]["input_name"] for e in found}
    queue = comfy.queue()
    assert queue["queue_running"] == [] and queue["queue_pending"] == []


def test_t2i_caption_comes_from_the_builder_and_passes_the_strict_verifier(comfy, api):
    """The shipped layout, run by the builder on the server, is a rich caption that needs no repair."""
    from ideogram4_core.captions.verify import verify_caption

    (builder,) = [i for i, n in api.items() if n["class_type"] == "Ideogram4CaptionBuilder"]
    assert api["3"]["inputs"]["caption"] == [builder, 0]
    entry = comfy.run({builder: api[builder], "99": {"class_type": "PreviewAny", "inputs": {"source": [builder, 0]}}})
    assert entry["outputs"][builder]["ideogram4_report"] == ["caption OK"]
    caption = entry["outputs"]["99"]["text"][0]
    result = verify_caption(caption, mode="strict")
    assert result.issues == [] and result.caption == caption
    data = json.loads(caption)
    elements = data["compositional_deconstruction"]["elements"]
    assert sum(e["type"] == "obj" for e in elements) >= 3 and sum(e["type"] == "text" for e in elements) >= 1
    assert all(e.get("color_palette") for e in elements) and len(data["style_description"]["color_palette"]) >= 3


# -- the UI workflows ---------------------------------------------------------------------------


def test_ui_workflow_has_the_litegraph_shape(template):
    _name, ui, _api = template
    assert ui["version"] == 0.4
    assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"} <= set(ui)
    ids = [n["id"] for n in ui["nodes"]]
    link_ids = [link[0] for link in ui["links"]]
    assert len(set(ids)) == len(ids) and len(set(link_ids)) == len(link_ids)
    assert ui["last_node_id"] >= max(ids) and ui["last_link_id"] >= max(link_ids)
    for node in ui["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                "widgets_values"} <= set(node), node["id"]
        if node["type"] not in FRONT_END_ONLY:
            assert node["properties"]["Node name for S&R"] == node["type"]
            assert [o["slot_index"] for o in node["outputs"]] == list(range(len(node["outputs"])))


def test_ui_workflow_nodes_do_not_overlap(template):
    _name, ui, _api = template
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in ui["nodes"]]  # 30: the title bar above pos
    overlaps = [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
                if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]]
    assert overlaps == []


def test_ui_workflow_links_are_consistent(info, template):
    _name, ui, _api = template
    nodes = {n["id"]: n for n in ui["nodes"]}
    by_id = {}
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        by_id[link_id] = (src, src_slot, dst, dst_slot)
        assert src in nodes and dst in nodes, link_id
        source, target = nodes[src], nodes[dst]
        assert 0 <= src_slot < len(source["outputs"]) and 0 <= dst_slot < len(target["inputs"]), link_id
        out, inp = source["outputs"][src_slot], target["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id, link_id
        assert kind == out["type"] == info[source["type"]]["output"][src_slot], link_id
        assert kind == inp["type"] == input_types(info[target["type"]])[inp["name"]], link_id
        assert source["order"] < target["order"], f"link {link_id} runs against the node order"
    for node in ui["nodes"]:  # nothing points at a link that does not exist
        for slot, inp in enumerate(node["inputs"]):
            assert inp["link"] is None or by_id[inp["link"]][2:] == (node["id"], slot), (node["id"], inp)
        for slot, out in enumerate(node["outputs"]):
            assert all(by_id[link][:2] == (node["id"], slot) for link in out["links"] or []), (node["id"], out)


def test_ui_workflow_inputs_follow_object_info_and_required_sockets_are_linked(info, template):
    """Inputs are saved as the front end saves them: all of them in /object_info order, widget
    inputs marked with their widget (so a link into a widget, like the builder's caption, loads)."""
    _name, ui, _api = template
    for node in ui["nodes"]:
        if node["type"] in FRONT_END_ONLY:
            continue
        node_info = info[node["type"]]
        specs = dict(input_specs(node_info))
        assert [i["name"] for i in node["inputs"]] == list(specs), node["id"]
        for inp in node["inputs"]:
            assert inp.get("widget") == ({"name": inp["name"]} if is_widget(specs[inp["name"]]) else None), inp
        required = node_info["input"].get("required", {})
        unlinked = [i["name"] for i in node["inputs"]
                    if i["link"] is None and i["name"] in required and not is_widget(specs[i["name"]])]
        assert unlinked == [], (node["id"], unlinked)
        # A newer host may add outputs at the end (ComfyUI 0.33's SaveImage passes its images on);
        # the front end adds those slots when it loads the workflow.
        outputs = [o["name"] for o in node["outputs"]]
        assert outputs == node_info["output_name"][:len(outputs)], node["id"]


def test_ui_widget_values_follow_object_info_and_equal_the_api_workflow(info, template):
    _name, ui, api = template
    ui_nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in FRONT_END_ONLY}
    assert set(ui_nodes) == set(api)
    for node_id, node in ui_nodes.items():
        api_node = api[node_id]
        specs = dict(input_specs(info[node["type"]]))
        assert node["type"] == api_node["class_type"]
        assert node.get("title") == api_node.get("_meta", {}).get("title"), node_id
        names = widget_names(info[node["type"]])
        assert len(node["widgets_values"]) == len(names), (node_id, names, node["widgets_values"])
        for name, value in zip(names, node["widgets_values"]):
            if name == SEED_CONTROL:
                assert value in SEED_CONTROL_VALUES, (node_id, value)
            elif isinstance(api_node["inputs"].get(name), list):  # linked: the widget keeps its default
                assert value == options(specs[name]).get("default"), (node_id, name)
            else:
                assert value == api_node["inputs"][name], (node_id, name)
        linked = {k for k, v in api_node["inputs"].items() if isinstance(v, list)}
        assert linked == {i["name"] for i in node["inputs"] if i["link"] is not None}, node_id


def test_note_says_where_each_model_file_goes(info, ui):
    (note,) = [n for n in ui["nodes"] if n["type"] == "Note"]
    text = note["widgets_values"][0]
    for words in ("models/diffusion_models", "ideogram4_fp8_scaled.safetensors",
                  "ideogram4_unconditional_fp8_scaled.safetensors", "ideogram-4-fp8", "ideogram-4-nf4",
                  "transformer/", "unconditional_transformer/", "models/text_encoders",
                  "qwen3vl_8b_fp8_scaled.safetensors", "text_encoder/", "models/vae", "flux2-vae.safetensors",
                  "Caption Builder", "import_caption"):
        assert words in text, words
    # the choices the note names are the ones the nodes offer
    loader = info["Ideogram4ModelLoader"]["input"]["required"]
    same_folder = options(loader["unconditional_model_name"])["options"][0]
    assert same_folder.startswith("(unconditional_transformer/") and same_folder in text
    for preset in ("Quality 48", "Default 20", "Turbo 12", "Custom"):
        assert preset in options(info["Ideogram4Sampler"]["input"]["required"]["preset"])["options"]
        assert preset in text


# -- the front end ------------------------------------------------------------------------------

LOAD_AND_CONVERT = """async (workflow) => {
    await app.loadGraphData(workflow);
    const nodes = app.graph._nodes.map(n => ({id: n.id, type: n.type,
        known: !!LiteGraph.registered_node_types[n.type], errors: !!n.has_errors}));
    return {nodes, prompt: (await app.graphToPrompt()).output};
}"""


def test_front_end_loads_each_ui_template_into_its_api_twin(comfy):
    """The pinned front end opens each UI workflow with every node type known, and its own
    "Export (API)" conversion of it gives exactly the API twin."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    from front_end import CHROMIUM, launch, open_app

    if sync_playwright is None or not CHROMIUM.is_file():
        reason = "needs `pip install playwright` and Debian's chromium at /usr/bin/chromium"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("IDEOGRAM4_REQUIRE_COMFYUI"):
            pytest.fail(reason + " — required under CI", pytrace=False)
        pytest.skip(reason)
    # The editing templates start from ComfyUI's own input/example.png, which every install has but
    # a test server's fresh input folder lacks; front end 1.49.6 flags Load Image's missing file.
    shipped = comfy.comfy_dir / "input" / "example.png"
    if shipped.is_file() and not (comfy.input_dir / "example.png").exists():
        shutil.copyfile(shipped, comfy.input_dir / "example.png")
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            open_app(page, comfy.url)
            loaded = {name: page.evaluate(LOAD_AND_CONVERT, load_ui(name)) for name in TEMPLATES}
        finally:
            browser.close()
    for name, got in loaded.items():
        ui = load_ui(name)
        # ids come back as numbers or strings, depending on the front end
        assert sorted(str(n["id"]) for n in got["nodes"]) == sorted(str(n["id"]) for n in ui["nodes"]), name
        assert [n for n in got["nodes"] if not n["known"] or n["errors"]] == [], name
        assert got["prompt"] == load_api(name), name


# -- the submit script ------------------------------------------------------------------------


def test_submit_dry_run_applies_every_option(info, tmp_path):
    caption = tmp_path / "caption.json"
    caption.write_text('{"high_level_description": "a red cube"}')
    done = run_submit("--dry-run", "--caption", f"@{caption}", "--seed", "7", "--preset", "Turbo 12",
                      "--width", "512", "--height", "768", "--model", "a.safetensors",
                      "--unconditional-model", "b.safetensors", "--text-encoder", "te/", "--vae", "v.safetensors")
    assert done.returncode == 0, done.stderr
    prompt = json.loads(done.stdout)
    # The caption replaces the builder's link, byte for byte; the builder, now unused, is dropped.
    assert prompt["3"]["inputs"]["caption"] == caption.read_text()
    assert [n for n in prompt.values() if n["class_type"] == "Ideogram4CaptionBuilder"] == []
    assert (prompt["5"]["inputs"]["seed"], prompt["5"]["inputs"]["preset"]) == (7, "Turbo 12")
    latent = prompt["4"]["inputs"]
    sizes = options(info["Ideogram4EmptyLatent"]["input"]["required"]["size_preset"])["options"]
    assert latent["size_preset"] in sizes and latent["size_preset"].startswith("custom")
    assert (latent["width"], latent["height"]) == (512, 768)
    assert prompt["1"]["inputs"]["model_name"] == "a.safetensors"
    assert prompt["1"]["inputs"]["unconditional_model_name"] == "b.safetensors"
    assert prompt["2"]["inputs"]["text_encoder_name"] == "te/"
    assert prompt["6"]["inputs"]["vae_name"] == "v.safetensors"


def test_submit_dry_run_without_options_is_the_api_twin(api):
    done = run_submit("--dry-run")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == api


def test_submit_reports_refused_prompt_with_the_input_names(comfy, tmp_path):
    done = run_submit("--server", comfy.url, "--vae", "missing.safetensors", "--width", "100", "--height", "256",
                      "--out", str(tmp_path))
    assert done.returncode == 4, done.stderr
    for words in ("refused", "node 6 (VAELoader) vae_name", "missing.safetensors", "node 4 (Ideogram4EmptyLatent) width"):
        assert words in done.stderr, words
    assert list(tmp_path.iterdir()) == []


def test_submit_reports_unreachable_server(tmp_path):
    done = run_submit("--server", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path), timeout=60)
    assert done.returncode == 3
    assert "cannot reach ComfyUI" in done.stderr


def test_submit_reports_execution_error(comfy, tmp_path):
    """Files that are listed (so the prompt is accepted) but are not safetensors fail at load time."""
    names = {"diffusion_models": "junk_cond.safetensors", "text_encoders": "junk_te.safetensors",
             "vae": "junk_vae.safetensors"}
    for folder, name in names.items():
        (comfy.models_dir / folder / name).write_bytes(b"not a safetensors file")
    done = run_submit("--server", comfy.url, "--model", names["diffusion_models"],
                      "--unconditional-model", "(none: conditional model only)",
                      "--text-encoder", names["text_encoders"], "--vae", names["vae"], "--out", str(tmp_path))
    assert done.returncode == 5, done.stdout + done.stderr
    assert "execution failed in node" in done.stderr and "Loader" in done.stderr, done.stderr
    assert comfy.alive()


def test_submit_saves_the_image(tiny_server, tmp_path):
    """The success path on the shared server with tiny models (tests/conftest.py, server_models.py)."""
    from server_models import COND_FILE, TEXT_ENCODER_FOLDER, UNCOND_FILE, VAE_FILE

    host, _ = tiny_server
    done = run_submit("--server", host.url, "--model", COND_FILE, "--unconditional-model", UNCOND_FILE,
                      "--text-encoder", TEXT_ENCODER_FOLDER + "/", "--vae", VAE_FILE, "--width", "256",
                      "--height", "256", "--preset", "Turbo 12", "--seed", "7", "--caption", "a red cube on a table",
                      "--out", str(tmp_path), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr + host.log_tail()
    (saved,) = tmp_path.glob("*.png")
    assert f"saved {saved}" in done.stdout
    with open(saved, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[16:24] == (256).to_bytes(4, "big") * 2
    assert saved.read_bytes() == (host.output_dir / saved.name).read_bytes()
