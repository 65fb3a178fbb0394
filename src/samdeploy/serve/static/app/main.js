// Wires the page together:
//
//   stage.js (pointer) ──events──▶ main: commands ──commit──▶ store.doc ──▶ segmenter ──▶ store.view.answer
//   keys.js (keyboard) ──────────▶      │                          │                          │
//   buttons, panel.js ───────────▶      └─ api.js (upload, jobs)   └──────── render.js, panel.js ◀┘
//
// Errors from the server or the browser become the message line; the page keeps working.

import * as edit from "./actions.js";
import { ApiError, createApi } from "./api.js";
import { createEmitter } from "./emitter.js";
import { cocoInstances, cocoPolygons, download, jsonBlob, objectsToExport, pngMasksZip } from "./exporters.js";
import { fitSize, requestKey, segmentRequest } from "./geometry.js";
import { actionOf, renderShortcuts } from "./keys.js";
import { createPanel } from "./panel.js";
import { createRenderer } from "./render.js";
import { createSegmenter } from "./segmenter.js";
import { createStage } from "./stage.js";
import { createStore } from "./store.js";

const JOB_POLL_MS = 400;
const EVERYTHING_OPTIONS = [
  ["points-per-side", "points_per_side"],
  ["pred-iou-thresh", "pred_iou_thresh"],
  ["stability-score-thresh", "stability_score_thresh"],
];

const $ = (id) => document.getElementById(id);
const imageLayer = $("image-layer");
const promptLayer = $("prompt-layer");

const store = createStore({
  image: null, // {id, width, height, name, blob, bitmap, modelId}
  ready: false,
  status: "empty", // empty | uploading | encoding | ready
  statusText: "Open an image to start",
  progress: null, // {fraction: 0..1 | null}
  message: null, // {kind: "error" | "info", text}
  answer: null, // the server's answer for the edited prompt, with its request key
  hover: null, // the answer for the point under the pointer
  drag: null, // the box being dragged
  scale: 1, // CSS pixels per image pixel
  segmenting: false,
  job: null, // {id, progress}
  latency: null, // {ms, count}: the last click's time to its mask on screen
});
const events = createEmitter();
const api = createApi({ apiKey: () => $("api-key").value.trim() });

/** A failure the user can act on (as opposed to a bug of the page): shown as its message alone. */
class PageError extends Error {}

function showError(error) {
  const expected = error instanceof ApiError || error instanceof PageError;
  const text = expected ? error.message : `unexpected error: ${error.message ?? error}`;
  store.setView({ message: { kind: "error", text } });
}

function showInfo(text) {
  store.setView({ message: { kind: "info", text } });
}

let reuploading = null;
/** Send the current image again (the server evicted its embedding); its id is its content hash. */
function reupload() {
  reuploading ??= (async () => {
    showInfo("The server had dropped this image's embedding; sending the image again…");
    await api.uploadImage(store.view.image.blob, () => {});
    store.setView({ message: null });
  })().finally(() => {
    reuploading = null;
  });
  return reuploading;
}

const segmenter = createSegmenter({ api, store, reportError: showError, reupload });

// Click-to-mask latency: from the button coming up to the first frame showing the mask.
let pendingClick = null;
function onDrawn(key) {
  if (!pendingClick || pendingClick.key !== key) return;
  const { time } = pendingClick;
  pendingClick = null;
  requestAnimationFrame(() => {
    const count = (store.view.latency?.count ?? 0) + 1;
    store.setView({ latency: { ms: performance.now() - time, count } });
  });
}

createRenderer({ store, imageLayer, promptLayer, onDrawn });
createStage({ element: $("stage"), surface: promptLayer, store, events });

function promptKeyAfter(change) {
  return requestKey(store.view.image.id, segmentRequest(change(store.doc).prompt));
}

events.on("point", ({ point, label, time }) => {
  const change = (doc) => edit.addPoint(doc, point, label);
  pendingClick = { key: promptKeyAfter(change), time };
  store.commit(change);
});
events.on("box", ({ box, time }) => {
  const change = (doc) => edit.setBox(doc, box);
  pendingClick = { key: promptKeyAfter(change), time };
  store.commit(change);
});
events.on("drag", (box) => store.setView({ drag: box }));
events.on("hover", (point) => segmenter.hover(point));
store.on("doc", () => segmenter.updatePrompt());

