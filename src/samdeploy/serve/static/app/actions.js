// Edits of the doc (store.js), as pure functions doc -> doc: each is one undoable step.

import { colorFor } from "./colors.js";
import { isEmptyPrompt, requestKey, segmentRequest } from "./geometry.js";
import { emptyDoc } from "./store.js";

const EMPTY_PROMPT = emptyDoc().prompt;

/** Add a point (image pixels; label 1 foreground, 0 background) to the prompt being edited. */
export function addPoint(doc, point, label) {
  const prompt = { ...doc.prompt, points: [...doc.prompt.points, point], labels: [...doc.prompt.labels, label] };
  return { ...doc, prompt, choice: null };
}

/** Set the prompt's box (XYXY image pixels); it replaces an earlier box. */
export function setBox(doc, box) {
  return { ...doc, prompt: { ...doc.prompt, box }, choice: null };
}

export function clearPrompt(doc) {
  return isEmptyPrompt(doc.prompt) ? doc : { ...doc, prompt: EMPTY_PROMPT, choice: null };
}

export function pickCandidate(doc, index) {
  return doc.choice === index ? doc : { ...doc, choice: index };
}

/**
 * The server's answer for the prompt being edited, or null while there is none (not asked yet, on its
 * way, or `view.answer` is for an earlier prompt).
 */
export function promptAnswer(doc, view) {
  const { image, answer } = view;
  if (!image || !answer) return null;
  return answer.key === requestKey(image.id, segmentRequest(doc.prompt)) ? answer : null;
}

/** The mask the prompt currently stands for: the picked candidate, else the best. */
export function chosenMask(doc, answer) {
  if (!answer) return null;
  const index = doc.choice !== null && doc.choice < answer.masks.length ? doc.choice : answer.best;
  return answer.masks[index];
}

function makeObject(id, label, mask, source) {
  return {
    id,
    label,
    color: colorFor(id),
    hidden: false,
    rle: mask.rle,
    area: mask.area,
    bbox: mask.bbox,
    score: mask.score ?? mask.predicted_iou ?? null,
    source,
  };
}

/** Keep the prompt's mask as a new object; the prompt starts over. */
export function newObject(doc, answer, label) {
  const mask = chosenMask(doc, answer);
  if (!mask) return doc;
  const object = makeObject(doc.nextId, label, mask, "prompt");
  return { ...doc, objects: [...doc.objects, object], selected: object.id, nextId: doc.nextId + 1, prompt: EMPTY_PROMPT, choice: null };
}

/** Add "segment everything" records ({segmentation, area, bbox, predicted_iou}) as objects. */
export function addRecords(doc, records, label) {
  if (!records.length) return doc;
  const objects = records.map((record, i) =>
    makeObject(doc.nextId + i, label, { ...record, rle: record.segmentation }, "everything"),
  );
  return { ...doc, objects: [...doc.objects, ...objects], nextId: doc.nextId + objects.length };
}

export function selectObject(doc, id) {
  return doc.selected === id ? doc : { ...doc, selected: id };
}

/** Select the object `step` places after (or before, step < 0) the selected one, wrapping around. */
export function selectNext(doc, step) {
  if (!doc.objects.length) return doc;
  const index = doc.objects.findIndex((o) => o.id === doc.selected);
  const start = index < 0 ? (step > 0 ? -1 : 0) : index;
  const next = (start + step + doc.objects.length) % doc.objects.length;
  return selectObject(doc, doc.objects[next].id);
}

function updateObject(doc, id, change) {
  if (!doc.objects.some((o) => o.id === id)) return doc;
  return { ...doc, objects: doc.objects.map((o) => (o.id === id ? { ...o, ...change } : o)) };
}

export function renameObject(doc, id, label) {
  const object = doc.objects.find((o) => o.id === id);
  return !object || object.label === label ? doc : updateObject(doc, id, { label });
}

export function toggleHidden(doc, id) {
  const object = doc.objects.find((o) => o.id === id);
  return object ? updateObject(doc, id, { hidden: !object.hidden }) : doc;
}

export function deleteObject(doc, id) {
  if (!doc.objects.some((o) => o.id === id)) return doc;
  return { ...doc, objects: doc.objects.filter((o) => o.id !== id), selected: doc.selected === id ? null : doc.selected };
}
