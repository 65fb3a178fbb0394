"""``load_model``: a model package folder in, the model of its family out (never imports torch).

The manifest's ``family`` picks the runtime package: ``sam`` (or no family: SAM 1) loads a
:class:`~samdeploy.sam.model.SamModel`, ``sam2.1`` / ``sam2`` a :class:`~samdeploy.sam2.model.Sam2Model`.
The predictors and mask generators are family-specific; :func:`predictor_for` and
:func:`mask_generator_for` pick the right one for a loaded model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from samdeploy.sam.model import DEFAULT_CACHE_MB, SamModel


def load_model(
    path: str | Path | None = None,
    backend: str | None = None,
    mode: str = "sequential",
    providers: list[str] | None = None,
    threads: int | None = None,
    cache_mb: float = DEFAULT_CACHE_MB,
    inside_image: bool = False,
    verify: bool = True,
    solo_threads: int | None = None,
) -> SamModel:
    """Load a model package folder (``None``: the default model embedded in samdeploy) as the
    model of its family: a ``SamModel`` for SAM packages, a ``Sam2Model`` (a ``SamModel`` with
    SAM 2's graphs) for SAM 2.x packages. The arguments are
    :func:`samdeploy.sam.model.load_model`'s; so are the errors.
    """
    options = dict(
        backend=backend,
        mode=mode,
        providers=providers,
        threads=threads,
        cache_mb=cache_mb,
        inside_image=inside_image,
        verify=verify,
        solo_threads=solo_threads,
    )
    # samdeploy.sam.model.load_model reads the manifest once and dispatches on its family
    # (looked up at call time, so that one function is the loader everywhere).
    from samdeploy.sam import model as sam_model

    return sam_model.load_model(path, **options)  # type: ignore[arg-type]


def is_sam2(model: Any) -> bool:
    """Whether a loaded model (or package) is of the SAM 2.x family."""
    package = getattr(model, "package", model)
    return bool(getattr(package, "is_sam2", False))


def predictor_for(model: SamModel) -> Any:
    """``SamPredictor`` or ``SAM2ImagePredictor`` for a loaded model, by its family."""
    if is_sam2(model):
        from samdeploy.sam2.predictor import SAM2ImagePredictor

        return SAM2ImagePredictor(model)
    from samdeploy.sam.predictor import SamPredictor

    return SamPredictor(model)


def mask_generator_for(model: SamModel, **options: Any) -> Any:
    """``SamAutomaticMaskGenerator`` or ``SAM2AutomaticMaskGenerator`` for a loaded model, by its
    family; ``options`` are the generator's keyword arguments."""
    if is_sam2(model):
        from samdeploy.sam2.automatic import SAM2AutomaticMaskGenerator

        return SAM2AutomaticMaskGenerator(model, **options)
    from samdeploy.sam.automatic import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(model, **options)