async function openImage(blob, name) {
  store.setView({ message: null, status: "uploading", statusText: "Uploading…", progress: { fraction: 0 } });
  try {
    const info = await api.uploadImage(blob, (phase, fraction) => {
      if (phase === "upload") store.setView({ statusText: `Uploading ${Math.round(fraction * 100)}%`, progress: { fraction } });
      else store.setView({ status: "encoding", statusText: "Computing the image embedding…", progress: { fraction: null } });
    });
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob);
    } catch {
      throw new PageError("the server read the image but this browser cannot display its format: convert it to PNG or JPEG");
    }
    if (bitmap.width !== info.width || bitmap.height !== info.height) {
      throw new PageError(`the browser sees ${bitmap.width}x${bitmap.height} pixels, the server ${info.width}x${info.height}`);
    }
    segmenter.reset();
    pendingClick = null;
    const image = { id: info.image_id, width: info.width, height: info.height, name, blob, bitmap, modelId: info.model_id };
    const statusText = `${name}: ${image.width}x${image.height}. Click an object`;
    store.setView({ image, ready: true, answer: null, hover: null, status: "ready", statusText, progress: null });
    layout();
    store.resetDoc();
  } catch (error) {
    showError(error);
    const image = store.view.image;
    store.setView({
      status: image ? "ready" : "empty",
      statusText: image ? `${image.name}: ${image.width}x${image.height}` : "Open an image to start",
      progress: null,
    });
  }
}

/** Fit the layers into the stage; CSS scales them, their pixels stay the image's. */
function layout() {
  const { image } = store.view;
  if (!image) return;
  const stage = $("stage");
  const size = fitSize(image, { width: stage.clientWidth - 16, height: stage.clientHeight - 16 });
  for (const layer of [imageLayer, promptLayer]) {
    layer.style.width = `${size.width}px`;
    layer.style.height = `${size.height}px`;
  }
  $("layers").style.width = `${size.width}px`;
  $("layers").style.height = `${size.height}px`;
  store.setView({ scale: size.scale });
}
// Laid out in the next frame, not inside the observer's callback: resizing there would notify the
// observer again within the same frame (the browser reports that as an error).
new ResizeObserver(() => requestAnimationFrame(layout)).observe($("stage"));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function segmentEverything() {
  const { image, ready, job } = store.view;
  if (!image || !ready || job) return;
  const options = {};
  for (const [id, name] of EVERYTHING_OPTIONS) {
    const value = $(id).value.trim();
    if (value) options[name] = Number(value);
  }
  store.setView({ job: { id: null, progress: 0 }, message: null });
  try {
    let started;
    try {
      started = await api.everything(image.id, options);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
      await reupload();
      started = await api.everything(image.id, options);
    }
    for (;;) {
      await sleep(JOB_POLL_MS);
      const state = await api.job(started.job_id);
      if (store.view.image !== image) return; // another image was opened meanwhile
      store.setView({ job: { id: started.job_id, progress: state.progress ?? 0 } });
      if (state.status === "failed") throw new PageError(`segment everything failed: ${state.error}`);
      if (state.status === "done") {
        store.commit((doc) => edit.addRecords(doc, state.records, $("label").value.trim() || "object"));
        showInfo(`Segment everything found ${state.records.length} objects`);
        return;
      }
    }
  } catch (error) {
    showError(error);
  } finally {
    store.setView({ job: null });
  }
}

function exportName(suffix) {
  return `${store.view.image.name.replace(/\.[^.]+$/, "")}_${suffix}`;
}

async function exportAs(kind) {
  const { image } = store.view;
  if (!image) return;
  const objects = objectsToExport(store.doc, currentAnswer(), $("label").value.trim() || "object");
  if (!objects.length) return;
  try {
    if (kind === "coco") download(jsonBlob(cocoInstances(objects, image)), exportName("coco.json"));
    if (kind === "polygons") download(jsonBlob(cocoPolygons(objects, image)), exportName("polygons.json"));
    if (kind === "png") download(await pngMasksZip(objects, image), exportName("masks.zip"));
  } catch (error) {
    showError(error);
  }
}

