"""What a batch run leaves in its output folder, and how a rerun resumes from it.

    OUT/
      results/<key>.json   one document per finished image (its completion record)
      instances.json       merged COCO instances file, written by the driver at the end
      failures.jsonl       this run's failed images: {"image", "path", "reason"} per line
      manifest.json        model id and hash, options, counts, times, status
      .lock                held while a run writes here (a second run at once is refused)
      .reserve             space held back for the run's last state write (removed at the end)

Only the driver writes, each file to a temporary file in the same folder and then ``os.replace``,
so a file is either absent or whole, even when the driver is killed. An image's document carries
the run's fingerprint (model hash, mode, options) and its task's (boxes, prompts): a rerun skips
every image whose document is whole and has the same fingerprint, and redoes the rest. A write
that fails (no space left, no permission) raises :class:`OutputError`; everything written so far
stays valid, so the same command, rerun once the disk has room, carries on.

A full disk must not cost the run its state: ``.reserve`` holds :data:`RESERVE_BYTES` from the
start, and a state write (``manifest.json``) that finds the disk full gives that space back and
tries again, so the manifest of a stopped run says why it stopped. ``failures.jsonl`` is appended
to one line at a time; a line the disk cuts short is cut off again, so the file holds whole lines.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from samdeploy.batch.inputs import BatchInput, WorkItem
from samdeploy.errors import SamDeployError

FORMAT_VERSION = 1
RESULTS, MERGED, FAILURES, MANIFEST, LOCK, RESERVE = (
    "results",
    "instances.json",
    "failures.jsonl",
    "manifest.json",
    ".lock",
    ".reserve",
)
#: Space held back for the last state write on a full disk: several manifests (a few KiB each).
RESERVE_BYTES = 256 * 1024
OBJECT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


class OutputError(SamDeployError):
    """The output folder cannot be written (missing permission, full disk, another run holds it)."""


def fingerprint(value: Any) -> str:
    """A short stable hash of a JSON-ready value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def item_fingerprint(run_fingerprint: str, item: WorkItem) -> str:
    """What an image's document must carry to count as done by this run: the run's fingerprint and
    the image's own task."""
    return fingerprint([run_fingerprint, item.key, item.image_id, item.task])


def encode_document(
    item: WorkItem, size: tuple[int, int], annotations: list[dict[str, Any]], run_fingerprint: str, mode: str
) -> bytes:
    """An image's output document: ``image`` (file name = key, height, width, COCO id if any) and
    ``annotations`` (each with a COCO RLE ``segmentation``), as compact JSON bytes."""
    image: dict[str, Any] = {"file_name": item.key, "height": int(size[0]), "width": int(size[1])}
    if item.image_id is not None:
        image["id"] = item.image_id
    document = {
        "samdeploy_batch": FORMAT_VERSION,
        "key": item.key,
        "fingerprint": item_fingerprint(run_fingerprint, item),
        "mode": mode,
        "image": image,
        "annotations": annotations,
    }
    return (json.dumps(document, separators=(",", ":")) + "\n").encode()


def _oserror(action: str, path: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"cannot {action} {path}: {exc.strerror or exc}; finished images are kept: fix this and rerun"
        " the same command to resume"
    )


def _write_atomic(path: Path, data: bytes) -> None:
    with _atomic(path, "wb") as out:
        out.write(data)


