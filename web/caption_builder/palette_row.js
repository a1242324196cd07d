// A row of colour swatches: each is a native colour picker with move-left / remove / move-right
// buttons, plus "+" (add) and a hex box for pasting "#RRGGBB". Colours are stored uppercase,
// the only form the model saw. Over-long palettes (e.g. imported) are shown, counted in red and
// left to the server's verifier to refuse: nothing is dropped silently.

import { normaliseHex } from "./layout_state.js";

const SUGGESTIONS = ["#1B1B2F", "#F5C542", "#E94560", "#0F3460", "#16C79A", "#F4F4F4", "#FF7F11", "#7B2CBF"];

const el = (tag, props = {}, children = []) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};

/**
 * @param opts {label, role, max, get(): string[], set(colours, mergeKey)}
 * @returns {element, render()}
 */
export function paletteRow({ label, role, max, get, set }) {
  const root = el("div", { className: "i4cb-palette" });
  root.dataset.role = role;
  const render = () => {
    const colours = get();
    const items = colours.map((colour, i) => swatch(colour, i, colours));
    const count = el("span", { className: "i4cb-count", textContent: `${colours.length}/${max}` });
    if (colours.length > max) count.classList.add("i4cb-over");
    const add = el("button", { className: "i4cb-add", textContent: "+", title: "Add a colour",
      disabled: colours.length >= max });
    add.dataset.role = "add-colour";
    add.onclick = () => {
      const next = SUGGESTIONS.find((c) => !colours.includes(c)) ?? "#808080";
      set([...colours, next], null);
    };
    const hex = el("input", { className: "i4cb-hex", placeholder: "#RRGGBB", title: "Paste a hex colour, press Enter" });
    hex.dataset.role = "hex-input";
    hex.onkeydown = (e) => {
      e.stopPropagation(); // typing here must not trigger ComfyUI shortcuts
      if (e.key !== "Enter") return;
      const value = normaliseHex(hex.value);
      if (!value) { hex.classList.add("i4cb-bad"); return; }
      if (colours.length >= max) return;
      set([...colours, value], null);
    };
    root.replaceChildren(el("span", { className: "i4cb-label", textContent: label }), ...items, add, hex, count);
  };

  const swatch = (colour, i, colours) => {
    const valid = normaliseHex(colour);
    const picker = el("input", { type: "color", value: (valid ?? "#000000").toLowerCase(), title: colour });
    picker.dataset.role = "colour";
    if (!valid) picker.classList.add("i4cb-bad");
    // `input` fires continuously while the picker is dragged: merge those into one undo step.
    picker.oninput = () => set(colours.map((c, k) => (k === i ? picker.value.toUpperCase() : c)), `${role}:${i}`);
    const move = (to) => {
      const next = colours.slice();
      [next[i], next[to]] = [next[to], next[i]];
      set(next, null);
    };
    const left = el("button", { textContent: "‹", title: "Move left", disabled: i === 0 });
    left.onclick = () => move(i - 1);
    const right = el("button", { textContent: "›", title: "Move right", disabled: i === colours.length - 1 });
    right.onclick = () => move(i + 1);
    const remove = el("button", { textContent: "×", title: `Remove ${colour}` });
    remove.dataset.role = "remove-colour";
    remove.onclick = () => set(colours.filter((_, k) => k !== i), null);
    return el("span", { className: "i4cb-swatch" }, [picker, el("span", { className: "i4cb-swatch-tools" }, [left, remove, right])]);
  };

  return { element: root, render };
}
