// Pure mask helpers: pixels to draw, label maps and polygons from decoded masks.
// A mask here is a row-major Uint8Array of H*W values, 1 inside (rle.js decodes one).

/**
 * The smallest box holding every pixel of a mask.
 * @returns {number[] | null} [x, y, w, h] in pixels; null for an empty mask
 */
export function maskBounds(mask, width, height) {
  let [x0, y0, x1, y1] = [width, height, -1, -1];
  for (let y = 0; y < height; y += 1) {
    const row = y * width;
    for (let x = 0; x < width; x += 1) {
      if (!mask[row + x]) continue;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      y1 = y;
    }
  }
  return x1 < 0 ? null : [x0, y0, x1 - x0 + 1, y1 - y0 + 1];
}

/**
 * RGBA pixels that paint the part of a mask inside `bounds` in one colour, its edge opaque so
 * neighbouring objects stay apart.
 * @param {Uint8Array} mask H*W
 * @param {number} width W
 * @param {number} height H
 * @param {number[]} rgb colour
 * @param {{fill: number, edge: number}} alpha 0..255 for the inside and for the edge pixels
 * @param {number[]} bounds [x, y, w, h] of the part to paint (maskBounds)
 * @returns {Uint8ClampedArray} h*w*4, ready for new ImageData(pixels, w, h)
 */
export function maskPixels(mask, width, height, rgb, alpha, bounds) {
  const [bx, by, bw, bh] = bounds;
  const pixels = new Uint8ClampedArray(bw * bh * 4);
  for (let y = by; y < by + bh; y += 1) {
    for (let x = bx; x < bx + bw; x += 1) {
      const i = y * width + x;
      if (!mask[i]) continue;
      const onEdge =
        x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
        !mask[i - 1] || !mask[i + 1] || !mask[i - width] || !mask[i + width];
      const o = ((y - by) * bw + (x - bx)) * 4;
      pixels[o] = rgb[0];
      pixels[o + 1] = rgb[1];
      pixels[o + 2] = rgb[2];
      pixels[o + 3] = onEdge ? alpha.edge : alpha.fill;
    }
  }
  return pixels;
}

/**
 * One image of object numbers: pixel = n (1-based position in `masks`), 0 = background; a later mask
 * wins where masks overlap (it is drawn on top on the page too).
 * @param {Uint8Array[]} masks
 * @returns {Uint8Array | Uint16Array} 8-bit when there are at most 255 objects, 16-bit beyond
 */
export function labelMap(masks, width, height) {
  const map = masks.length <= 255 ? new Uint8Array(width * height) : new Uint16Array(width * height);
  masks.forEach((mask, index) => {
    for (let i = 0; i < mask.length; i += 1) if (mask[i]) map[i] = index + 1;
  });
  return map;
}

const STEPS = [
  [1, 0], // right
  [0, 1], // down
  [-1, 0], // left
  [0, -1], // up
];

/**
 * The outlines of a mask as polygons along pixel borders (vertices on pixel corners), simplified.
 *
 * Every border between a mask pixel and a non-mask pixel is an edge directed clockwise around the mask
 * (the mask on its right); edges chain into closed rings. Where two pixels touch only at a corner the
 * trace turns right, so diagonal neighbours are separate pieces (4-connectivity). Outer rings run clockwise
 * on screen (positive area, y down), holes counter-clockwise.
 * @param {Uint8Array} mask H*W
 * @param {number} tolerance Douglas-Peucker tolerance in pixels (0 keeps every corner)
 * @returns {{outer: number[][], holes: number[][]}} rings as flat [x0, y0, x1, y1, ...] lists
 */
