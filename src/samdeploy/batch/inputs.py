"""What a batch run segments: the list of work items read from its input.

    INPUT                      items                        identity (key)
    folder/                    every image file below it    path relative to the folder
    'photos/**/*.jpg' (glob)   every file it matches        path relative to the glob's fixed prefix
    list.txt                   one path per line            path relative to the list's folder
    instances.json (COCO)      its ``images``               ``file_name`` (images under --image-root)

The key names the image's output file, so it is stable across reruns (a resume finds its work by
it) and unique within a run. Each :class:`WorkItem` also carries its ``task``: what to ask the
model (``everything``: nothing more; ``boxes``: the image's COCO boxes; ``prompts``: its line of
the prompts file), as plain JSON so it travels to any worker, process or Ray actor.

A problem with one item (a bad prompt line, a malformed box) does not stop the run: the item comes
back with ``error`` set and is listed in ``failures.jsonl``. A problem with the input as a whole
(missing, empty, unreadable, not COCO) raises :class:`BatchInputError`.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from samdeploy.errors import SamDeployError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})
MODES = ("everything", "boxes", "prompts")
_GLOB_CHARS = frozenset("*?[")


class BatchInputError(SamDeployError):
    """The batch input (folder, glob, list, COCO file or prompts file) is missing or malformed."""


@dataclass(frozen=True)
class WorkItem:
    """One image of a batch run.

    ``key``: its identity (a relative POSIX path, see the module docs); ``path``: where to read it;
    ``task``: JSON-ready dict of what to ask (``{}`` for everything, ``{"boxes": ..., "ids": ...}``,
    ``{"prompts": [...]}``); ``image_id``: the COCO image id (None outside COCO input);
    ``error``: set when the item cannot run (it is reported as failed without touching the model).
    """

    key: str
    path: str
    task: dict[str, Any] = field(default_factory=dict)
    image_id: int | None = None
    error: str | None = None


@dataclass
class BatchInput:
    """The work items of a run, in input order, and the COCO document they came from (if any)."""

    items: list[WorkItem]
    kind: str  # folder, glob, list or coco
    coco: dict[str, Any] | None = None
    unprompted: int = 0  # images of the input without a line in the prompts file

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "images": len(self.items), "without_prompts": self.unprompted}


def read_input(
    source: str | Path,
    mode: str = "everything",
    prompts: str | Path | None = None,
    image_root: str | Path | None = None,
) -> BatchInput:
    """The work items of ``source`` for ``mode`` (see the module docs).

    ``prompts``: the JSON Lines file of ``--mode prompts``; ``image_root``: the folder a COCO
    file's ``file_name`` entries are relative to (default: the COCO file's folder).
    """
    if mode not in MODES:
        raise BatchInputError(f"unknown --mode '{mode}'; choose one of {', '.join(MODES)}")
    if (mode == "prompts") != (prompts is not None):
        raise BatchInputError(
            "--mode prompts needs --prompts FILE" if mode == "prompts" else "--prompts needs --mode prompts"
        )
    text = str(source)
    path = Path(text)
    if path.is_dir():
        kind, items = "folder", _folder_items(path)
    elif path.is_file() and path.suffix.lower() == ".json":
        kind, coco = "coco", _read_coco(path)
        items = _coco_items(coco, Path(image_root) if image_root else path.parent, boxes=mode == "boxes")
    elif path.is_file():
        kind, items = "list", _list_items(path)
    elif _GLOB_CHARS & set(text):
        kind, items = "glob", _glob_items(text)
    else:
        raise BatchInputError(f"input not found: {text} (give a folder, a glob, a list file or a COCO JSON)")
    if mode == "boxes" and kind != "coco":
        raise BatchInputError("--mode boxes needs a COCO instances JSON as input (its bbox annotations)")
    if image_root is not None and kind != "coco":
        raise BatchInputError("--image-root applies to a COCO JSON input only")
    if not items:
        raise BatchInputError(f"no images in {text}")
    batch = BatchInput(items, kind, coco if kind == "coco" else None)
    if mode == "prompts":
        assert prompts is not None
        _attach_prompts(batch, Path(prompts))
    return batch


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def _relative_key(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` as a POSIX key; a path outside ``base`` keeps its full form."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(base)).as_posix()
    except ValueError:
        return PurePosixPath(*absolute.parts[1:]).as_posix()


def _folder_items(root: Path) -> list[WorkItem]:
    paths = []
    for folder, dirs, files in os.walk(root, onerror=_walk_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths += [
            Path(folder) / name
            for name in files
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")
        ]
    return [WorkItem(_relative_key(p, root), str(p)) for p in sorted(paths, key=lambda p: p.as_posix())]


def _walk_error(exc: OSError) -> None:
    raise BatchInputError(f"cannot list {exc.filename}: {exc.strerror or exc}")


def _glob_items(pattern: str) -> list[WorkItem]:
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    return [WorkItem(_relative_key(p, base), str(p)) for p in paths]


def _list_items(list_file: Path) -> list[WorkItem]:
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"cannot read the list {list_file}: {exc}") from None
    base, items, seen = list_file.parent, [], set()
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if os.path.isabs(entry) else base / entry
        key = _relative_key(path, base)
        if key not in seen:  # the same file twice is one image
            seen.add(key)
            items.append(WorkItem(key, str(path)))
    return items


def _read_coco(path: Path) -> dict[str, Any]:
    try:
        coco = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchInputError(f"cannot read the COCO file {path}: {exc}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise BatchInputError(f"{path} is not a COCO instances file (no 'images' list)")
    for image in coco["images"]:
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise BatchInputError(f"{path}: every entry of 'images' needs an 'id' and a 'file_name'")
    ids = [image["id"] for image in coco["images"]]
    if len(set(ids)) != len(ids):
        raise BatchInputError(f"{path}: two images share an id")
    names = [image["file_name"] for image in coco["images"]]
    if len(set(names)) != len(names):
        raise BatchInputError(f"{path}: two images share a file_name: their outputs would collide")
    if not isinstance(coco.get("annotations", []), list):
        raise BatchInputError(f"{path}: 'annotations' must be a list")
    return coco


def _coco_items(coco: dict[str, Any], root: Path, boxes: bool) -> list[WorkItem]:
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for annotation in coco.get("annotations", []):
        if isinstance(annotation, dict):
            by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    items = []
    for image in coco["images"]:
        key = PurePosixPath(image["file_name"]).as_posix().lstrip("/")
        item = WorkItem(key, str(root / image["file_name"]), image_id=image["id"])
        if boxes:
            task, error = _box_task(by_image.get(image["id"], []))
            item = WorkItem(item.key, item.path, task, item.image_id, error)
        items.append(item)
    return items


def _box_task(annotations: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """The boxes of one image's annotations, XYXY, with their annotation ids."""
    ids, boxes = [], []
    for annotation in annotations:
        bbox = annotation.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            return {}, f"annotation {annotation.get('id')}: bbox must be [x, y, width, height], got {bbox!r}"
        x, y, w, h = bbox
        ids.append(annotation.get("id"))
        boxes.append([x, y, x + w, y + h])
    return {"boxes": boxes, "ids": ids}, None


