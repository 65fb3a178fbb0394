// Pure geometry and request building: pointer positions -> image pixels, prompts -> request bodies.

/**
 * The one place where a pointer position becomes an image position.
 * @param {{left: number, top: number, width: number, height: number}} rect the canvas's client rect (CSS px)
 * @param {{width: number, height: number}} image size in pixels
 * @param {number} clientX
 * @param {number} clientY
 * @returns {[number, number]} the pixel under the pointer (integers, as the command line's --point), clamped
 *   to the image
 */
export function clientToImage(rect, image, clientX, clientY) {
  const x = Math.floor(((clientX - rect.left) * image.width) / rect.width);
  const y = Math.floor(((clientY - rect.top) * image.height) / rect.height);
  return [clamp(x, 0, image.width - 1), clamp(y, 0, image.height - 1)];
}

/**
 * Display size of an image fitted into an area, keeping its aspect ratio.
 * @returns {{width: number, height: number, scale: number}} CSS pixels and CSS px per image pixel
 */
export function fitSize(image, area, maxScale = 4) {
  const scale = Math.min(area.width / image.width, area.height / image.height, maxScale);
  return { width: image.width * scale, height: image.height * scale, scale };
}

/** XYXY box with x0 <= x1 and y0 <= y1 from two corners in any order. */
export function cornersToBox([ax, ay], [bx, by]) {
  return [Math.min(ax, bx), Math.min(ay, by), Math.max(ax, bx), Math.max(ay, by)];
}

/** True when a prompt holds nothing to segment. */
export function isEmptyPrompt(prompt) {
  return prompt.points.length === 0 && prompt.box === null;
}

/**
 * The body of POST /v1/images/{id}/segment for a prompt.
 *
 * One point alone is ambiguous (a part or the whole?), so it asks for the three candidates, as
 * SamPredictor.predict does by default; several points or a box ask for one mask, as SAM's authors advise.
 * @param {{points: number[][], labels: number[], box: number[] | null}} prompt image pixels; labels 1 / 0
 * @returns {object} JSON body
 */
export function segmentRequest(prompt) {
  const hasPoints = prompt.points.length > 0;
  return {
    points: hasPoints ? prompt.points : null,
    labels: hasPoints ? prompt.labels : null,
    box: prompt.box,
    multimask: prompt.points.length === 1 && prompt.box === null,
    format: "rle",
  };
}

/** A stable key for a request body: equal keys ask the server the same question. */
export function requestKey(imageId, body) {
  return `${imageId}:${JSON.stringify(body)}`;
}

function clamp(value, low, high) {
  return Math.max(low, Math.min(high, value));
}
