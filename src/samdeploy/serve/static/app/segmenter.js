// Asks the server for masks: the prompt being edited, and the hover preview.
//
//   prompt changed ──▶ answer known? ──yes──▶ view.answer
//                          │ no
//                          ▼
//                   same question in flight as a hover? ──yes──▶ wait for it
//                          │ no
//                          ▼
//                   POST segment ──▶ still the prompt's question? ──▶ view.answer
//
// Answers are remembered by question (requestKey), so undo and redo redraw at once. The hover keeps
// at most one request in flight: pointer moves meanwhile only update the point it will ask next, and an
// answer is drawn only while it is still for the point under the pointer (a stale one is dropped).
// A hover whose answer nobody will need (the pointer left, a click changed the prompt) is aborted.

import { ApiError } from "./api.js";
import { isEmptyPrompt, requestKey, segmentRequest } from "./geometry.js";

const REMEMBERED = 256;

/**
 * @param {{api: object, store: object, reportError: (error: Error) => void, reupload: () => Promise<void>}} deps
 *   reupload sends the image again when the server has evicted it (404), keeping its id (a content hash)
 */
export function createSegmenter({ api, store, reportError, reupload }) {
  const answers = new Map();
  let hoverInFlight = null; // {key, promise, controller, adopted}
  let hoverPoint = null;
  let promptSequence = 0;

  const remember = (key, answer) => {
    answers.delete(key);
    answers.set(key, answer);
    if (answers.size > REMEMBERED) answers.delete(answers.keys().next().value);
  };

  async function ask(imageId, body, signal) {
    try {
      return await api.segment(imageId, body, signal);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
      await reupload();
      return api.segment(imageId, body, signal);
    }
  }

  /** Bring view.answer up to date with doc.prompt (after any commit, undo or redo). */
  async function updatePrompt() {
    const image = store.view.image;
    const sequence = ++promptSequence;
    if (!image || !store.view.ready || isEmptyPrompt(store.doc.prompt)) {
      store.setView({ answer: null, segmenting: false });
      return;
    }
    const body = segmentRequest(store.doc.prompt);
    const key = requestKey(image.id, body);
    if (hoverInFlight && hoverInFlight.key !== key) abortHover();
    store.setView({ hover: null });
    if (answers.has(key)) {
      store.setView({ answer: { key, ...answers.get(key) }, segmenting: false });
      return;
    }
    store.setView({ segmenting: true });
    try {
      let answer;
      if (hoverInFlight && hoverInFlight.key === key) {
        hoverInFlight.adopted = true;
        answer = await hoverInFlight.promise;
      } else {
        answer = await ask(image.id, body);
      }
      remember(key, answer);
      if (sequence === promptSequence) store.setView({ answer: { key, ...answer }, segmenting: false });
    } catch (error) {
      if (sequence === promptSequence) store.setView({ segmenting: false });
      if (error.name !== "AbortError") reportError(error);
    }
  }

  function abortHover() {
    if (hoverInFlight && !hoverInFlight.adopted) hoverInFlight.controller.abort();
  }

  /** The pointer is over image pixel `point` (null: it left the image). */
  function hover(point) {
    hoverPoint = point;
    const image = store.view.image;
    if (!point || !image || !store.view.ready || !isEmptyPrompt(store.doc.prompt)) {
      abortHover();
      if (store.view.hover) store.setView({ hover: null });
      return;
    }
    const body = segmentRequest({ points: [point], labels: [1], box: null });
    const key = requestKey(image.id, body);
    if (answers.has(key)) {
      store.setView({ hover: { key, ...answers.get(key) } });
      return;
    }
    if (hoverInFlight) return; // asked when the request in flight returns
    const controller = new AbortController();
    const entry = { key, controller, adopted: false, promise: ask(image.id, body, controller.signal) };
    hoverInFlight = entry;
    entry.promise
      .then((answer) => {
        remember(key, answer);
        const stillHere = hoverPoint && hoverPoint[0] === point[0] && hoverPoint[1] === point[1];
        if (stillHere && isEmptyPrompt(store.doc.prompt)) store.setView({ hover: { key, ...answer } });
      })
      .catch((error) => {
        if (error.name !== "AbortError" && !entry.adopted) reportError(error);
      })
      .finally(() => {
        hoverInFlight = null;
        const moved = hoverPoint && (hoverPoint[0] !== point[0] || hoverPoint[1] !== point[1]);
        if (moved) hover(hoverPoint);
      });
  }

  /** Forget everything (a new image). */
  function reset() {
    abortHover();
    answers.clear();
    hoverPoint = null;
    promptSequence += 1;
  }

  return { updatePrompt, hover, reset };
}
