// The page around the picture, drawn from the store: candidate masks, the object list, the status line,
// progress, the message line and which buttons can be used. User actions go to `commands` (main.js).

import { promptAnswer } from "./actions.js";
import { cssColor } from "./colors.js";
import { overlayOf } from "./render.js";

const THUMB_WIDTH = 96;

/**
 * @param {{store: object, commands: object, elements: Object<string, HTMLElement>}} deps
 *   elements: candidates, objects, status, progress, message, messageText, latency, and the buttons
 *   newObject, undo, redo, everything, exportCoco, exportPng, exportPolygons
 */
export function createPanel({ store, commands, elements: el }) {
  const currentAnswer = () => promptAnswer(store.doc, store.view);

  function thumbnail(rle) {
    const { image } = store.view;
    const canvas = document.createElement("canvas");
    canvas.width = THUMB_WIDTH;
    canvas.height = Math.max(1, Math.round((THUMB_WIDTH * image.height) / image.width));
    const context = canvas.getContext("2d");
    context.scale(canvas.width / image.width, canvas.height / image.height);
    context.drawImage(image.bitmap, 0, 0);
    const overlay = overlayOf(rle, [255, 255, 0], { fill: 150, edge: 255 });
    if (overlay) context.drawImage(overlay.canvas, overlay.x, overlay.y);
    return canvas;
  }

  function renderCandidates() {
    const answer = currentAnswer();
    if (!answer) {
      el.candidates.replaceChildren();
      return;
    }
    const chosen = store.doc.choice ?? answer.best;
    el.candidates.replaceChildren(
      ...answer.masks.map((mask, i) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = i === chosen ? "candidate chosen" : "candidate";
        button.title = `use this mask (${i + 1})`;
        button.setAttribute("aria-pressed", String(i === chosen));
        const caption = document.createElement("span");
        caption.textContent = `${i + 1}: score ${mask.score.toFixed(3)}, ${mask.area} px`;
        button.append(thumbnail(mask.rle), caption);
        button.addEventListener("click", () => commands.pickCandidate(i));
        item.append(button);
        return item;
      }),
    );
  }

  // Rows are kept per object id and updated in place, so a label being edited keeps its focus.
  const rows = new Map();

  function createRow(id) {
    const item = document.createElement("li");
    item.dataset.id = String(id);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const label = document.createElement("input");
    label.className = "label";
    label.setAttribute("aria-label", `label of object ${id}`);
    label.addEventListener("change", () => commands.rename(id, label.value.trim() || label.defaultValue));
    label.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === "Escape") label.blur();
    });
    label.addEventListener("focus", () => commands.select(id));
    const area = document.createElement("span");
    area.className = "area";
    const hide = document.createElement("button");
    hide.type = "button";
    hide.className = "hide";
    hide.addEventListener("click", () => commands.toggleHidden(id));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "Delete";
    remove.addEventListener("click", () => commands.deleteObject(id));
    item.append(swatch, label, area, hide, remove);
    item.addEventListener("click", (event) => {
      if (event.target === item || event.target === swatch || event.target === area) commands.select(id);
    });
    return { item, swatch, label, area, hide };
  }

  function renderObjects() {
    const { objects, selected } = store.doc;
    const ids = new Set(objects.map((o) => o.id));
    for (const id of rows.keys()) if (!ids.has(id)) rows.delete(id);
    for (const object of objects) {
      if (!rows.has(object.id)) rows.set(object.id, createRow(object.id));
      const row = rows.get(object.id);
      row.item.className = [object.id === selected ? "selected" : "", object.hidden ? "hidden" : ""].join(" ").trim();
      row.swatch.style.background = cssColor(object.color);
      row.label.defaultValue = object.label;
      if (document.activeElement !== row.label) row.label.value = object.label;
      row.area.textContent = `${object.area} px`;
      row.hide.textContent = object.hidden ? "Show" : "Hide";
    }
    const wanted = objects.map((o) => rows.get(o.id).item);
    const current = [...el.objects.children];
    if (wanted.length !== current.length || wanted.some((item, i) => item !== current[i])) {
      el.objects.replaceChildren(...wanted);
    }
  }

  function renderStatus() {
    const { view, doc } = store;
    document.body.dataset.status = view.status;
    el.status.textContent = view.job
      ? `Segment everything: ${Math.round(view.job.progress * 100)}%`
      : view.segmenting
        ? "Segmenting…"
        : view.statusText;
    const progress = view.job ? { fraction: view.job.progress } : view.progress;
    el.progress.hidden = !progress;
    if (progress && progress.fraction !== null) el.progress.value = progress.fraction;
    else el.progress.removeAttribute("value"); // indeterminate: the server does not report encoder progress
    el.message.hidden = !view.message;
    el.message.className = view.message ? view.message.kind : "";
    el.messageText.textContent = view.message ? view.message.text : "";
    const ready = Boolean(view.image && view.ready);
    const hasObjects = doc.objects.length > 0 || currentAnswer() !== null;
    el.newObject.disabled = !currentAnswer();
    el.undo.disabled = !store.canUndo();
    el.redo.disabled = !store.canRedo();
    el.everything.disabled = !ready || Boolean(view.job);
    for (const button of [el.exportCoco, el.exportPng, el.exportPolygons]) button.disabled = !ready || !hasObjects;
    if (view.latency) {
      el.latency.textContent = `click → mask: ${Math.round(view.latency.ms)} ms`;
      el.latency.dataset.ms = String(view.latency.ms);
      el.latency.dataset.count = String(view.latency.count);
    }
  }

  store.on("doc", () => {
    renderObjects();
    renderCandidates();
    renderStatus();
  });
  store.on("view", (view, patch) => {
    if ("answer" in patch || "image" in patch) renderCandidates();
    renderStatus();
  });
  renderStatus();
}