class OutputFolder:
    """The output folder of one run (see the module docs). Use as a context manager: it holds the
    folder's lock, the space reserved for the run's state and the open ``failures.jsonl`` while the
    run goes on."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.results = self.root / RESULTS
        self._lock: IO[str] | None = None
        self._failures: int | None = None  # O_APPEND descriptor of failures.jsonl
        self._failures_size = 0  # bytes of whole lines in it
        self._reserved = False

    def __enter__(self) -> OutputFolder:
        if self.root.exists() and not self.root.is_dir():
            raise OutputError(f"--output-dir {self.root} exists and is not a folder")
        try:
            self.results.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _oserror("create", self.results, exc) from None
        try:
            self._lock = open(self.root / LOCK, "w")  # noqa: SIM115 (held for the whole run)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise OutputError(f"another samdeploy batch run is writing to {self.root}") from None
        except OSError as exc:
            self.close()
            raise _oserror("write to", self.root, exc) from None
        self._remove_stale_temps()
        try:
            self._reserve()
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
            self._failures = os.open(self.root / FAILURES, flags, 0o644)
        except OutputError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise _oserror("write", self.root / FAILURES, exc) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._failures is not None:
            with contextlib.suppress(OSError):
                os.close(self._failures)
        if self._lock is not None:
            self._release()  # before the lock: the next holder makes its own
            with contextlib.suppress(OSError):
                self._lock.close()
        self._failures = self._lock = None

    def _reserve(self) -> None:
        """Hold :data:`RESERVE_BYTES` of disk in ``.reserve`` (allocated, not just a file size)."""
        path = self.root / RESERVE
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.posix_fallocate(handle, 0, RESERVE_BYTES)
            finally:
                os.close(handle)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise OutputError(
                f"cannot reserve {RESERVE_BYTES // 1024} KiB in {self.root} for the run's state:"
                f" {exc.strerror or exc}; make room (or choose another --output-dir) and rerun"
            ) from None
        self._reserved = True

    def _release(self) -> bool:
        """Give the reserved space back; True if there was some."""
        reserved, self._reserved = self._reserved, False
        if reserved:
            with contextlib.suppress(OSError):
                (self.root / RESERVE).unlink()
        return reserved

    def _remove_stale_temps(self) -> None:
        """Temporary files of a run that was killed mid-write (only the lock holder writes here)."""
        for temp in self.root.rglob(".*.tmp"):
            temp.unlink(missing_ok=True)

    def result_path(self, key: str) -> Path:
        """``results/<key>.json``; a ``..`` in a key cannot climb out of the folder."""
        parts = [part if part != ".." else "_.." for part in key.split("/") if part not in ("", ".")]
        return self.results.joinpath(*parts).with_name(parts[-1] + ".json")

    def load(self, item: WorkItem, run_fingerprint: str) -> dict[str, Any] | None:
        """The item's document if it is whole and was made by a run with this fingerprint, else None."""
        try:
            document = json.loads(self.result_path(item.key).read_bytes())
        except (OSError, ValueError):
            return None
        if (
            isinstance(document, dict)
            and document.get("samdeploy_batch") == FORMAT_VERSION
            and document.get("key") == item.key
            and document.get("fingerprint") == item_fingerprint(run_fingerprint, item)
            and isinstance(document.get("annotations"), list)
            and isinstance(document.get("image"), dict)
        ):
            return document
        return None

    def write_result(self, key: str, document: bytes) -> None:
        path = self.result_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, document)
        except OSError as exc:
            raise _oserror("write", path, exc) from None

    def record_failure(self, item: WorkItem, reason: str) -> None:
        """Append the item's line to ``failures.jsonl``; a line the disk cuts short is removed."""
        assert self._failures is not None
        line = (json.dumps({"image": item.key, "path": item.path, "reason": reason}) + "\n").encode()
        try:
            written = 0
            while written < len(line):
                written += os.write(self._failures, line[written:])
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._failures, self._failures_size)
            raise _oserror("write", self.root / FAILURES, exc) from None
        self._failures_size += len(line)

    def write_json(self, name: str, value: Any) -> Path:
        """Write ``name`` whole (or leave it as it was). On a full disk, the space reserved for the
        run's state is given back and the write tried once more."""
        path = self.root / name
        data = (json.dumps(value, indent=2) + "\n").encode()
        try:
            try:
                _write_atomic(path, data)
            except OSError as exc:
                if exc.errno != errno.ENOSPC or not self._release():
                    raise
                _write_atomic(path, data)
        except OSError as exc:
            raise _oserror("write", path, exc) from None
        return path

    def merge(self, batch: BatchInput, mode: str, run_fingerprint: str) -> tuple[Path, int, int]:
        """Write ``instances.json`` from the finished images' documents, each image once, in input
        order. Returns (path, images, annotations).

        ``everything`` / ``prompts``: images (the COCO input's own entries where there is one, else
        ids 1.. by input position) and one annotation per mask, category 1 ``object``.
        ``boxes``: the input COCO file with only the finished images, each of their annotations'
        ``segmentation`` filled (COCO RLE), ``area`` the mask's and ``predicted_iou`` added.
        Streams to disk: memory holds one image's document at a time.
        """
        path = self.root / MERGED
        coco = batch.coco or {}
        coco_images = {image["id"]: image for image in coco.get("images", [])}
        input_annotations: dict[Any, dict[str, Any]] = {}
        if mode == "boxes":
            input_annotations = {a.get("id"): a for a in coco.get("annotations", []) if isinstance(a, dict)}
        try:
            with _atomic(path) as out, tempfile.TemporaryFile("w+", dir=self.root) as annotations:
                head = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
                head.setdefault("info", {"description": f"samdeploy batch --mode {mode}"})
                out.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"images":[')
                n_images = n_annotations = 0
                for position, item in enumerate(batch.items):
                    if item.error is not None or (document := self.load(item, run_fingerprint)) is None:
                        continue
                    image_id = item.image_id if item.image_id is not None else position + 1
                    image = coco_images.get(image_id) or {"id": image_id, **document["image"]}
                    out.write(("," if n_images else "") + json.dumps(image, separators=(",", ":")))
                    n_images += 1
                    for record in document["annotations"]:
                        if mode == "boxes":
                            entry = {**input_annotations.get(record["id"], {}), **record}
                        else:
                            n_id = n_annotations + 1
                            entry = {"id": n_id, "image_id": image_id, "category_id": 1, "iscrowd": 0}
                            entry.update({k: v for k, v in record.items() if k != "id"})
                        annotations.write(
                            ("," if n_annotations else "") + json.dumps(entry, separators=(",", ":"))
                        )
                        n_annotations += 1
                out.write('],"annotations":[')
                annotations.seek(0)
                shutil.copyfileobj(annotations, out)
                categories = coco.get("categories") if mode == "boxes" else [OBJECT_CATEGORY]
                out.write('],"categories":' + json.dumps(categories or [OBJECT_CATEGORY]) + "}\n")
        except OSError as exc:
            raise _oserror("write", path, exc) from None
        return path, n_images, n_annotations


@contextlib.contextmanager
def _atomic(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file that appears at ``path`` whole when the block ends (a temporary file beside it, then
    ``os.replace``), and not at all if the block fails."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as out:
            yield out
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
