// Styles for the caption builder, injected once. Colours follow ComfyUI's CSS variables so the
// editor matches light and dark themes; the fallbacks are for front ends without them.

const CSS = `
.i4cb-root { display: flex; flex-direction: column; gap: 4px; box-sizing: border-box; height: 100%;
  min-height: 0; font: 12px sans-serif; color: var(--input-text, #ddd); overflow: hidden; }
.i4cb-root button { font: 12px sans-serif; padding: 1px 6px; cursor: pointer; border-radius: 4px;
  border: 1px solid var(--border-color, #555); background: var(--comfy-input-bg, #222); color: inherit; }
.i4cb-root button:disabled { opacity: 0.4; cursor: default; }
.i4cb-root input, .i4cb-root textarea, .i4cb-root select { font: 12px sans-serif; color: inherit;
  background: var(--comfy-input-bg, #222); border: 1px solid var(--border-color, #555); border-radius: 4px;
  box-sizing: border-box; }
.i4cb-toolbar, .i4cb-row, .i4cb-list, .i4cb-palette { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; }
.i4cb-status { opacity: 0.8; margin-left: auto; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; max-width: 45%; }
.i4cb-canvas-host { flex: 1 1 0; min-height: 140px; overflow: hidden; display: flex; align-items: center; justify-content: center; }
.i4cb-canvas { display: block; outline: none; border: 1px solid var(--border-color, #555); touch-action: none; }
.i4cb-canvas:focus-visible { border-color: var(--p-primary-color, #4a9eff); }
.i4cb-chip.i4cb-on, .i4cb-root button.i4cb-on { border-color: var(--p-primary-color, #4a9eff); }
.i4cb-chip.i4cb-nobox { font-style: italic; }
.i4cb-panel { display: flex; flex-direction: column; gap: 4px; min-height: 96px; }
.i4cb-row > span:first-child { width: 34px; opacity: 0.8; }
.i4cb-row > input:not([type]), .i4cb-row > textarea { flex: 1; min-width: 80px; }
.i4cb-row textarea { resize: vertical; }
.i4cb-num { display: inline-flex; flex-direction: column; font-size: 9px; opacity: 0.85; }
.i4cb-num input { width: 52px; }
.i4cb-label { opacity: 0.8; min-width: 34px; }
.i4cb-swatch { display: inline-flex; flex-direction: column; align-items: center; }
.i4cb-swatch input[type=color] { width: 24px; height: 20px; padding: 0; border: 1px solid #888; cursor: pointer; }
.i4cb-swatch-tools { display: flex; opacity: 0; transition: opacity 0.1s; }
.i4cb-swatch:hover .i4cb-swatch-tools, .i4cb-swatch:focus-within .i4cb-swatch-tools { opacity: 1; }
.i4cb-swatch-tools button { padding: 0 2px; font-size: 10px; line-height: 10px; border: none; }
.i4cb-hex { width: 70px; }
.i4cb-count { opacity: 0.7; font-size: 10px; }
.i4cb-over, .i4cb-bad { color: #ff6b6b !important; border-color: #ff6b6b !important; opacity: 1; }
.i4cb-hint { opacity: 0.6; font-style: italic; }
.i4cb-report { margin: 0; max-height: 72px; overflow: auto; white-space: pre-wrap; font: 10px monospace;
  opacity: 0.85; display: none; }
`;

export function injectStyle() {
  if (document.getElementById("i4cb-style")) return;
  const style = document.createElement("style");
  style.id = "i4cb-style";
  style.textContent = CSS;
  document.head.appendChild(style);
}
