// The caption builder editor: toolbar, box canvas, element list, element panel and the global
// palette, wired to a host adapter so it knows nothing about ComfyUI (see the extension file).
//
// host = {
//   getLayoutText(), setLayoutText(text)      the `layout` widget value (source of truth)
//   getFields(), setFields(fields)            the node's own text/style widgets (for import)
//   aspect(), sizeLabel()                     target width / height
//   readImportText() -> string | null         the import_caption text, if known in the browser
//   parseCaption(text) -> Promise<{ok, data, report}>   the server's caption parser
//   toggleJson() -> bool                      show / hide the raw layout text widget
// }

import { BoxCanvas } from "./box_canvas.js";
import { ELEMENT_PALETTE_MAX, ELEMENT_TYPES, GLOBAL_PALETTE_MAX, History, captionToEditor, cloneLayout,
  parseLayout, serialiseLayout } from "./layout_state.js";
import { paletteRow } from "./palette_row.js";
import { injectStyle } from "./style.js";

const el = (tag, props = {}, children = []) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};
const button = (text, title, role, onclick) => {
  const b = el("button", { textContent: text, title, onclick });
  b.dataset.role = role;
  return b;
};

export class CaptionEditor {
  constructor(host) {
    injectStyle();
    this.host = host;
    this.history = new History();
    this.selected = -1;
    this.layoutText = null;
    this.layout = parseLayout("").layout;
    this.error = null;
    this.build();
    this.sync(true);
  }

  // -- state ---------------------------------------------------------------------------------

  /** Re-read the widget (after load, undo in ComfyUI, or the JSON text being edited). */
  sync(force = false) {
    const text = this.host.getLayoutText() ?? "";
    if (!force && text === this.layoutText) return;
    this.layoutText = text;
    const { layout, error } = parseLayout(text);
    this.error = error;
    if (layout) this.layout = layout;
    if (this.selected >= this.layout.elements.length) this.selected = -1;
    this.render();
  }

  snapshot(withFields) {
    return withFields ? { layout: this.layoutText, fields: this.host.getFields() } : { layout: this.layoutText };
  }

  restore(snap) {
    if (snap.fields) this.host.setFields(snap.fields);
    this.host.setLayoutText(snap.layout);
    this.sync(true);
  }

  /** Apply a new layout as one undoable step (steps with the same mergeKey coalesce). */
  commit(layout, label, select = this.selected, mergeKey = null, { fields = null, rerender = true } = {}) {
    const before = this.snapshot(!!fields);
    if (fields) this.host.setFields(fields);
    const text = serialiseLayout(layout);
    this.host.setLayoutText(text);
    this.layoutText = text;
    this.layout = layout;
    this.error = null;
    this.selected = select;
    this.history.record(before, this.snapshot(!!fields), mergeKey);
    this.status(label);
    if (rerender) this.render();
    else this.refreshLight();
  }

  undo() {
    const snap = this.history.undo();
    if (snap) { this.restore(snap); this.status("undo"); }
  }

  redo() {
    const snap = this.history.redo();
    if (snap) { this.restore(snap); this.status("redo"); }
  }

  select(index) {
    if (index === this.selected) return;
    this.selected = index;
    this.history.seal();
    this.render();
  }

  editSelected(mutate, label, mergeKey = null, rerender = false) {
    const layout = cloneLayout(this.layout);
    mutate(layout.elements[this.selected]);
    this.commit(layout, label, this.selected, mergeKey, { rerender });
  }

  deleteSelected() {
    if (this.selected < 0) return;
    const layout = cloneLayout(this.layout);
    layout.elements.splice(this.selected, 1);
    this.commit(layout, "delete box", Math.min(this.selected, layout.elements.length - 1));
  }

  moveSelected(delta) {
    const i = this.selected, j = i + delta;
    if (i < 0 || j < 0 || j >= this.layout.elements.length) return;
    const layout = cloneLayout(this.layout);
    [layout.elements[i], layout.elements[j]] = [layout.elements[j], layout.elements[i]];
    this.commit(layout, "reorder", j);
  }

  async importCaption() {
    const text = this.host.readImportText();
    if (!text || !text.trim()) {
      this.showReport("Nothing to import: paste a caption into import_caption (or connect a text node " +
        "whose value is a widget, or a Magic Prompt / Describe node and run it once), then press Import.");
      return;
    }
    let parsed;
    try {
      parsed = await this.host.parseCaption(text);
    } catch (e) {
      this.showReport(`Import failed: ${e.message ?? e}`);
      return;
    }
    if (!parsed.data) {
      this.showReport(`Import failed:\n${parsed.report}`);
      return;
    }
    const { layout, fields } = captionToEditor(parsed.data);
    this.commit(layout, "import", -1, null, { fields });
    this.showReport(`Imported ${layout.elements.length} element(s).\n${parsed.report || ""}`.trim());
  }

