"""Exception classes raised by samdeploy.

Every error a user can cause (a bad file, a bad prompt, a bad option) is a subclass of
:class:`SamDeployError`; its message is one line that says what went wrong and what to do.
The command line prints that line and exits with code 2.
"""

from __future__ import annotations


class SamDeployError(Exception):
    """Base class of every error samdeploy raises on bad input or bad configuration."""

    exit_code: int = 2


class PackageError(SamDeployError):
    """A model package is missing, corrupt, of an unknown format, or fails its checksums."""


class CheckpointError(SamDeployError):
    """A checkpoint cannot be read, is not a SAM state dict, or does not match the model type."""


class ExportError(SamDeployError):
    """Export failed: tracing, simplification, or validation against PyTorch."""


class ImageError(SamDeployError):
    """An image file is missing, unreadable, too large, or of an unsupported kind."""


class PromptError(SamDeployError):
    """Points, labels, boxes or a mask input are malformed or inconsistent with the image."""


class OptionError(SamDeployError, ValueError):
    """An option is out of its range: ``threads``, ``cache_mb``, ``max_pixels`` and the like."""


class LimitError(SamDeployError):
    """Input over one of the limits of :mod:`samdeploy.limits` (too many pixels, points, prompts).

    Raised as :class:`ImageLimitError` or :class:`PromptLimitError`, so it is also an
    :class:`ImageError` or a :class:`PromptError`; a server can answer it with "too large".
    """


class ImageLimitError(ImageError, LimitError):
    """An image is larger than the pixel limit."""


class PromptLimitError(PromptError, LimitError):
    """A prompt has more points, prompts or mask pixels than the limits allow."""


class GraphError(SamDeployError):
    """A graph is malformed (cycle, unfed or doubly fed port, type mismatch, duplicate name)."""


class NodeError(SamDeployError):
    """A node raised while processing an item; carries the node name and the item index."""

    def __init__(self, node: str, item: int | None, cause: BaseException) -> None:
        where = f"node '{node}'" + (f" on item {item}" if item is not None else "")
        super().__init__(f"{where}: {type(cause).__name__}: {cause}")
        self.node = node
        self.item = item
        self.cause = cause


class BackendError(SamDeployError):
    """An inference backend is not installed, cannot load a model, or failed to run it."""
