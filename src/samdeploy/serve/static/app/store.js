// The page's one data store.
//
//   doc   what the user made: objects, the prompt being edited, the selection. Every change is a commit,
//         and undo / redo step through commits.
//   view  what the page shows around it: the image, server answers, progress, messages. Never undone.
//
// Modules read `store.doc` / `store.view` and listen to "doc" and "view" events; only commit(),
// undo(), redo(), resetDoc() and setView() change anything.

import { createEmitter } from "./emitter.js";

const HISTORY_LIMIT = 200;

/** The doc of a fresh image. */
export function emptyDoc() {
  return {
    objects: [],
    selected: null,
    prompt: { points: [], labels: [], box: null },
    choice: null, // the candidate the user picked for the prompt; null = the best-scored one
    nextId: 1,
  };
}

export function createStore(view) {
  const events = createEmitter();
  let doc = emptyDoc();
  let past = [];
  let future = [];
  let currentView = view;

  const setDoc = (next) => {
    doc = next;
    events.emit("doc", doc);
  };

  return {
    on: events.on,
    get doc() {
      return doc;
    },
    get view() {
      return currentView;
    },
    canUndo: () => past.length > 0,
    canRedo: () => future.length > 0,
    /** Apply `change(doc) -> doc`; a change that returns the same doc is not a step. */
    commit(change) {
      const next = change(doc);
      if (next === doc) return;
      past = [...past.slice(-(HISTORY_LIMIT - 1)), doc];
      future = [];
      setDoc(next);
    },
    undo() {
      if (!past.length) return;
      future = [doc, ...future];
      setDoc(past[past.length - 1]);
      past = past.slice(0, -1);
    },
    redo() {
      if (!future.length) return;
      past = [...past, doc];
      setDoc(future[0]);
      future = future.slice(1);
    },
    /** A new image: a fresh doc and no history. */
    resetDoc() {
      past = [];
      future = [];
      setDoc(emptyDoc());
    },
    /** Merge `patch` into the view. */
    setView(patch) {
      currentView = { ...currentView, ...patch };
      events.emit("view", currentView, patch);
    },
  };
}
