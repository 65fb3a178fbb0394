"""The images a command reads and the folders it writes, shared by ``segment`` and ``everything``.

An input is an image file or a folder. A folder stands for every image file under it, recursively
(by suffix: :data:`IMAGE_SUFFIXES`, any case; hidden files and folders skipped), in sorted order.
Each image has an output *name*: its stem for a file given directly, its path relative to the
folder without the suffix for one found in a folder (``shots/a/cat.jpg`` under ``shots/`` ->
``a/cat``), so that outputs mirror the input tree and never collide silently.

Output folders are created when missing, by every command alike, once the inputs and the model
have been checked (:func:`create_folders`), so a command that fails early leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from samdeploy.errors import ImageError, SamDeployError

#: Suffixes of the files a folder input contributes (what Pillow reads and the tests cover).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class InputImage:
    """One image to process: its ``path`` and its output ``name`` (a relative path, no suffix)."""

    path: Path
    name: Path


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def expand_images(inputs: Iterable[Path]) -> list[InputImage]:
    """Image files and folders -> the images to process, in the order given (a folder's sorted).

    A missing input is kept (its read fails alone, as a bad file does); a folder without images
    raises :class:`ImageError`. Two images with the same output name raise :class:`SamDeployError`.
    """
    images: list[InputImage] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(
                (
                    file
                    for file in path.rglob("*")
                    if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file() and not _hidden(file, path)
                ),
                key=lambda file: file.relative_to(path).as_posix(),
            )
            if not found:
                raise ImageError(
                    f"no images in folder {path} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)"
                )
            images += [InputImage(file, file.relative_to(path).with_suffix("")) for file in found]
        else:
            images.append(InputImage(path, Path(path.stem)))
    seen: dict[Path, Path] = {}
    for image in images:
        if image.name in seen:
            raise SamDeployError(
                f"{seen[image.name]} and {image.path} would write the same outputs ('{image.name}');"
                " rename one or run them separately"
            )
        seen[image.name] = image.path
    return images


def check_single(images: list[InputImage]) -> None:
    """With one image, a missing file is the command's error (exit 2) before any model loads."""
    if len(images) == 1 and not images[0].path.is_file():
        path = images[0].path
        raise ImageError(f"image not found: {path}" if not path.exists() else f"not a file: {path}")


def check_output_dir(output_dir: Path, option: str = "--output-dir") -> None:
    """Refuse an output folder that exists as something else (a file)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise SamDeployError(f"{option} {output_dir} exists and is not a folder")


def create_folders(folders: Iterable[Path]) -> None:
    """Create each output folder (and its parents) that is missing; one line if that fails."""
    for folder in dict.fromkeys(folders):
        if folder.exists() and not folder.is_dir():
            raise SamDeployError(f"output folder {folder} exists and is not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SamDeployError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