const currentAnswer = () => edit.promptAnswer(store.doc, store.view);

const commands = {
  open: () => $("file").click(),
  newObject: () => {
    const answer = currentAnswer();
    if (answer) store.commit((doc) => edit.newObject(doc, answer, $("label").value.trim() || "object"));
  },
  clearPrompt: () => store.commit(edit.clearPrompt),
  pickCandidate: (index) => {
    const answer = currentAnswer();
    if (answer && index < answer.masks.length) store.commit((doc) => edit.pickCandidate(doc, index));
  },
  undo: () => store.undo(),
  redo: () => store.redo(),
  selectNext: (step) => store.commit((doc) => edit.selectNext(doc, step)),
  select: (id) => store.commit((doc) => edit.selectObject(doc, id)),
  toggleHidden: (id = store.doc.selected) => store.commit((doc) => edit.toggleHidden(doc, id)),
  rename: (id, label) => {
    if (label === undefined) {
      document.querySelector(`#objects li[data-id="${store.doc.selected}"] input.label`)?.select();
      return;
    }
    store.commit((doc) => edit.renameObject(doc, id, label));
  },
  deleteObject: (id) => store.commit((doc) => edit.deleteObject(doc, id)),
  deleteSelected: () => store.commit((doc) => edit.deleteObject(doc, doc.selected)),
  everything: segmentEverything,
};

createPanel({
  store,
  commands,
  elements: {
    candidates: $("candidates"),
    objects: $("objects"),
    status: $("status"),
    progress: $("progress"),
    message: $("message"),
    messageText: $("message-text"),
    latency: $("latency"),
    newObject: $("new-object"),
    undo: $("undo"),
    redo: $("redo"),
    everything: $("everything"),
    exportCoco: $("export-coco"),
    exportPng: $("export-png"),
    exportPolygons: $("export-polygons"),
  },
});
renderShortcuts($("shortcuts"));

$("open").addEventListener("click", commands.open);
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) openImage(file, file.name);
  $("file").value = ""; // the same file again is a new choice
});
$("new-object").addEventListener("click", commands.newObject);
$("undo").addEventListener("click", commands.undo);
$("redo").addEventListener("click", commands.redo);
$("everything").addEventListener("click", commands.everything);
$("export-coco").addEventListener("click", () => exportAs("coco"));
$("export-png").addEventListener("click", () => exportAs("png"));
$("export-polygons").addEventListener("click", () => exportAs("polygons"));
$("message-close").addEventListener("click", () => store.setView({ message: null }));

function firstImageFile(files) {
  return [...(files ?? [])].find((file) => file.type.startsWith("image/") || file.type === "") ?? null;
}

const stage = $("stage");
stage.addEventListener("dragover", (event) => {
  event.preventDefault();
  stage.classList.add("dropping");
});
stage.addEventListener("dragleave", () => stage.classList.remove("dropping"));
stage.addEventListener("drop", (event) => {
  event.preventDefault();
  stage.classList.remove("dropping");
  const file = firstImageFile(event.dataTransfer?.files);
  if (file) openImage(file, file.name);
  else showError(new PageError("drop an image file"));
});
document.addEventListener("paste", (event) => {
  const file = firstImageFile(event.clipboardData?.files);
  if (!file) return; // pasted text: not ours
  event.preventDefault();
  openImage(file, file.name && file.name !== "image.png" ? file.name : "pasted.png");
});

document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement;
  if (typing) {
    if (event.key === "Escape") event.target.blur(); // back to the page's shortcuts
    return;
  }
  const found = actionOf(event);
  if (!found || !(found.action in commands)) return;
  event.preventDefault();
  commands[found.action](found.argument);
});

// Nothing fails silently: a bug shows up on the page rather than leaving it dead.
window.addEventListener("error", (event) => showError(event.error ?? new Error(event.message)));
window.addEventListener("unhandledrejection", (event) => showError(event.reason ?? new Error("a promise failed")));
