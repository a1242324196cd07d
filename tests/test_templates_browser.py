"""The pack's workflow templates as a user meets them: a real ComfyUI server with this pack, its
front end in headless Chromium driven by Playwright, no mocks.

For the front end the ComfyUI tree pins (1.32.9 for 0.3.75, 1.49.6 for 0.33) and the newest tested
one (classic canvas and Vue "Nodes 2.0"): open the template browser with the front end's own
command, pick the pack's category, and check that it lists exactly the UI templates of
`workflows/` (never an API twin), each with its own thumbnail (`<name>.jpg`, fetched and
decoded); then open the text-to-image template by clicking its card and check that the caption
builder's editor is on the page with the shipped layout. Screenshots go to test-artifacts/.

Needs: `pip install playwright` (no browser download), Debian's `chromium` at /usr/bin/chromium,
`bash scripts/setup_comfyui.sh --frontend 1.58.1`. Missing pieces skip locally, fail under CI.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_host import PACK_NAME
from front_end import HANG_GUARD_MS, NEWEST_FRONTEND, open_app, pick, pinned_frontend, serving

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
T2I = "image_ideogram4_t2i"
ARTIFACTS = REPO / "test-artifacts"
PINNED = pinned_frontend()
CASES = [(PINNED, "classic"), (NEWEST_FRONTEND, "classic"), (NEWEST_FRONTEND, "vue")]


@pytest.fixture(scope="module")
def hosts():
    with serving(v for v, _ in CASES) as servers:
        yield servers


# Names shown in the open template dialog that look like template names of this pack.
SHOWN_NAMES = """() => {
    const dialog = [...document.querySelectorAll('[role=dialog]')].pop();
    const names = [...dialog.querySelectorAll('*')]
        .filter(e => e.children.length === 0 && /^image_ideogram4\\w*$/.test(e.textContent.trim()))
        .map(e => e.textContent.trim());
    return [...new Set(names)].sort();
}"""

THUMBNAIL = """(name) => { const img = document.querySelector(`[role=dialog] img[alt="${name}"]`);
    return img && img.complete ? [img.naturalWidth, img.naturalHeight] : null; }"""

EDITOR_SHOWN = """() => {
    const builder = app.graph._nodes.find(n => n.type === 'Ideogram4CaptionBuilder');
    const canvas = document.querySelector('[data-role=canvas]');
    if (!builder?.ideogram4Editor || !canvas) return null;
    const r = canvas.getBoundingClientRect();
    return {elements: builder.ideogram4Editor.layout.elements.length, width: r.width, height: r.height,
            chips: document.querySelectorAll('.i4cb-chip').length,
            caption_linked: app.graph._nodes.find(n => n.type === 'Ideogram4TextEncode')
                .inputs.find(i => i.name === 'caption').link != null};
}"""


@pytest.mark.parametrize("version,mode", CASES, ids=[f"{v}-{m}" for v, m in CASES])
def test_template_browser_lists_the_ui_templates_with_thumbnails_and_opens_the_builder(hosts, browser, version, mode):
    from PIL import Image

    host = pick(hosts, version)
    host.post("/settings/Comfy.VueNodes.Enabled", mode == "vue")  # per-user setting, read at page load
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors, fetched = [], {}
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: fetched.setdefault(r.url.rsplit("/", 1)[-1], r.status)
            if f"/workflow_templates/{PACK_NAME}/" in r.url else None)
    try:
        open_app(page, host.url)
        page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.locator("[role=dialog]").get_by_text(PACK_NAME, exact=True).first.click()
        for name in TEMPLATES:
            page.wait_for_function(THUMBNAIL, arg=name, timeout=HANG_GUARD_MS)
        assert page.evaluate(SHOWN_NAMES) == TEMPLATES  # the API twin is not among them
        for name in TEMPLATES:
            with Image.open(REPO / "workflows" / f"{name}.jpg") as jpg:
                assert page.evaluate(THUMBNAIL, name) == list(jpg.size), name
            assert fetched.get(f"{name}.jpg") == 200, fetched
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"templates_{version}_{mode}.png"))

        page.locator(f'[role=dialog] img[alt="{T2I}"]').click()
        page.wait_for_function(EDITOR_SHOWN, timeout=HANG_GUARD_MS)
        shown = page.evaluate(EDITOR_SHOWN)
        twin = json.loads((REPO / "api_workflows" / f"{T2I}_api.json").read_text())
        (builder,) = [n for n in twin.values() if n["class_type"] == "Ideogram4CaptionBuilder"]
        expected = len(json.loads(builder["inputs"]["layout"])["elements"])
        assert shown["elements"] == shown["chips"] == expected >= 4, shown
        assert shown["width"] > 50 and abs(shown["width"] / shown["height"] - 1) < 0.03, shown  # 1024x1024
        assert shown["caption_linked"], shown
        assert fetched.get(f"{T2I}.json") == 200, fetched
        page.locator("[data-role=canvas]").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"template_opened_{version}_{mode}.png"))
        assert not errors, errors
    finally:
        page.close()
