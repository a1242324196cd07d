// The bounding-box canvas: draws the layout's boxes at the target aspect ratio and turns mouse
// gestures into edits. Everything is kept in grid units (0..1000 per axis, bbox order
// [y_min, x_min, y_max, x_max]); pixels only exist while drawing, so zoom, CSS transforms and
// device pixel ratio never leak into the saved layout.

import { bboxFromCorners, toGrid } from "./layout_state.js";

const DEFAULT_COLOURS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#C8C8C8"];
const HANDLE_PX = 7; // hit radius of a resize handle, in CSS pixels
const MIN_DRAG_PX = 4; // a shorter drag is a click, not a new box
const HANDLES = ["nw", "n", "ne", "e", "se", "s", "sw", "w"];
const CURSORS = { nw: "nwse-resize", se: "nwse-resize", ne: "nesw-resize", sw: "nesw-resize",
  n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize", move: "move", draw: "crosshair" };

export const boxColour = (element, index) =>
  element.color_palette?.[0] && /^#[0-9A-F]{6}$/i.test(element.color_palette[0])
    ? element.color_palette[0] : DEFAULT_COLOURS[index % DEFAULT_COLOURS.length];

const validBox = (b) => Array.isArray(b) && b.length === 4 && b.every((v) => Number.isFinite(v));

/**
 * @param host element the canvas is fitted into
 * @param api  {getLayout(), getSelected(), select(i), commit(layout, label), aspect(): w/h,
 *              sizeLabel(): string}
 */
export class BoxCanvas {
  constructor(host, api) {
    this.api = api;
    this.host = host;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "i4cb-canvas";
    this.canvas.dataset.role = "canvas";
    this.canvas.tabIndex = 0;
    host.appendChild(this.canvas);
    this.gesture = null; // the drag in progress: {mode, start, layout (draft), index, ...}
    this.message = "";
    this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
    this.canvas.addEventListener("pointercancel", () => this.cancel());
    this.canvas.addEventListener("lostpointercapture", () => this.gesture && this.onUp(null));
    new ResizeObserver(() => this.fit()).observe(host);
  }

  /** Size the canvas to the largest rectangle of the target aspect that fits the host. */
  fit() {
    const aspect = this.api.aspect();
    const w = this.host.clientWidth, h = this.host.clientHeight;
    if (!w || !h) return;
    let cw = w, ch = w / aspect;
    if (ch > h) { ch = h; cw = h * aspect; }
    this.canvas.style.width = `${Math.floor(cw)}px`;
    this.canvas.style.height = `${Math.floor(ch)}px`;
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.max(1, Math.round(Math.floor(cw) * dpr));
    this.canvas.height = Math.max(1, Math.round(Math.floor(ch) * dpr));
    this.draw();
  }

  /** The pointer as grid units; getBoundingClientRect includes the canvas zoom transform. */
  gridPoint(e) {
    const r = this.canvas.getBoundingClientRect();
    return { x: toGrid((e.clientX - r.left) / r.width), y: toGrid((e.clientY - r.top) / r.height),
      tolX: HANDLE_PX * 1000 / r.width, tolY: HANDLE_PX * 1000 / r.height };
  }

  /** Which part of which box is under the point: a handle of the selected box, else a body. */
  hitTest(p, layout) {
    const selected = this.api.getSelected();
    const sel = layout.elements[selected];
    if (sel && validBox(sel.bbox)) {
      for (const [name, hy, hx] of handlePoints(sel.bbox)) {
        if (Math.abs(p.x - hx) <= p.tolX && Math.abs(p.y - hy) <= p.tolY) {
          return { index: selected, part: name };
        }
      }
    }
    for (let i = layout.elements.length - 1; i >= 0; i--) { // topmost (last drawn) first
      const b = layout.elements[i].bbox;
      if (validBox(b) && p.y >= b[0] && p.y <= b[2] && p.x >= b[1] && p.x <= b[3]) return { index: i, part: "move" };
    }
    return null;
  }

  onDown(e) {
    if (e.button !== 0 || this.api.readOnly()) return;
    e.preventDefault();
    this.canvas.focus({ preventScroll: true });
    this.canvas.setPointerCapture(e.pointerId);
    const layout = this.api.getLayout();
    const p = this.gridPoint(e);
    const hit = this.hitTest(p, layout);
    const start = { x: p.x, y: p.y, cx: e.clientX, cy: e.clientY };
    if (hit) {
      this.api.select(hit.index);
      const bbox = layout.elements[hit.index].bbox.slice();
      this.gesture = { mode: hit.part, start, index: hit.index, origin: bbox, layout, moved: false };
    } else {
      this.gesture = { mode: "draw", start, index: -1, layout, moved: false };
    }
  }

  onMove(e) {
    const g = this.gesture;
    if (!g) {
      if (!this.api.readOnly()) this.hover(e);
      return;
    }
    if (!g.moved && Math.hypot(e.clientX - g.start.cx, e.clientY - g.start.cy) < MIN_DRAG_PX) return;
    g.moved = true;
    const p = this.gridPoint(e);
    g.bbox = g.mode === "draw" ? bboxFromCorners(g.start.y, g.start.x, p.y, p.x)
      : g.mode === "move" ? moveBox(g.origin, p.y - g.start.y, p.x - g.start.x)
        : resizeBox(g.origin, g.mode, p.y, p.x);
    this.draw();
  }

  onUp() {
    const g = this.gesture;
    this.gesture = null;
    if (!g) return;
    if (!g.moved || !g.bbox) {
      if (g.mode === "draw") this.api.select(-1); // a click on empty canvas deselects
      this.draw();
      return;
    }
    const layout = JSON.parse(JSON.stringify(g.layout));
    if (g.mode === "draw") {
      if (g.bbox[2] - g.bbox[0] < 1 || g.bbox[3] - g.bbox[1] < 1) return this.draw();
      layout.elements.push({ type: "obj", bbox: g.bbox, desc: "" });
      this.api.commit(layout, "draw box", layout.elements.length - 1);
    } else {
      layout.elements[g.index].bbox = g.bbox;
      this.api.commit(layout, g.mode === "move" ? "move box" : "resize box", g.index);
    }
  }

  cancel() {
    this.gesture = null;
    this.draw();
  }

  hover(e) {
    const hit = this.hitTest(this.gridPoint(e), this.api.getLayout());
    this.canvas.style.cursor = CURSORS[hit ? hit.part : "draw"];
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const W = this.canvas.width, H = this.canvas.height;
    const dpr = window.devicePixelRatio || 1;
    const sx = W / 1000, sy = H / 1000;
    ctx.fillStyle = "#202020";
    ctx.fillRect(0, 0, W, H);
    ctx.strokeStyle = "rgba(255,255,255,0.07)";
    ctx.lineWidth = 1;
    for (let i = 1; i < 10; i++) { // 10 % grid: makes the 0..1000 scale legible
      ctx.beginPath();
      ctx.moveTo(Math.round(i * 100 * sx) + 0.5, 0); ctx.lineTo(Math.round(i * 100 * sx) + 0.5, H);
      ctx.moveTo(0, Math.round(i * 100 * sy) + 0.5); ctx.lineTo(W, Math.round(i * 100 * sy) + 0.5);
      ctx.stroke();
    }
    const layout = this.api.getLayout();
    const g = this.gesture;
    const selected = this.api.getSelected();
    layout.elements.forEach((el, i) => {
      const bbox = g?.bbox && g.index === i ? g.bbox : el.bbox;
      if (validBox(bbox)) drawBox(ctx, el, i, bbox, sx, sy, dpr, i === selected);
    });
    if (g?.mode === "draw" && g.bbox) {
      const [y0, x0, y1, x1] = g.bbox;
      ctx.setLineDash([6 * dpr, 4 * dpr]);
      ctx.strokeStyle = "#FFFFFF";
      ctx.lineWidth = 1.5 * dpr;
      ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
      ctx.setLineDash([]);
    }
    ctx.font = `${11 * dpr}px sans-serif`;
    ctx.fillStyle = "rgba(255,255,255,0.45)";
    ctx.textAlign = "right";
    ctx.fillText(this.message || this.api.sizeLabel(), W - 6 * dpr, H - 6 * dpr);
    ctx.textAlign = "left";
  }
}

function handlePoints([y0, x0, y1, x1]) {
  const ym = (y0 + y1) / 2, xm = (x0 + x1) / 2;
  const at = { nw: [y0, x0], n: [y0, xm], ne: [y0, x1], e: [ym, x1], se: [y1, x1], s: [y1, xm], sw: [y1, x0], w: [ym, x0] };
  return HANDLES.map((h) => [h, ...at[h]]);
}

function moveBox([y0, x0, y1, x1], dy, dx) {
  // Clamp the shift so the box keeps its size at the canvas edge instead of being squashed.
  dy = Math.max(-y0, Math.min(1000 - y1, dy));
  dx = Math.max(-x0, Math.min(1000 - x1, dx));
  return [y0 + dy, x0 + dx, y1 + dy, x1 + dx];
}

function resizeBox([y0, x0, y1, x1], handle, py, px) {
  if (handle.includes("n")) y0 = py;
  if (handle.includes("s")) y1 = py;
  if (handle.includes("w")) x0 = px;
  if (handle.includes("e")) x1 = px;
  return bboxFromCorners(y0, x0, y1, x1); // dragging past the opposite edge flips, never inverts
}

function drawBox(ctx, el, i, [y0, x0, y1, x1], sx, sy, dpr, selected) {
  const colour = boxColour(el, i);
  const x = x0 * sx, y = y0 * sy, w = (x1 - x0) * sx, h = (y1 - y0) * sy;
  ctx.globalAlpha = 0.22;
  ctx.fillStyle = colour;
  ctx.fillRect(x, y, w, h);
  if (el.type === "text") { // hatching marks text elements, as in the server's preview
    ctx.save();
    ctx.beginPath(); ctx.rect(x, y, w, h); ctx.clip();
    ctx.globalAlpha = 0.25; ctx.strokeStyle = colour; ctx.lineWidth = 2 * dpr;
    for (let d = -h; d < w; d += 10 * dpr) { ctx.beginPath(); ctx.moveTo(x + d, y + h); ctx.lineTo(x + d + h, y); ctx.stroke(); }
    ctx.restore();
  }
  ctx.globalAlpha = 1;
  ctx.strokeStyle = colour;
  ctx.lineWidth = (selected ? 2.5 : 1.5) * dpr;
  ctx.strokeRect(x, y, w, h);
  // Palette swatches along the top edge show the element's colours at a glance.
  const palette = (el.color_palette ?? []).filter((c) => /^#[0-9A-F]{6}$/i.test(c));
  palette.forEach((c, k) => { ctx.fillStyle = c; ctx.fillRect(x + w - (palette.length - k) * 10 * dpr, y, 10 * dpr, 6 * dpr); });
  const label = `${i + 1} ${el.type === "text" ? `“${el.text ?? ""}”` : el.desc || el.type}`;
  ctx.font = `${11 * dpr}px sans-serif`;
  const tw = Math.min(ctx.measureText(label).width + 6 * dpr, Math.max(w, 18 * dpr));
  ctx.fillStyle = colour;
  ctx.fillRect(x, y, tw, 15 * dpr);
  ctx.save();
  ctx.beginPath(); ctx.rect(x, y, tw, 15 * dpr); ctx.clip();
  ctx.fillStyle = "#000000";
  ctx.fillText(label, x + 3 * dpr, y + 11 * dpr);
  ctx.restore();
  if (selected) {
    ctx.fillStyle = "#FFFFFF";
    ctx.strokeStyle = "#000000";
    ctx.lineWidth = 1 * dpr;
    for (const [, hy, hx] of handlePoints([y0, x0, y1, x1])) {
      ctx.fillRect(hx * sx - 4 * dpr, hy * sy - 4 * dpr, 8 * dpr, 8 * dpr);
      ctx.strokeRect(hx * sx - 4 * dpr, hy * sy - 4 * dpr, 8 * dpr, 8 * dpr);
    }
  }
}