  // -- DOM -----------------------------------------------------------------------------------

  build() {
    this.root = el("div", { className: "i4cb-root" });
    this.root.addEventListener("keydown", (e) => this.onKey(e));
    // Keep the editor in step with the widget whenever the user comes back to it.
    this.root.addEventListener("pointerenter", () => { this.sync(); this.canvas.fit(); });
    this.undoBtn = button("↶ Undo", "Undo (Ctrl+Z)", "undo", () => this.undo());
    this.redoBtn = button("↷ Redo", "Redo (Ctrl+Shift+Z / Ctrl+Y)", "redo", () => this.redo());
    this.deleteBtn = button("Delete", "Delete the selected box (Del)", "delete", () => this.deleteSelected());
    const importBtn = button("Import", "Load the caption in import_caption into the editor", "import",
      () => this.importCaption());
    const clearBtn = button("Clear", "Remove every box and the style palette", "clear",
      () => this.commit({ color_palette: [], elements: [] }, "clear", -1));
    const jsonBtn = button("{ }", "Show or hide the layout JSON widget", "toggle-json", () => {
      jsonBtn.classList.toggle("i4cb-on", this.host.toggleJson());
    });
    this.statusEl = el("span", { className: "i4cb-status" });
    this.statusEl.dataset.role = "status";
    const toolbar = el("div", { className: "i4cb-toolbar" },
      [this.undoBtn, this.redoBtn, this.deleteBtn, importBtn, clearBtn, jsonBtn, this.statusEl]);

    const canvasHost = el("div", { className: "i4cb-canvas-host" });
    this.canvas = new BoxCanvas(canvasHost, {
      getLayout: () => this.layout,
      getSelected: () => this.selected,
      select: (i) => this.select(i),
      commit: (layout, label, select) => this.commit(layout, label, select),
      aspect: () => this.host.aspect(),
      sizeLabel: () => this.host.sizeLabel(),
      readOnly: () => !!this.error,
    });

    this.list = el("div", { className: "i4cb-list" });
    this.list.dataset.role = "element-list";
    this.panel = el("div", { className: "i4cb-panel" });
    this.panel.dataset.role = "element-panel";
    this.globalPalette = paletteRow({
      label: "Style palette", role: "global-palette", max: GLOBAL_PALETTE_MAX,
      get: () => this.layout.color_palette,
      set: (colours, key) => {
        const layout = cloneLayout(this.layout);
        layout.color_palette = colours;
        this.commit(layout, "style palette", this.selected, key, { rerender: !key });
      },
    });
    this.report = el("pre", { className: "i4cb-report" });
    this.report.dataset.role = "report";
    this.root.append(toolbar, canvasHost, this.list, this.panel, this.globalPalette.element, this.report);
  }

