// Exports of the objects: COCO instances JSON (RLE), PNG masks in a ZIP (one per object and a label
// map), COCO JSON with polygons. Every object is exported, hidden ones too (hiding only declutters the
// view), and so is the mask of the prompt being edited when there is one, as if it had been kept.

import { chosenMask } from "./actions.js";
import { grayscalePng, zipArchive } from "./files.js";
import { labelMap, maskPolygons } from "./masks.js";
import { decodeRle } from "./rle.js";

/**
 * The objects to export, in order: the kept ones, then the edited prompt's mask (if any) with `label`.
 * @returns {{label: string, rle: object, area: number, bbox: number[], score: number | null}[]}
 */
export function objectsToExport(doc, answer, label) {
  const objects = doc.objects.map(({ label: name, rle, area, bbox, score }) => ({ label: name, rle, area, bbox, score }));
  const mask = chosenMask(doc, answer);
  if (mask) objects.push({ label, rle: mask.rle, area: mask.area, bbox: mask.bbox, score: mask.score });
  return objects;
}

/** Categories in order of first appearance, ids from 1. */
function categories(objects) {
  const names = [...new Set(objects.map((o) => o.label))];
  return names.map((name, i) => ({ id: i + 1, name, supercategory: "" }));
}

function cocoDocument(objects, image, segmentation) {
  const categoryList = categories(objects);
  const categoryId = new Map(categoryList.map((c) => [c.name, c.id]));
  return {
    info: { description: `segmented with samdeploy (model ${image.modelId})` },
    images: [{ id: 1, file_name: image.name, width: image.width, height: image.height }],
    categories: categoryList,
    annotations: objects.map((object, i) => ({
      id: i + 1,
      image_id: 1,
      category_id: categoryId.get(object.label),
      segmentation: segmentation(object),
      area: object.area,
      bbox: object.bbox,
      iscrowd: 0,
      ...(object.score === null ? {} : { score: object.score }),
    })),
  };
}

/** COCO instances with the server's compressed RLE: annotation n is object n (also label-map value n). */
export function cocoInstances(objects, image) {
  return cocoDocument(objects, image, (object) => object.rle);
}

/**
 * COCO instances with polygons traced along pixel borders (masks.js maskPolygons), outer outlines only:
 * COCO polygons cannot hold holes, the RLE export keeps them.
 */
export function cocoPolygons(objects, image, tolerance = 1) {
  return cocoDocument(objects, image, (object) => maskPolygons(decodeRle(object.rle), image.width, image.height, tolerance).outer);
}

function safeName(label) {
  return label.replace(/[^\p{L}\p{N}_-]+/gu, "_").slice(0, 60) || "object";
}

/**
 * A ZIP of PNG masks (mode L, 255 inside): masks/NNN_label.png per object, label_map.png (pixel = object
 * number, 0 background; 16-bit beyond 255 objects) and objects.json saying which number is which.
 */
export async function pngMasksZip(objects, image) {
  const { width, height } = image;
  const masks = objects.map((object) => decodeRle(object.rle));
  const entries = [];
  const listing = [];
  for (const [i, mask] of masks.entries()) {
    const name = `masks/${String(i + 1).padStart(3, "0")}_${safeName(objects[i].label)}.png`;
    const pixels = mask.map((v) => v * 255);
    entries.push({ name, data: new Uint8Array(await (await grayscalePng(pixels, width, height)).arrayBuffer()) });
    listing.push({ value: i + 1, label: objects[i].label, file: name, area: objects[i].area, bbox: objects[i].bbox });
  }
  const map = await grayscalePng(labelMap(masks, width, height), width, height);
  entries.push({ name: "label_map.png", data: new Uint8Array(await map.arrayBuffer()) });
  const legend = { image: image.name, width, height, objects: listing };
  entries.push({ name: "objects.json", data: new TextEncoder().encode(JSON.stringify(legend, null, 2)) });
  return zipArchive(entries);
}

/** Hand a blob to the browser as a download named `name`. */
export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** A JSON document as a Blob. */
export function jsonBlob(value) {
  return new Blob([JSON.stringify(value)], { type: "application/json" });
}