export function maskPolygons(mask, width, height, tolerance = 1) {
  const columns = width + 1;
  const out = new Uint8Array(columns * (height + 1)); // bit d: an edge leaves this vertex in direction d
  const inside = (x, y) => x >= 0 && y >= 0 && x < width && y < height && mask[y * width + x] === 1;
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      if (!inside(x, y)) continue;
      if (!inside(x, y - 1)) out[y * columns + x] |= 1; // top border, going right
      if (!inside(x + 1, y)) out[y * columns + x + 1] |= 2; // right border, going down
      if (!inside(x, y + 1)) out[(y + 1) * columns + x + 1] |= 4; // bottom border, going left
      if (!inside(x - 1, y)) out[(y + 1) * columns + x] |= 8; // left border, going up
    }
  }
  const result = { outer: [], holes: [] };
  for (let start = 0; start < out.length; start += 1) {
    while (out[start]) {
      const ring = traceRing(out, columns, start);
      const simplified = simplifyRing(ring, tolerance);
      if (simplified.length < 6) continue;
      (ringArea(ring) > 0 ? result.outer : result.holes).push(simplified);
    }
  }
  return result;
}

function traceRing(out, columns, start) {
  const firstDirection = Math.log2(out[start] & -out[start]);
  const ring = [];
  let vertex = start;
  let direction = firstDirection;
  for (;;) {
    ring.push(vertex % columns, Math.floor(vertex / columns));
    if (vertex !== start || ring.length > 2) out[vertex] &= ~(1 << direction);
    vertex += STEPS[direction][0] + STEPS[direction][1] * columns;
    const next = [(direction + 1) % 4, direction, (direction + 3) % 4].find((d) => out[vertex] & (1 << d));
    if (vertex === start && next === firstDirection) break;
    direction = next;
  }
  out[start] &= ~(1 << firstDirection);
  return dropStraightVertices(ring);
}

function dropStraightVertices(ring) {
  const kept = [];
  const n = ring.length / 2;
  for (let i = 0; i < n; i += 1) {
    const [px, py] = [ring[((i + n - 1) % n) * 2], ring[((i + n - 1) % n) * 2 + 1]];
    const [x, y] = [ring[i * 2], ring[i * 2 + 1]];
    const [nx, ny] = [ring[((i + 1) % n) * 2], ring[((i + 1) % n) * 2 + 1]];
    if ((x - px) * (ny - y) - (y - py) * (nx - x) !== 0) kept.push(x, y);
  }
  return kept;
}

function ringArea(ring) {
  let twice = 0;
  for (let i = 0; i < ring.length; i += 2) {
    const j = (i + 2) % ring.length;
    twice += ring[i] * ring[j + 1] - ring[j] * ring[i + 1];
  }
  return twice / 2;
}

// Douglas-Peucker on a closed ring: split it at the vertex farthest from the first, simplify both halves.
function simplifyRing(ring, tolerance) {
  const points = [];
  for (let i = 0; i < ring.length; i += 2) points.push([ring[i], ring[i + 1]]);
  if (tolerance <= 0 || points.length < 4) return ring;
  let far = 0;
  let best = -1;
  points.forEach(([x, y], i) => {
    const d = (x - points[0][0]) ** 2 + (y - points[0][1]) ** 2;
    if (d > best) [best, far] = [d, i];
  });
  const first = simplifyChain(points.slice(0, far + 1), tolerance);
  const second = simplifyChain([...points.slice(far), points[0]], tolerance);
  return [...first.slice(0, -1), ...second.slice(0, -1)].flat();
}

function simplifyChain(points, tolerance) {
  if (points.length < 3) return points;
  const [ax, ay] = points[0];
  const [bx, by] = points[points.length - 1];
  const length = Math.hypot(bx - ax, by - ay);
  let worst = 0;
  let index = 0;
  for (let i = 1; i < points.length - 1; i += 1) {
    const [x, y] = points[i];
    const d =
      length === 0 ? Math.hypot(x - ax, y - ay) : Math.abs((bx - ax) * (ay - y) - (ax - x) * (by - ay)) / length;
    if (d > worst) [worst, index] = [d, i];
  }
  if (worst <= tolerance) return [points[0], points[points.length - 1]];
  const left = simplifyChain(points.slice(0, index + 1), tolerance);
  return [...left.slice(0, -1), ...simplifyChain(points.slice(index), tolerance)];
}
