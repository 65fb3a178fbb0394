// Object colours: distinct hues in a fixed order, so object N always gets the same colour.

const PALETTE = [
  [0, 130, 200], [245, 130, 48], [60, 180, 75], [230, 25, 75], [145, 30, 180], [70, 240, 240],
  [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40],
  [255, 225, 25], [128, 0, 0], [170, 255, 195], [128, 128, 0], [0, 0, 128], [255, 215, 180],
];

/** RGB of the n-th object (n >= 1). */
export function colorFor(n) {
  return PALETTE[(n - 1) % PALETTE.length];
}

/** CSS colour string of an RGB triple. */
export function cssColor([r, g, b], alpha = 1) {
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}
