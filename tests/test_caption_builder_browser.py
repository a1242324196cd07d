"""Browser test of the caption builder's web widget: a real ComfyUI server with this pack, its
front end in headless Chromium driven by Playwright, no mocks.

For each front end (the pinned 1.32.9 and the newest 1.58.1, classic canvas and Vue "Nodes 2.0"):
add the builder and a Preview-as-Text node, draw a box with the mouse, type a description, pick
an element colour in the colour picker and type a style colour, delete a second box with the
keyboard, undo/redo, queue the prompt, and check the caption that reached the output node: its
bbox must be the dragged pixel rectangle as a fraction of the canvas (0..1000, y first). Then
reload the page and check the layout and the prompt are restored exactly. Screenshots go to
test-artifacts/.

Needs: `pip install playwright` (no browser download), Debian's `chromium` at /usr/bin/chromium,
`bash scripts/setup_comfyui.sh --frontend 1.58.1`. Missing pieces skip locally, fail under CI.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from comfy_host import ComfyHost
from front_end import HANG_GUARD_MS, NEWEST_FRONTEND, pick, pinned_frontend, serving
from front_end import open_app as open_page

PINNED_FRONTEND = pinned_frontend()
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CASES = [(PINNED_FRONTEND, "classic"), (NEWEST_FRONTEND, "classic"), (NEWEST_FRONTEND, "vue")]
TARGET = (1536, 1024)  # a 3:2 canvas, so a y/x mix-up in the bbox cannot pass


@pytest.fixture(scope="module")
def hosts():
    with serving((PINNED_FRONTEND, NEWEST_FRONTEND)) as servers:
        yield servers


# -- page helpers (JavaScript runs in the page; the app object is the front end's own) ----------

OPEN_APP = """() => !!(window.app && window.app.graph && window.LiteGraph
    && LiteGraph.registered_node_types['Ideogram4CaptionBuilder']
    && (app.extensions || []).some(e => e.name === 'ideogram4.CaptionBuilder'))"""

BUILD_GRAPH = """([w, h, summary]) => {
    app.graph.clear();
    const b = LiteGraph.createNode('Ideogram4CaptionBuilder');
    b.pos = [140, 70];
    app.graph.add(b);
    const p = LiteGraph.createNode('PreviewAny');
    p.pos = [720, 70];
    app.graph.add(p);
    b.connect(0, p, 0);
    const set = (name, v) => { const x = b.widgets.find(x => x.name === name); x.value = v; x.callback?.(v); };
    set('width', w); set('height', h);
    set('high_level_description', summary);
    set('photo_or_art_style', '85mm lens, f/2.8'); set('aesthetics', 'bold'); set('lighting', 'soft daylight'); set('medium', 'photograph');
    set('background', 'a plain studio wall');
    // Zoomed out so the whole node fits the viewport; the bbox must not depend on the zoom.
    app.canvas.ds.scale = 0.8; app.canvas.ds.offset = [0, 30];
    app.graph.setDirtyCanvas(true, true);
    return [b.id, p.id];
}"""

LAYOUT = """(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'layout').value"""
PROMPT_INPUTS = """async (id) => (await app.graphToPrompt()).output[String(id)].inputs"""


def open_app(page, url: str) -> None:
    open_page(page, url, OPEN_APP)


# The canvas's place on the page, once it has kept it for 5 frames in a row: a gesture aimed at it
# before the front end has applied the zoom, or laid out a panel, would miss it.
CANVAS_SETTLED = """() => {
    const c = document.querySelector('[data-role=canvas]');
    if (!c) return false;
    const r = c.getBoundingClientRect(), key = [r.x, r.y, r.width, r.height].join();
    const last = window.__i4Settle, frames = last && last.key === key ? last.frames + 1 : 0;
    window.__i4Settle = {key, frames};
    return r.width > 100 && frames >= 5 && {x: r.x, y: r.y, width: r.width, height: r.height};
}"""


def settled_box(page) -> dict:
    page.evaluate("() => { window.__i4Settle = null; }")
    return page.wait_for_function(CANVAS_SETTLED).json_value()  # polled once per animation frame


def drag(page, start, end, steps=8) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=steps)
    page.mouse.up()


def grid(value: float, origin: float, size: float) -> int:
    """What the widget must compute: pixel fraction of the canvas on the 0..1000 grid (half up)."""
    return min(1000, max(0, math.floor((value - origin) / size * 1000 + 0.5)))


def wait_history(host: ComfyHost, known: set, timeout=HANG_GUARD_MS / 1000) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, entry in host.get("/history").items():
            if pid not in known and entry.get("status", {}).get("completed") is not None:
                return entry
        time.sleep(0.2)
    raise TimeoutError("the queued prompt did not finish:\n" + host.log_tail())


@pytest.mark.parametrize("version,mode", CASES, ids=[f"{v}-{m}" for v, m in CASES])
def test_draw_pick_queue_reload(hosts, browser, version, mode):
    host = pick(hosts, version)
    host.post(f"/settings/{'Comfy.VueNodes.Enabled'}", mode == "vue")  # per-user setting, read at page load
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        open_app(page, host.url)
        # A summary unique to the case: a cached result would send no report back to the page.
        summary = f"A poster with a fox ({version}, {mode})."
        builder_id, preview_id = page.evaluate(BUILD_GRAPH, [*TARGET, summary])
        t0 = time.monotonic()
        lap = lambda step: print(f"[{version} {mode}] {step}: {time.monotonic() - t0:.1f} s")
        canvas = page.locator("[data-role=canvas]")
        canvas.wait_for(state="visible")
        page.wait_for_function("""() => { const c = document.querySelector('[data-role=canvas]');
            const r = c.getBoundingClientRect(); return r.width > 100 && Math.abs(r.width / r.height - 1.5) < 0.02; }""")
        box = settled_box(page)

        # Draw the box bottom-right to top-left: the widget must still write min before max.
        start = (box["x"] + 0.81 * box["width"], box["y"] + 0.72 * box["height"])
        end = (box["x"] + 0.23 * box["width"], box["y"] + 0.18 * box["height"])
        drag(page, start, end)
        expected = [grid(end[1], box["y"], box["height"]), grid(end[0], box["x"], box["width"]),
                    grid(start[1], box["y"], box["height"]), grid(start[0], box["x"], box["width"])]
        layout = json.loads(page.evaluate(LAYOUT, builder_id))
        assert layout["elements"][0]["bbox"] == expected, (layout, expected)

        panel = page.locator("[data-role=element-panel]")
        panel.locator("[data-role=desc]").fill("a red fox")
        panel.locator("[data-role=add-colour]").click()
        panel.locator("[data-role=colour]").first.fill("#1e90ff")  # the native colour picker's value
        style = page.locator("[data-role=global-palette]")
        style.locator("[data-role=hex-input]").fill("#22aa44")
        style.locator("[data-role=hex-input]").press("Enter")

        # A second box, deleted with the Delete key (which must not delete the ComfyUI node).
        drag(page, (box["x"] + 0.05 * box["width"], box["y"] + 0.80 * box["height"]),
             (box["x"] + 0.15 * box["width"], box["y"] + 0.95 * box["height"]))
        assert len(json.loads(page.evaluate(LAYOUT, builder_id))["elements"]) == 2
        canvas.press("Delete")
        assert page.evaluate("(id) => !!app.graph.getNodeById(id)", builder_id)
        before_undo = page.evaluate(LAYOUT, builder_id)
        assert len(json.loads(before_undo)["elements"]) == 1
        page.locator("[data-role=undo]").click()
        assert len(json.loads(page.evaluate(LAYOUT, builder_id))["elements"]) == 2
        page.locator("[data-role=redo]").click()
        assert page.evaluate(LAYOUT, builder_id) == before_undo

        lap("drawn, coloured, undo/redo")
        known = set(host.get("/history"))
        page.evaluate("() => app.queuePrompt(0, 1)")
        entry = wait_history(host, known)
        assert entry["status"]["status_str"] == "success", entry["status"]
        caption = json.loads(entry["outputs"][str(preview_id)]["text"][0])
        element = caption["compositional_deconstruction"]["elements"][0]
        assert element == {"type": "obj", "bbox": expected, "desc": "a red fox", "color_palette": ["#1E90FF"]}
        assert caption["style_description"]["color_palette"] == ["#22AA44"]
        assert caption["high_level_description"] == summary
        # The node's own verdict, sent back with the run and shown under the editor.
        report = page.locator("[data-role=report]")
        report.filter(has_text="caption").wait_for(state="visible")
        assert report.text_content().strip() == "caption OK", report.text_content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"caption_builder_{version}_{mode}.png"))

        lap("queued and checked")
        # Reload: the front end restores the open workflow; the editor must show the same state.
        saved_layout = page.evaluate(LAYOUT, builder_id)
        saved_inputs = page.evaluate(PROMPT_INPUTS, builder_id)
        page.reload()
        page.wait_for_function(OPEN_APP, timeout=HANG_GUARD_MS)
        page.wait_for_function("(id) => !!app.graph.getNodeById(id)?.ideogram4Editor", arg=builder_id, timeout=HANG_GUARD_MS)
        assert page.evaluate(LAYOUT, builder_id) == saved_layout
        assert page.evaluate(PROMPT_INPUTS, builder_id) == saved_inputs
        shown = page.evaluate("""(id) => { const e = app.graph.getNodeById(id).ideogram4Editor;
            return {layout: e.layout, chips: [...document.querySelectorAll('.i4cb-chip')].map(c => c.textContent)}; }""",
                              builder_id)
        assert shown["layout"]["elements"][0]["bbox"] == expected
        assert shown["layout"]["color_palette"] == ["#22AA44"]
        assert shown["chips"] == ["1 a red fox"]
        page.locator(".i4cb-chip").first.click()  # select it: the panel shows the restored colour
        assert page.locator("[data-role=element-panel] [data-role=colour]").first.input_value() == "#1e90ff"
        page.screenshot(path=str(ARTIFACTS / f"caption_builder_{version}_{mode}_reloaded.png"))
        lap("reloaded and checked")
        assert not errors, errors
    finally:
        page.close()


IMPORTED = {
    "high_level_description": "A red bicycle leaning on a wall.",
    "style_description": {"photo": "50mm lens", "aesthetics": "calm", "lighting": "overcast", "medium": "photograph",
                          "color_palette": ["#AA3322"]},
    "compositional_deconstruction": {"background": "a brick wall", "elements": [
        {"type": "obj", "bbox": [100, 200, 600, 700], "desc": "a red bicycle", "color_palette": ["#CC0000"]},
        {"type": "text", "bbox": [700, 100, 850, 900], "desc": "a painted sign", "text": "OPEN"}]},
}
WIDGET = "(args) => app.graph.getNodeById(args[0]).widgets.find(w => w.name === args[1]).value"
SET_WIDGET = "(args) => { app.graph.getNodeById(args[0]).widgets.find(w => w.name === args[1]).value = args[2]; }"
STATUS = "(id) => app.graph.getNodeById(id).ideogram4Editor.statusEl.textContent"


def bbox_of(page, builder_id, index=0):
    return json.loads(page.evaluate(LAYOUT, builder_id))["elements"][index]["bbox"]


@pytest.mark.parametrize("version,mode", CASES, ids=[f"{v}-{m}" for v, m in CASES])
def test_import_validate_move_resize_nudge(hosts, browser, version, mode):
    """Import (import_caption through POST /ideogram4/parse_caption), an invalid layout refused
    read-only until Clear, then a drawn box moved and resized with the mouse and nudged with the
    arrow keys (1 step, 10 with Shift); every expected bbox is computed here from the pointer
    positions, and the last one must reach the queued caption."""
    host = pick(hosts, version)
    host.post(f"/settings/{'Comfy.VueNodes.Enabled'}", mode == "vue")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        open_app(page, host.url)
        summary = f"Import and edit ({version}, {mode})."
        builder_id, preview_id = page.evaluate(BUILD_GRAPH, [*TARGET, summary])
        canvas = page.locator("[data-role=canvas]")
        canvas.wait_for(state="visible")

        # Import: the route answers with the parsed caption, and the editor loads exactly that.
        text = json.dumps(IMPORTED)
        status, answer = host.request("POST", "/ideogram4/parse_caption", {"caption": text})
        assert status == 200 and answer["data"] == IMPORTED, answer
        page.evaluate(SET_WIDGET, [builder_id, "import_caption", text])
        page.locator("[data-role=import]").click()
        page.wait_for_function("(id) => JSON.parse(app.graph.getNodeById(id).widgets.find(w => w.name === 'layout')"
                               ".value || '{}').elements?.length === 2", arg=builder_id, timeout=HANG_GUARD_MS)
        layout = json.loads(page.evaluate(LAYOUT, builder_id))
        assert layout["color_palette"] == ["#AA3322"]
        assert layout["elements"] == IMPORTED["compositional_deconstruction"]["elements"]
        for name, value in (("high_level_description", IMPORTED["high_level_description"]), ("style", "photo"),
                            ("photo_or_art_style", "50mm lens"), ("lighting", "overcast"), ("background", "a brick wall")):
            assert page.evaluate(WIDGET, [builder_id, name]) == value, name
        assert "Imported 2 element(s)" in page.locator("[data-role=report]").text_content()

        # Validation: a layout that is not JSON is reported, and the canvas will not change it.
        page.evaluate(SET_WIDGET, [builder_id, "layout", '{"elements": [ broken'])
        page.evaluate("(id) => app.graph.getNodeById(id).ideogram4Editor.sync(true)", builder_id)
        assert page.evaluate(STATUS, builder_id).startswith("⚠ layout is not valid JSON"), page.evaluate(STATUS, builder_id)
        box = settled_box(page)
        drag(page, (box["x"] + 0.1 * box["width"], box["y"] + 0.1 * box["height"]),
             (box["x"] + 0.3 * box["width"], box["y"] + 0.3 * box["height"]))
        assert page.evaluate(LAYOUT, builder_id) == '{"elements": [ broken'
        page.locator("[data-role=clear]").click()
        assert json.loads(page.evaluate(LAYOUT, builder_id))["elements"] == []

        # Draw, then move by the body, resize by the south-east handle, nudge with the keys. The
        # canvas is measured before each gesture: the panel of a selected box can shift it.
        def frame():
            box = settled_box(page)
            return (lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"]),
                    lambda y: grid(y, box["y"], box["height"]), lambda x: grid(x, box["x"], box["width"]))

        px, gy, gx = frame()
        a, b = px(0.20, 0.25), px(0.45, 0.55)
        drag(page, a, b)
        drawn = [gy(a[1]), gx(a[0]), gy(b[1]), gx(b[0])]
        assert bbox_of(page, builder_id) == drawn

        px, gy, gx = frame()
        start, end = px(0.30, 0.40), px(0.42, 0.47)
        drag(page, start, end)
        dy, dx = gy(end[1]) - gy(start[1]), gx(end[0]) - gx(start[0])
        moved = [drawn[0] + dy, drawn[1] + dx, drawn[2] + dy, drawn[3] + dx]
        assert bbox_of(page, builder_id) == moved

        px, gy, gx = frame()
        handle, corner = px(moved[3] / 1000, moved[2] / 1000), px(0.80, 0.90)
        drag(page, handle, corner)
        resized = [moved[0], moved[1], gy(corner[1]), gx(corner[0])]
        assert bbox_of(page, builder_id) == resized

        canvas.press("ArrowRight")
        canvas.press("Shift+ArrowDown")
        canvas.press("Shift+ArrowLeft")
        canvas.press("ArrowUp")
        nudged = [resized[0] + 9, resized[1] - 9, resized[2] + 9, resized[3] - 9]
        assert bbox_of(page, builder_id) == nudged
        assert page.evaluate("(id) => !!app.graph.getNodeById(id)", builder_id)  # keys stayed in the editor

        known = set(host.get("/history"))
        page.evaluate("() => app.queuePrompt(0, 1)")
        entry = wait_history(host, known)
        assert entry["status"]["status_str"] == "success", entry["status"]
        caption = json.loads(entry["outputs"][str(preview_id)]["text"][0])
        assert [e["bbox"] for e in caption["compositional_deconstruction"]["elements"]] == [nudged]
        assert caption["high_level_description"] == IMPORTED["high_level_description"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"caption_builder_edit_{version}_{mode}.png"))
        assert not errors, errors
    finally:
        page.close()
