// Draws the store on two stacked canvases, both at the image's own resolution (CSS scales them):
//   image layer   the picture and the kept objects (redrawn when objects change)
//   prompt layer  the mask of the prompt being edited or the hover preview, its points and box, the box
//                 being dragged (redrawn on every answer and pointer move)
// Neither canvas takes pointer events: the stage around them does (stage.js).

import { colorFor, cssColor } from "./colors.js";
import { chosenMask, promptAnswer } from "./actions.js";
import { maskBounds, maskPixels } from "./masks.js";
import { decodeRle } from "./rle.js";

const overlays = new WeakMap(); // rle -> Map(style -> {canvas, x, y})

/**
 * One mask painted in one colour, as a canvas the size of the mask's bounds and where to draw it
 * (cached per RLE object and style; the decoded mask itself is not kept: H*W bytes per object).
 * @returns {{canvas: HTMLCanvasElement, x: number, y: number} | null} null for an empty mask
 */
export function overlayOf(rle, rgb, alpha) {
  if (!overlays.has(rle)) overlays.set(rle, new Map());
  const styles = overlays.get(rle);
  const style = `${rgb}/${alpha.fill}/${alpha.edge}`;
  if (!styles.has(style)) {
    const [height, width] = rle.size;
    const mask = decodeRle(rle);
    const bounds = maskBounds(mask, width, height);
    let overlay = null;
    if (bounds) {
      const canvas = document.createElement("canvas");
      [canvas.width, canvas.height] = [bounds[2], bounds[3]];
      const pixels = maskPixels(mask, width, height, rgb, alpha, bounds);
      canvas.getContext("2d").putImageData(new ImageData(pixels, bounds[2], bounds[3]), 0, 0);
      overlay = { canvas, x: bounds[0], y: bounds[1] };
    }
    styles.set(style, overlay);
  }
  return styles.get(style);
}

function drawOverlay(context, overlay) {
  if (overlay) context.drawImage(overlay.canvas, overlay.x, overlay.y);
}

const OBJECT = { fill: 100, edge: 230 };
const SELECTED = { fill: 150, edge: 255 };
const EDITED = { fill: 140, edge: 255 };
const HOVER = { fill: 80, edge: 170 };

/**
 * @param {{store: object, imageLayer: HTMLCanvasElement, promptLayer: HTMLCanvasElement,
 *          onDrawn: (key: string) => void}} deps onDrawn: the prompt's answer `key` is on screen
 */
export function createRenderer({ store, imageLayer, promptLayer, onDrawn }) {
  function drawImageLayer() {
    const { image } = store.view;
    const context = imageLayer.getContext("2d");
    context.clearRect(0, 0, imageLayer.width, imageLayer.height);
    drawn = { objects: store.doc.objects, selected: store.doc.selected };
    if (!image) return;
    context.drawImage(image.bitmap, 0, 0);
    for (const object of store.doc.objects) {
      if (object.hidden) continue;
      const alpha = object.id === store.doc.selected ? SELECTED : OBJECT;
      drawOverlay(context, overlayOf(object.rle, object.color, alpha));
    }
  }

  function drawPromptLayer() {
    const { image, hover, drag, scale } = store.view;
    const { doc } = store;
    const context = promptLayer.getContext("2d");
    context.clearRect(0, 0, promptLayer.width, promptLayer.height);
    if (!image) return;
    const color = colorFor(doc.nextId);
    const answer = promptAnswer(doc, store.view);
    if (answer) {
      drawOverlay(context, overlayOf(chosenMask(doc, answer).rle, color, EDITED));
    } else if (hover) {
      drawOverlay(context, overlayOf(hover.masks[hover.best].rle, color, HOVER));
    }
    const unit = 1 / (scale || 1); // one CSS pixel, in image pixels
    context.lineWidth = 2 * unit;
    for (const box of [doc.prompt.box, drag]) {
      if (!box) continue;
      context.strokeStyle = box === drag ? "rgba(255, 255, 255, 0.9)" : cssColor(color);
      context.setLineDash(box === drag ? [6 * unit, 4 * unit] : []);
      context.strokeRect(box[0], box[1], box[2] - box[0] + 1, box[3] - box[1] + 1);
    }
    context.setLineDash([]);
    doc.prompt.points.forEach(([x, y], i) => {
      context.beginPath();
      context.arc(x + 0.5, y + 0.5, 5 * unit, 0, 2 * Math.PI);
      context.fillStyle = doc.prompt.labels[i] === 1 ? "#22c55e" : "#ef4444";
      context.fill();
      context.strokeStyle = "white";
      context.stroke();
    });
    if (answer) onDrawn(answer.key);
  }

  function resize() {
    const { image } = store.view;
    for (const layer of [imageLayer, promptLayer]) {
      layer.width = image ? image.width : 0;
      layer.height = image ? image.height : 0;
    }
  }

  let drawn = { objects: null, selected: null };
  store.on("doc", (doc) => {
    if (doc.objects !== drawn.objects || doc.selected !== drawn.selected) drawImageLayer();
    drawPromptLayer();
  });
  store.on("view", (view, patch) => {
    if ("image" in patch) {
      resize();
      drawImageLayer();
    }
    if ("image" in patch || "answer" in patch || "hover" in patch || "drag" in patch || "scale" in patch) {
      drawPromptLayer();
    }
  });
}