# ---------------------------------------------------------------------------------------------
# Prompts (JSON Lines)
# ---------------------------------------------------------------------------------------------


def _attach_prompts(batch: BatchInput, prompts_file: Path) -> None:
    """Keep the images named in ``prompts_file``, each with its prompts; a bad line is a failed item.

    A line: ``{"image": KEY, "prompts": [{"points": [[x, y], ...], "labels": [1, ...],
    "box": [x0, y0, x1, y1]}, ...]}``, or one prompt's keys at the top level.
    """
    try:
        lines = prompts_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"cannot read the prompts file {prompts_file}: {exc}") from None
    by_key = {item.key: item for item in batch.items}
    chosen: dict[str, WorkItem] = {}
    failed: list[WorkItem] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{prompts_file.name} line {number}"
        try:
            key, prompts = _parse_prompt_line(line)
        except ValueError as exc:
            failed.append(WorkItem(f"{where}", "", error=f"{where}: {exc}"))
            continue
        item = by_key.get(key)
        if item is None:
            failed.append(WorkItem(key, key, error=f"{where}: image '{key}' is not among the inputs"))
        elif key in chosen:
            failed.append(
                WorkItem(key, item.path, error=f"{where}: image '{key}' already has a prompts line")
            )
        else:
            chosen[key] = WorkItem(item.key, item.path, {"prompts": prompts}, item.image_id)
    if not chosen and not failed:
        raise BatchInputError(f"the prompts file {prompts_file} has no lines")
    batch.unprompted = len(batch.items) - len(chosen)
    batch.items = [chosen[item.key] for item in batch.items if item.key in chosen] + failed


def _parse_prompt_line(line: str) -> tuple[str, list[dict[str, Any]]]:
    """``(image key, prompts)`` of a prompts line; ``ValueError`` with a one-line reason."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"]:
        raise ValueError('each line needs "image": the image\'s path relative to the input')
    if "prompts" in entry:
        prompts = entry["prompts"]
        if not isinstance(prompts, list) or not prompts:
            raise ValueError('"prompts" must be a non-empty list')
    else:
        prompts = [{name: entry[name] for name in ("points", "labels", "box") if name in entry}]
    return PurePosixPath(entry["image"]).as_posix(), [_check_prompt(p, i) for i, p in enumerate(prompts)]


def _check_prompt(prompt: Any, index: int) -> dict[str, Any]:
    """One prompt, checked by the predictor's own rules (so the message is the one it gives)."""
    from samdeploy.sam.prompts import validate_prompt

    if not isinstance(prompt, dict) or set(prompt) - {"points", "labels", "box"}:
        raise ValueError(f'prompt {index}: use only "points", "labels" and "box"')
    if "points" not in prompt and "box" not in prompt:
        raise ValueError(f'prompt {index}: give "points" (with "labels") or a "box"')
    try:
        validate_prompt(prompt.get("points"), prompt.get("labels"), prompt.get("box"))
    except SamDeployError as exc:
        raise ValueError(f"prompt {index}: {exc}") from None
    if "box" in prompt and len(prompt["box"]) != 4:
        raise ValueError(f"prompt {index}: one box per prompt (4 numbers XYXY)")
    return prompt
