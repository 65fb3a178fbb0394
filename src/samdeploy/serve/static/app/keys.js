// Keyboard shortcuts: one table, used both to handle keys and to list them on the page.

/** [keys shown, action name, what it does]; Ctrl is Cmd on a Mac. */
export const SHORTCUTS = [
  ["click", null, "add a positive point"],
  ["right click / Shift+click", null, "add a negative point"],
  ["drag", null, "draw a box"],
  ["N / Enter", "newObject", "keep the mask as a new object"],
  ["Esc", "clearPrompt", "clear the points and box"],
  ["1 2 3", "pickCandidate", "pick a candidate mask"],
  ["Ctrl+Z", "undo", "undo"],
  ["Ctrl+Shift+Z / Ctrl+Y", "redo", "redo"],
  ["[ ]", "selectNext", "select the previous / next object"],
  ["H", "toggleHidden", "hide or show the selected object"],
  ["F2", "rename", "rename the selected object"],
  ["Del / Backspace", "deleteSelected", "delete the selected object"],
  ["E", "everything", "segment everything"],
  ["O", "open", "open an image"],
];

/**
 * The action of a key event, or null.
 * @param {KeyboardEvent} event
 * @returns {{action: string, argument?: number} | null}
 */
export function actionOf(event) {
  const mod = event.ctrlKey || event.metaKey;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (mod && key === "z") return { action: event.shiftKey ? "redo" : "undo" };
  if (mod && key === "y") return { action: "redo" };
  if (mod || event.altKey) return null;
  if (key === "n" || key === "Enter") return { action: "newObject" };
  if (key === "Escape") return { action: "clearPrompt" };
  if (key === "1" || key === "2" || key === "3") return { action: "pickCandidate", argument: Number(key) - 1 };
  if (key === "[" || key === "]") return { action: "selectNext", argument: key === "]" ? 1 : -1 };
  if (key === "h") return { action: "toggleHidden" };
  if (key === "F2") return { action: "rename" };
  if (key === "Delete" || key === "Backspace") return { action: "deleteSelected" };
  if (key === "e") return { action: "everything" };
  if (key === "o") return { action: "open" };
  return null;
}

/** The shortcut list as rows of a <dl>. */
export function renderShortcuts(list) {
  list.replaceChildren(
    ...SHORTCUTS.flatMap(([keys, , text]) => {
      const term = document.createElement("dt");
      for (const [i, part] of keys.split(" / ").entries()) {
        if (i) term.append(" / ");
        const kbd = document.createElement("kbd");
        kbd.textContent = part;
        term.append(kbd);
      }
      const description = document.createElement("dd");
      description.textContent = text;
      return [term, description];
    }),
  );
}

