// COCO run-length encoding, decoded here so the page draws and exports masks without a library.
//
// A mask of H rows and W columns is read column by column (Fortran order: index = x * H + y) as
// alternating runs of 0s and 1s, starting with 0s. The "compressed" string form (pycocotools'
// rleToString) writes each run length as a little-endian sequence of 5-bit groups, one character per
// group (char code - 48): bit 0x20 says "another group follows", bit 0x10 of the last group is the sign.
// From the third run on, the string stores the difference to the run two places back.

/**
 * Run lengths of a COCO compressed RLE string.
 * @param {string} counts
 * @returns {number[]} alternating run lengths (0s first)
 */
export function decodeCounts(counts) {
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let value = 0;
    let shift = 1; // 2 ** (5 * groups read), in float arithmetic: runs may exceed 32 bits' worth of shifts
    let more = true;
    while (more) {
      if (p >= counts.length) throw new Error("truncated RLE string");
      const c = counts.charCodeAt(p) - 48;
      if (c < 0 || c > 63) throw new Error(`bad character in RLE string at ${p}`);
      value += (c & 0x1f) * shift;
      shift *= 32;
      more = (c & 0x20) !== 0;
      p += 1;
      if (!more && c & 0x10) value -= shift; // sign bit: two's complement over the groups read
    }
    if (runs.length > 2) value += runs[runs.length - 2];
    if (value < 0) throw new Error("negative run in RLE string");
    runs.push(value);
  }
  return runs;
}

/**
 * Decode a COCO RLE into a row-major mask.
 * @param {{size: [number, number], counts: string | number[]}} rle size is [H, W]
 * @returns {Uint8Array} H*W values, 1 inside the mask, row-major (index = y * W + x)
 */
export function decodeRle(rle) {
  const [height, width] = rle.size;
  const runs = typeof rle.counts === "string" ? decodeCounts(rle.counts) : rle.counts;
  const mask = new Uint8Array(height * width);
  let position = 0;
  for (let i = 0; i < runs.length; i += 1) {
    const end = position + runs[i];
    if (end > height * width) throw new Error("RLE runs longer than its size");
    if (i % 2 === 1) {
      let x = Math.floor(position / height);
      let y = position - x * height;
      for (let k = position; k < end; k += 1) {
        mask[y * width + x] = 1;
        y += 1;
        if (y === height) [x, y] = [x + 1, 0];
      }
    }
    position = end;
  }
  if (position !== height * width) throw new Error("RLE runs shorter than its size");
  return mask;
}