  onKey(e) {
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName);
    const mod = e.ctrlKey || e.metaKey;
    const key = e.key.toLowerCase();
    let handled = true;
    if (mod && key === "z" && !typing) e.shiftKey ? this.redo() : this.undo();
    else if (mod && key === "y" && !typing) this.redo();
    else if (!typing && (e.key === "Delete" || e.key === "Backspace")) this.deleteSelected();
    else if (!typing && e.key === "Escape") this.select(-1);
    else if (!typing && e.key.startsWith("Arrow") && this.selected >= 0) this.nudge(e.key, e.shiftKey ? 10 : 1);
    else handled = false;
    // Text fields keep their own keys, but ComfyUI must not see them either (Delete would remove
    // the node, Ctrl+Z would undo the whole graph).
    if (handled || typing) e.stopPropagation();
    if (handled) e.preventDefault();
  }

  nudge(key, step) {
    const b = this.layout.elements[this.selected]?.bbox;
    if (!Array.isArray(b)) return;
    const [dy, dx] = { ArrowUp: [-step, 0], ArrowDown: [step, 0], ArrowLeft: [0, -step], ArrowRight: [0, step] }[key];
    const sy = Math.max(-b[0], Math.min(1000 - b[2], dy)), sx = Math.max(-b[1], Math.min(1000 - b[3], dx));
    this.editSelected((e) => { e.bbox = [b[0] + sy, b[1] + sx, b[2] + sy, b[3] + sx]; }, "nudge", "nudge", true);
  }

  status(text) {
    const n = this.layout.elements.length;
    this.statusEl.textContent = this.error ? `⚠ ${this.error}` : `${n} element${n === 1 ? "" : "s"}${text ? ` · ${text}` : ""}`;
    this.statusEl.classList.toggle("i4cb-bad", !!this.error);
  }

  showReport(text) {
    this.report.textContent = text || "";
    this.report.style.display = text ? "block" : "none";
  }

  /** Everything except the panel's inputs (so typing keeps focus). */
  refreshLight() {
    this.undoBtn.disabled = !this.history.canUndo;
    this.redoBtn.disabled = !this.history.canRedo;
    this.deleteBtn.disabled = this.selected < 0;
    this.canvas.message = this.error ? "layout JSON is invalid: fix it or press Clear" : "";
    this.canvas.draw();
    this.renderList();
  }

  render() {
    this.status("");
    this.refreshLight();
    this.renderPanel();
    this.globalPalette.render();
  }

  renderList() {
    const chips = this.layout.elements.map((e, i) => {
      const name = e.type === "text" ? `“${e.text ?? ""}”` : e.desc || e.type;
      const chip = el("button", { className: "i4cb-chip", textContent: `${i + 1} ${name}`.slice(0, 28),
        title: Array.isArray(e.bbox) ? `bbox ${JSON.stringify(e.bbox)}` : "no box yet" });
      if (i === this.selected) chip.classList.add("i4cb-on");
      if (!Array.isArray(e.bbox)) chip.classList.add("i4cb-nobox");
      chip.onclick = () => this.select(i);
      return chip;
    });
    this.list.replaceChildren(...chips);
    this.list.style.display = chips.length ? "" : "none";
  }

  renderPanel() {
    const e = this.layout.elements[this.selected];
    if (!e) {
      this.panel.replaceChildren(el("div", { className: "i4cb-hint",
        textContent: "Select a box to edit it. Drag empty space to draw; drag a box to move; drag its handles to resize." }));
      return;
    }
    const i = this.selected;
    const type = el("select", {}, ELEMENT_TYPES.map((t) => el("option", { value: t, textContent: t })));
    type.dataset.role = "type";
    type.value = e.type;
    type.onchange = () => this.editSelected((x) => {
      x.type = type.value;
      if (x.type === "text") x.text = x.text ?? "";
    }, "type", null, true);
    const text = el("input", { value: e.text ?? "", placeholder: "literal text to render" });
    text.dataset.role = "text";
    text.oninput = () => this.editSelected((x) => { x.text = text.value; }, "text", `text:${i}`);
    const desc = el("textarea", { value: e.desc ?? "", rows: 2, placeholder: "what this element looks like" });
    desc.dataset.role = "desc";
    desc.oninput = () => this.editSelected((x) => { x.desc = desc.value; }, "description", `desc:${i}`);
    for (const input of [text, desc]) input.onblur = () => this.history.seal();
    const bbox = ["y_min", "x_min", "y_max", "x_max"].map((name, k) => {
      const input = el("input", { type: "number", min: 0, max: 1000, step: 1, title: name,
        value: Array.isArray(e.bbox) ? e.bbox[k] : "" });
      input.dataset.role = `bbox-${name}`;
      input.onchange = () => this.editSelected((x) => {
        const b = Array.isArray(x.bbox) ? x.bbox.slice() : [250, 250, 750, 750];
        b[k] = Math.min(1000, Math.max(0, Math.round(Number(input.value) || 0)));
        x.bbox = b;
      }, "bbox", null, true);
      return el("label", { className: "i4cb-num" }, [name, input]);
    });
    const palette = paletteRow({
      label: "Colours", role: "element-palette", max: ELEMENT_PALETTE_MAX,
      get: () => this.layout.elements[i]?.color_palette ?? [],
      set: (colours, key) => {
        this.editSelected((x) => { x.color_palette = colours; }, "element colours", key, false);
        if (!key) palette.render();
      },
    });
    palette.render();
    const head = el("div", { className: "i4cb-row" }, [
      el("b", { textContent: `Box ${i + 1}` }), type,
      button("↑", "Earlier in the element list", "move-up", () => this.moveSelected(-1)),
      button("↓", "Later in the element list", "move-down", () => this.moveSelected(1)),
      ...bbox,
    ]);
    const textRow = el("div", { className: "i4cb-row" }, [el("span", { textContent: "text" }), text]);
    textRow.style.display = e.type === "text" ? "" : "none";
    this.panel.replaceChildren(head, textRow, el("div", { className: "i4cb-row" }, [el("span", { textContent: "desc" }), desc]),
      palette.element);
  }
}
