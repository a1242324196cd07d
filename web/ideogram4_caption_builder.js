// ComfyUI front-end extension: puts the caption editor (web/caption_builder/) on the
// Ideogram4CaptionBuilder node. The editor's state lives in the node's `layout` STRING widget,
// which ComfyUI saves in the workflow and sends in the prompt, so a reload restores it exactly
// and API users can pass the same JSON. If the front end cannot host a DOM widget, nothing is
// hidden and the layout text stays editable.
//
// Imports are relative so the pack folder can have any name.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { CaptionEditor } from "./caption_builder/editor.js";

const NODE_ID = "Ideogram4CaptionBuilder";
// Nodes whose last generated caption Import can read when linked to import_caption (their STRING
// output is not a widget, so its text only reaches the browser in the run's UI message).
const CAPTION_SOURCES = ["Ideogram4MagicPrompt", "Ideogram4Describe"];
const FIELD_NAMES = ["high_level_description", "style", "photo_or_art_style", "aesthetics", "lighting", "medium", "background"];
const EDITOR_MIN_HEIGHT = 560;

const widgetOf = (node, name) => node.widgets?.find((w) => w.name === name);

/** Run `extra` after an existing callback/method without losing it. */
function chain(object, key, extra) {
  const original = object[key];
  object[key] = function (...args) {
    const result = original?.apply(this, args);
    extra.apply(this, args);
    return result;
  };
}

/**
 * Hide or show a widget. Front end 1.32.9 still lays out `hidden` DOM widgets (an empty gap),
 * but gives type "hidden" zero height; newer ones honour both. Values and prompts are unaffected.
 */
function setShown(widget, shown) {
  widget.ideogram4Type ??= widget.type;
  widget.hidden = !shown;
  widget.type = shown ? widget.ideogram4Type : "hidden";
}

function markChanged(node) {
  node.setDirtyCanvas?.(true, true);
  // Let ComfyUI notice the edit (unsaved-changes marker, its own undo) without waiting for a mouseup.
  app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
}

/** The import_caption text: the widget's own value, a linked Magic Prompt / Describe node's last
 * caption, or a linked node's text widget. */
function readImportText(node) {
  const slot = node.inputs?.findIndex((input) => input.name === "import_caption") ?? -1;
  if (slot >= 0 && node.inputs[slot].link != null) {
    const source = node.getInputNode?.(slot);
    if (source && CAPTION_SOURCES.includes(source.comfyClass ?? source.type)) return source.ideogram4Caption ?? null;
    const text = source?.widgets?.find((w) => typeof w.value === "string" && w.value.trim());
    return text ? text.value : null;
  }
  return widgetOf(node, "import_caption")?.value ?? null;
}

async function parseCaption(text) {
  const response = await api.fetchApi("/ideogram4/parse_caption", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ caption: text }),
  });
  if (!response.ok && response.status !== 400) throw new Error(`server answered HTTP ${response.status}`);
  return response.json();
}

function attachEditor(node) {
  const layout = widgetOf(node, "layout");
  if (!layout || typeof node.addDOMWidget !== "function") return; // degrade: layout text stays editable
  const size = () => [Number(widgetOf(node, "width")?.value) || 1024, Number(widgetOf(node, "height")?.value) || 1024];
  const host = {
    getLayoutText: () => layout.value ?? "",
    setLayoutText: (text) => {
      layout.value = text;
      markChanged(node);
    },
    getFields: () => Object.fromEntries(FIELD_NAMES.map((n) => [n, widgetOf(node, n)?.value ?? ""])),
    setFields: (fields) => {
      for (const [name, value] of Object.entries(fields)) {
        const w = widgetOf(node, name);
        if (w) w.value = value;
      }
      markChanged(node);
    },
    aspect: () => { const [w, h] = size(); return w / h; },
    sizeLabel: () => size().join("×"),
    readImportText: () => readImportText(node),
    parseCaption,
    toggleJson: () => {
      setShown(layout, !!layout.hidden);
      node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
      markChanged(node);
      return !layout.hidden;
    },
  };
  let editor;
  try {
    editor = new CaptionEditor(host);
    const widget = node.addDOMWidget("caption_editor", "ideogram4_caption_editor", editor.root, {
      serialize: false, // not an input: excluded from the prompt...
      hideOnZoom: false,
      getMinHeight: () => EDITOR_MIN_HEIGHT,
    });
    widget.serialize = false; // ...and from widgets_values, so saved positions never shift
    editor.root.style.minHeight = `${EDITOR_MIN_HEIGHT}px`; // Vue nodes size the widget from its content
  } catch (error) {
    console.warn("[Ideogram 4] caption editor unavailable; edit the layout JSON instead.", error);
    return;
  }
  setShown(layout, false); // the canvas edits it now; the { } button shows it again
  node.ideogram4Editor = editor;
  chain(layout, "callback", () => editor.sync());
  layout.element?.addEventListener?.("input", () => editor.sync());
  for (const name of ["width", "height"]) {
    const w = widgetOf(node, name);
    if (w) chain(w, "callback", () => { editor.canvas.fit(); });
  }
  const [w, h] = node.computeSize?.() ?? node.size;
  node.setSize?.([Math.max(node.size[0], w, 480), Math.max(node.size[1], h)]);
}

app.registerExtension({
  name: "ideogram4.CaptionBuilder",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (CAPTION_SOURCES.includes(nodeData?.name)) {
      chain(nodeType.prototype, "onExecuted", function (output) {
        const caption = output?.ideogram4_caption;
        if (caption) this.ideogram4Caption = Array.isArray(caption) ? caption[0] : String(caption);
      });
      return;
    }
    if (nodeData?.name !== NODE_ID) return;
    chain(nodeType.prototype, "onNodeCreated", function () { attachEditor(this); });
    // configure() has just written widgets_values (a loaded workflow): show that layout.
    chain(nodeType.prototype, "onConfigure", function () { this.ideogram4Editor?.sync(true); });
    chain(nodeType.prototype, "onExecuted", function (output) {
      const report = output?.ideogram4_report;
      if (report) this.ideogram4Editor?.showReport(Array.isArray(report) ? report.join("\n") : String(report));
    });
  },
});
