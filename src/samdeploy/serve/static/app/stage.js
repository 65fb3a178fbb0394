// Pointer input on the picture: turns pointer events into prompts in image pixels.
//   click         positive point       right click, or Shift/Alt + click: negative point
//   drag          box                  moving with no button down: hover
// Emits on `events`: "point" ({point, label, time}), "box" ({box, time}), "drag" (box | null while
// dragging), "hover" (point | null). `time` is performance.now() when the button came up.

import { clientToImage, cornersToBox } from "./geometry.js";

const DRAG_THRESHOLD = 4; // CSS pixels of travel before a press becomes a box

/**
 * @param {{element: HTMLElement, surface: HTMLCanvasElement, store: object, events: object}} deps
 *   element receives the pointer events; surface is the canvas whose rectangle is the picture on screen
 */
export function createStage({ element, surface, store, events }) {
  let press = null; // {clientX, clientY, point, negative, dragging}

  const imagePoint = (event) => clientToImage(surface.getBoundingClientRect(), store.view.image, event.clientX, event.clientY);
  const overImage = (event) => {
    const rect = surface.getBoundingClientRect();
    return event.clientX >= rect.left && event.clientX < rect.right && event.clientY >= rect.top && event.clientY < rect.bottom;
  };
  const active = () => store.view.image && store.view.ready;

  element.addEventListener("contextmenu", (event) => event.preventDefault());

  element.addEventListener("pointerdown", (event) => {
    if (!active() || !overImage(event) || (event.button !== 0 && event.button !== 2)) return;
    event.preventDefault();
    element.setPointerCapture(event.pointerId);
    press = {
      clientX: event.clientX,
      clientY: event.clientY,
      point: imagePoint(event),
      negative: event.button === 2 || event.shiftKey || event.altKey,
      boxAllowed: event.button === 0,
      dragging: false,
    };
    // The hover request in flight stays: it asks for this very point, which the click wants too.
  });

  element.addEventListener("pointermove", (event) => {
    if (!active()) return;
    if (!press) {
      events.emit("hover", overImage(event) ? imagePoint(event) : null);
      return;
    }
    const travel = Math.hypot(event.clientX - press.clientX, event.clientY - press.clientY);
    if (press.boxAllowed && !press.dragging && travel >= DRAG_THRESHOLD) {
      press.dragging = true;
      events.emit("hover", null);
    }
    if (press.dragging) events.emit("drag", cornersToBox(press.point, imagePoint(event)));
  });

  element.addEventListener("pointerup", (event) => {
    if (!press) return;
    const time = performance.now();
    const { point, negative, dragging } = press;
    press = null;
    if (!active()) return;
    if (dragging) {
      events.emit("drag", null);
      events.emit("box", { box: cornersToBox(point, imagePoint(event)), time });
    } else {
      events.emit("point", { point, label: negative ? 0 : 1, time });
    }
  });

  element.addEventListener("pointercancel", () => {
    if (press?.dragging) events.emit("drag", null);
    press = null;
  });

  element.addEventListener("pointerleave", () => {
    if (!press) events.emit("hover", null);
  });
}
