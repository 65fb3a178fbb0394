// File formats the page writes itself: grayscale PNG (mode L, or 16-bit for label maps) and a ZIP archive
// of stored entries. Canvas toBlob can only write RGBA PNGs; masks are one channel, as the command line
// and the server write them. Compression is the browser's own zlib (CompressionStream "deflate").

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (as PNG and ZIP use it) of some bytes. */
export function crc32(bytes, crc = 0) {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i += 1) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

async function zlib(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function chunk(type, data) {
  const bytes = new Uint8Array(12 + data.length);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, data.length);
  bytes.set(new TextEncoder().encode(type), 4);
  bytes.set(data, 8);
  view.setUint32(8 + data.length, crc32(bytes.subarray(4, 8 + data.length)));
  return bytes;
}

/**
 * A grayscale PNG.
 * @param {Uint8Array | Uint16Array} pixels H*W row-major; a Uint16Array writes a 16-bit PNG
 * @returns {Promise<Blob>} image/png
 */
export async function grayscalePng(pixels, width, height) {
  const bytesPerPixel = pixels instanceof Uint16Array ? 2 : 1;
  const stride = width * bytesPerPixel + 1;
  const raw = new Uint8Array(stride * height); // each row: filter type 0, then the row's bytes
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const value = pixels[y * width + x];
      if (bytesPerPixel === 2) {
        raw[y * stride + 1 + x * 2] = value >> 8; // PNG samples are big-endian
        raw[y * stride + 2 + x * 2] = value & 0xff;
      } else {
        raw[y * stride + 1 + x] = value;
      }
    }
  }
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header[8] = bytesPerPixel * 8; // bit depth
  header[9] = 0; // colour type 0: grayscale; compression, filter and interlace bytes stay 0
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  const parts = [signature, chunk("IHDR", header), chunk("IDAT", await zlib(raw)), chunk("IEND", new Uint8Array())];
  return new Blob(parts, { type: "image/png" });
}

/**
 * A ZIP archive of stored (uncompressed) entries: PNGs are compressed already.
 * @param {{name: string, data: Uint8Array}[]} entries names may be UTF-8
 * @returns {Blob} application/zip
 */
export function zipArchive(entries) {
  const encoder = new TextEncoder();
  const locals = [];
  const centrals = [];
  let offset = 0;
  for (const { name, data } of entries) {
    const nameBytes = encoder.encode(name);
    const crc = crc32(data);
    const local = new Uint8Array(30 + nameBytes.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, 20, true); // version needed: 2.0
    lv.setUint16(6, 0x0800, true); // flag: names are UTF-8
    lv.setUint16(12, 0x21, true); // date 1980-01-01, time 00:00 (the MS-DOS epoch): exports carry no clock
    lv.setUint32(14, crc, true);
    lv.setUint32(18, data.length, true);
    lv.setUint32(22, data.length, true);
    lv.setUint16(26, nameBytes.length, true);
    local.set(nameBytes, 30);
    const central = new Uint8Array(46 + nameBytes.length);
    const cv = new DataView(central.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, 20, true);
    cv.setUint16(6, 20, true);
    cv.setUint16(8, 0x0800, true);
    cv.setUint16(14, 0x21, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, nameBytes.length, true);
    cv.setUint32(42, offset, true);
    central.set(nameBytes, 46);
    locals.push(local, data);
    centrals.push(central);
    offset += local.length + data.length;
  }
  const size = centrals.reduce((total, c) => total + c.length, 0);
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, entries.length, true);
  ev.setUint16(10, entries.length, true);
  ev.setUint32(12, size, true);
  ev.setUint32(16, offset, true);
  return new Blob([...locals, ...centrals, end], { type: "application/zip" });
}
