// The caption builder's editor state: the `layout` JSON string and its undo/redo history.
// No DOM here. The layout string is the single source of truth (it is the widget value that
// ComfyUI saves in the workflow), so the editor re-parses it instead of keeping a shadow copy.

export const LAYOUT_VERSION = 1;
export const GLOBAL_PALETTE_MAX = 16;
export const ELEMENT_PALETTE_MAX = 5;
export const ELEMENT_TYPES = ["obj", "text"];
const ELEMENT_KEYS = ["type", "bbox", "text", "desc", "color_palette"];
const HISTORY_LIMIT = 200;

export const emptyLayout = () => ({ color_palette: [], elements: [] });

/** "#abc123" -> "#ABC123"; anything that is not 6-digit hex -> null (no guessing). */
export function normaliseHex(value) {
  const text = String(value ?? "").trim();
  return /^#[0-9a-fA-F]{6}$/.test(text) ? text.toUpperCase() : null;
}

/** A bbox edge from a fraction of the canvas (0..1) onto the 0..1000 grid. */
export const toGrid = (fraction) => Math.min(1000, Math.max(0, Math.round(fraction * 1000)));

/** [y_min, x_min, y_max, x_max] from two corners given as grid points, min/max ordered. */
export function bboxFromCorners(y0, x0, y1, x1) {
  return [Math.min(y0, y1), Math.min(x0, x1), Math.max(y0, y1), Math.max(x0, x1)];
}

/**
 * Parse a layout string. Blank -> empty layout. Returns {layout, error}; on error the layout
 * is null and the caller must not overwrite the user's text.
 */
export function parseLayout(text) {
  if (!text || !String(text).trim()) return { layout: emptyLayout(), error: null };
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    return { layout: null, error: `layout is not valid JSON: ${e.message}` };
  }
  if (!data || typeof data !== "object" || Array.isArray(data)) {
    return { layout: null, error: "layout must be a JSON object" };
  }
  const palette = Array.isArray(data.color_palette) ? data.color_palette : [];
  const elements = Array.isArray(data.elements) ? data.elements : [];
  // Keep values as written (even invalid ones): the server reports them with their paths.
  return {
    layout: {
      color_palette: palette.map(String),
      elements: elements.filter((e) => e && typeof e === "object").map(normaliseElement),
    },
    error: null,
  };
}

function normaliseElement(e) {
  const out = { type: e.type === "text" ? "text" : e.type ?? "obj", desc: String(e.desc ?? "") };
  if (Array.isArray(e.bbox)) out.bbox = e.bbox.slice(0, 4);
  if (out.type === "text") out.text = String(e.text ?? "");
  if (Array.isArray(e.color_palette)) out.color_palette = e.color_palette.map(String);
  return out;
}

/** One element in the caption's canonical key order, empty palette left out. */
export function canonicalElement(e) {
  const out = {};
  for (const key of ELEMENT_KEYS) {
    if (!(key in e)) continue;
    if (key === "text" && e.type !== "text") continue;
    if (key === "color_palette" && !(e.color_palette?.length)) continue;
    if (key === "bbox" && !Array.isArray(e.bbox)) continue;
    out[key] = e[key];
  }
  return out;
}

/** Layout -> the widget string: one element per line, so the JSON view stays readable. */
export function serialiseLayout(layout) {
  const head = `{"version":${LAYOUT_VERSION},"color_palette":${JSON.stringify(layout.color_palette)},"elements":[`;
  const lines = layout.elements.map((e) => " " + JSON.stringify(canonicalElement(e)));
  return lines.length ? `${head}\n${lines.join(",\n")}\n]}` : `${head}]}`;
}

export const cloneLayout = (layout) => JSON.parse(JSON.stringify(layout));

/**
 * Undo/redo over snapshots {layout: string, fields?: object}. Each entry keeps `before` and
 * `after`, so undoing an import can also restore the text fields it overwrote, while ordinary
 * canvas edits never touch fields the user typed into ComfyUI's own widgets.
 * Consecutive edits with the same merge key (typing in one text box, dragging a colour
 * picker) become one step.
 */
export class History {
  constructor() {
    this.past = [];
    this.future = [];
  }

  record(before, after, mergeKey = null) {
    const last = this.past[this.past.length - 1];
    if (mergeKey && last && last.mergeKey === mergeKey && !this.future.length) {
      last.after = after;
    } else {
      this.past.push({ before, after, mergeKey });
      if (this.past.length > HISTORY_LIMIT) this.past.shift();
    }
    this.future = [];
  }

  /** Stop merging into the last step (e.g. the text box lost focus). */
  seal() {
    const last = this.past[this.past.length - 1];
    if (last) last.mergeKey = null;
  }

  undo() {
    const entry = this.past.pop();
    if (!entry) return null;
    entry.mergeKey = null;
    this.future.push(entry);
    return entry.before;
  }

  redo() {
    const entry = this.future.pop();
    if (!entry) return null;
    this.past.push(entry);
    return entry.after;
  }

  get canUndo() {
    return this.past.length > 0;
  }

  get canRedo() {
    return this.future.length > 0;
  }
}

/**
 * A parsed caption (from the server's parser) -> {layout, fields} for the editor and the
 * node's own widgets. Missing style keys become empty strings.
 */
export function captionToEditor(caption) {
  const style = caption?.style_description && typeof caption.style_description === "object"
    ? caption.style_description : null;
  const comp = caption?.compositional_deconstruction ?? {};
  const kind = style ? ("art_style" in style && !("photo" in style) ? "art_style" : "photo") : "none";
  const fields = {
    high_level_description: String(caption?.high_level_description ?? ""),
    style: kind,
    photo_or_art_style: String(style ? style[kind] ?? "" : ""),
    aesthetics: String(style?.aesthetics ?? ""),
    lighting: String(style?.lighting ?? ""),
    medium: String(style?.medium ?? ""),
    background: String(comp.background ?? ""),
  };
  const layout = {
    color_palette: Array.isArray(style?.color_palette) ? style.color_palette.map(String) : [],
    elements: (Array.isArray(comp.elements) ? comp.elements : [])
      .filter((e) => e && typeof e === "object").map(normaliseElement),
  };
  return { layout, fields };
}
