"""Options shared by the sub-commands that run a model, declared once, and what they resolve to.

``--model`` takes a package folder or ``default`` (the embedded demo model, also what no
``--model`` means; a folder that happens to be called ``default`` is ``./default``).

``--device`` says where the models run: ``cpu`` (ONNX Runtime on the CPU), ``cuda`` or
``tensorrt`` (ONNX Runtime's GPU execution providers, the CPU taking what they do not run),
``openvino`` (the OpenVINO backend), or a comma-separated list of ONNX Runtime execution providers
in order of preference (``tensorrt,cuda,cpu`` or full names such as ``CUDAExecutionProvider``).
A choice this machine does not have fails at once with one line that lists what is installed
(:func:`resolve_device`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from samdeploy.errors import BackendError

#: ``--model`` value naming the embedded default model.
DEFAULT_MODEL_NAME = "default"

#: ONNX Runtime execution providers behind each ``--device`` name, in order of preference.
ORT_DEVICES = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
DEVICE_NAMES = (*ORT_DEVICES, "openvino")


def parse_model(text: str) -> Path | None:
    """``--model`` text -> a package folder, or None for the embedded default model."""
    return None if text == DEFAULT_MODEL_NAME else Path(text)


ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        parser=parse_model,
        metavar="DIR",
        show_default="default",
        help="model package folder, or 'default': the embedded demo model",
    ),
]
ImagesArgument = Annotated[
    list[Path],
    typer.Argument(
        metavar="IMAGE...",
        help="image files or folders (searched recursively for JPEG, PNG, WebP, TIFF, BMP files)",
    ),
]
BackendOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="inference backend: onnxruntime or openvino (default: onnxruntime, or what the package"
        " asks for: a bf16 package runs on OpenVINO at bf16)",
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        metavar="DEVICE",
        show_default="cpu, or as the package asks",
        help="where the models run: cpu, cuda, tensorrt, openvino, or ONNX Runtime execution"
        " providers in order, comma-separated (tensorrt,cuda,cpu)",
    ),
]
ThreadsOption = Annotated[
    int | None, typer.Option(metavar="N", help="intra-op threads per model (default: the backend's)")
]
MaxPixelsOption = Annotated[
    int,
    typer.Option(metavar="N", help="refuse images with more pixels (decompression-bomb guard); 0: no limit"),
]
ProfileOption = Annotated[bool, typer.Option("--profile", help="print per-node timings")]


def _generator_option(help_text: str, official: str, metavar: str = "X") -> Any:
    """A generator option: left out, the package's recommendation, else the official default."""
    return typer.Option(metavar=metavar, show_default=official, help=help_text)


#: The automatic mask generator's options, as every command that runs it takes them. Left out
#: (None), an option takes the package's recommendation, else the official default (shown).
GENERATOR_OPTIONS: dict[str, Any] = {
    "points_per_side": Annotated[
        int | None, _generator_option("grid points along each image side", "32", "N")
    ],
    "points_per_batch": Annotated[
        int | None, _generator_option("points answered by one decoder call", "64", "N")
    ],
    "pred_iou_thresh": Annotated[
        float | None, _generator_option("keep masks whose predicted IoU is above this", "0.88; SAM 2: 0.8")
    ],
    "stability_score_thresh": Annotated[
        float | None, _generator_option("keep masks at least this stable", "0.95")
    ],
    "stability_score_offset": Annotated[
        float | None, _generator_option("logit shift for the stability score", "1")
    ],
    "box_nms_thresh": Annotated[float | None, _generator_option("box IoU that marks duplicates", "0.7")],
    "crop_n_layers": Annotated[int | None, _generator_option("layers of image crops run again", "0", "N")],
    "crop_nms_thresh": Annotated[
        float | None, _generator_option("box IoU for duplicates across crops", "0.7")
    ],
    "crop_overlap_ratio": Annotated[
        float | None, _generator_option("crop overlap, fraction of the short side", "512/1500 = 0.3413")
    ],
    "crop_n_points_downscale_factor": Annotated[
        int | None, _generator_option("grid downscale per crop layer", "1", "N")
    ],
    "min_mask_region_area": Annotated[
        int | None, _generator_option("fill holes / drop islands below this area (px)", "0", "N")
    ],
}


def generator_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a typer command the generator's options (``--points-per-side``, ...).

    The command declares a ``generator_options`` parameter and receives them in it as one dict,
    keyed by the generator's argument names (None: not given). Declared once here, so every command
    that runs the generator spells, documents and defaults them alike.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "generator_options"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for name, annotation in GENERATOR_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = {name: kwargs.pop(name) for name in GENERATOR_OPTIONS}
        return command(*args, generator_options=options, **kwargs)

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer must read the new signature, not the command's own
    return wrapper


def installed_devices() -> dict[str, str]:
    """``--device`` names this machine can run, each with what stands behind it."""
    import onnxruntime as ort

    from samdeploy.engine.backends import available_backends

    providers = set(ort.get_available_providers())
    devices = {
        name: ", ".join(chain[:-1] or chain) for name, chain in ORT_DEVICES.items() if set(chain) <= providers
    }
    if "openvino" in available_backends():
        import openvino

        devices["openvino"] = "OpenVINO devices " + ", ".join(openvino.Core().available_devices)
    return devices


def _unavailable(device: str, reason: str) -> BackendError:
    listed = "; ".join(f"{name} ({what})" for name, what in installed_devices().items())
    return BackendError(f"--device {device} is not available: {reason}. Installed here: {listed}")


def resolve_device(device: str | None, backend: str | None) -> tuple[str | None, list[str] | None]:
    """``--device`` and ``--backend`` -> (backend, ONNX Runtime providers) for ``load_model``.

    No device: the backend as given and the backend's default providers. Raises
    :class:`BackendError` (one line, listing what is installed) for a device that is not there or
    that contradicts ``--backend``.
    """
    if device is None:
        return backend, None
    import onnxruntime as ort

    from samdeploy.engine.backends import available_backends
    from samdeploy.engine.backends.onnxruntime import provider_name

    name = device.strip().lower()
    if name == "openvino":
        if backend not in (None, "openvino"):
            raise BackendError(f"--device openvino runs on the openvino backend, not --backend {backend}")
        if "openvino" not in available_backends():
            raise _unavailable(device, "OpenVINO is not installed (pip install 'samdeploy[openvino]')")
        return "openvino", None
    if name == "cpu" and backend == "openvino":
        return backend, None  # OpenVINO on its CPU device
    if backend not in (None, "onnxruntime"):
        raise BackendError(
            f"--device {device} names ONNX Runtime execution providers, not --backend {backend}"
        )
    if name in ORT_DEVICES:
        wanted = list(ORT_DEVICES[name])
    else:
        known = ort.get_all_providers()
        wanted = [provider_name(part.strip(), known) for part in device.split(",") if part.strip()]
        unknown = [part for part in wanted if part not in known]
        if not wanted or unknown:
            raise BackendError(
                f"unknown --device '{device}': use one of {', '.join(DEVICE_NAMES)} or ONNX Runtime"
                f" execution providers ({', '.join(p.removesuffix('ExecutionProvider').lower() for p in known)})"
            )
    available = ort.get_available_providers()
    missing = [provider for provider in wanted if provider not in available]
    if missing:
        raise _unavailable(
            device,
            f"this onnxruntime {ort.__version__} has no {', '.join(missing)} (a GPU needs onnxruntime-gpu)",
        )
    return "onnxruntime", wanted
