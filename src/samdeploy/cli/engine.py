"""``samdeploy run-graph``: run a graph saved as JSON on inputs given on the command line.

Each ``--input NAME=VALUE`` gives one graph input. VALUE is read by its form:

- ``*.npy``: a numpy array (``np.load``, pickles refused);
- ``*.png``, ``*.jpg``, ``*.jpeg``, ``*.bmp``, ``*.tif``, ``*.tiff``, ``*.webp``: an image file, as an
  HxWx3 uint8 RGB array;
- ``*.json``: the JSON value in that file;
- anything else: a JSON literal (``3``, ``[[10, 20]]``, ``"text"``, ``{"a": 1}``); for an input
  whose port takes ``str`` the text is taken as is.

A list or number going to an input whose port takes ``np.ndarray`` becomes a numpy array.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from samdeploy.cli.app import app
from samdeploy.engine import Graph, Profile
from samdeploy.errors import GraphError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

# Node modules shipped with samdeploy, imported when present so their graphs load by type name.
_BUILTIN_NODE_MODULES = ("samdeploy.sam.nodes",)


def parse_input(text: str, port_type: Any) -> tuple[str, Any]:
    """``NAME=VALUE`` -> (name, value), reading VALUE as the module docstring describes."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise typer.BadParameter(f"{text!r}: write inputs as NAME=VALUE", param_hint="--input")
    suffix = Path(raw).suffix.lower()
    if suffix in {".npy", ".json", *IMAGE_SUFFIXES}:
        path = Path(raw)
        if not path.is_file():
            raise typer.BadParameter(f"{name}: file not found: {raw}", param_hint="--input")
        if suffix == ".npy":
            try:
                value: Any = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise typer.BadParameter(f"{name}: cannot read {raw}: {exc}", param_hint="--input") from None
        elif suffix == ".json":
            value = _json(name, path.read_text())
        else:
            from samdeploy.sam.images import load_image

            value = load_image(path)
    elif port_type is str:
        value = raw
    else:
        value = _json(name, raw)
    if port_type is np.ndarray and isinstance(value, (list, int, float)):
        value = np.asarray(value)
    return name, value


def _json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"{name}: {text[:60]!r} is neither a .npy/.json/image file nor a JSON value ({exc.msg});"
            " quote text as '\"text\"'",
            param_hint="--input",
        ) from None


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        if value.size and np.issubdtype(value.dtype, np.number):
            return f"array {value.dtype} {list(value.shape)} min {value.min():.6g} max {value.max():.6g}"
        return f"array {value.dtype} {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _save(outputs: dict[str, Any], folder: Path) -> list[Path]:
    """Arrays as NAME.npy, every other value in outputs.json (non-JSON values as their repr)."""
    folder.mkdir(parents=True, exist_ok=True)
    written, others = [], {}
    for name, value in outputs.items():
        if isinstance(value, np.ndarray):
            np.save(folder / f"{name}.npy", value)
            written.append(folder / f"{name}.npy")
        else:
            others[name] = value
    if others:
        (folder / "outputs.json").write_text(json.dumps(others, indent=2, default=repr) + "\n")
        written.append(folder / "outputs.json")
    return written


@app.command("run-graph")
def run_graph(
    graph_file: Annotated[
        Path, typer.Argument(metavar="GRAPH.json", help="graph JSON file (Graph.save / to_json)")
    ],
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            metavar="NAME=VALUE",
            help="a .npy, image or .json file, or a JSON literal; repeat",
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option(metavar="MODE", help="sequential, task or pipeline")
    ] = "sequential",
    repeat: Annotated[int, typer.Option(min=1, help="run the same inputs this many times (timing)")] = 1,
    queue_depth: Annotated[int, typer.Option(min=1, help="pipeline: items per queue")] = 4,
    workers: Annotated[int | None, typer.Option(min=1, help="task: thread pool size")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="print per-node times")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="DIR", help="save outputs to this folder")
    ] = None,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", metavar="MODULE", help="module defining node types the graph uses; repeat"),
    ] = None,
) -> None:
    """Run a graph saved as JSON once (or --repeat times) and print or save its outputs."""
    for module in _BUILTIN_NODE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    for module in imports or []:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise GraphError(f"cannot import node module '{module}': {exc}") from None
    graph = Graph.load(graph_file)
    ports = graph.input_ports()
    values = dict(parse_input(text, ports.get(text.partition("=")[0])) for text in inputs or [])
    graph.plan().bind(values)  # wrong input names fail here, before any node runs
    options: dict[str, Any] = {}
    if executor == "pipeline":
        options["queue_depth"] = queue_depth
    elif executor == "task" and workers is not None:
        options["workers"] = workers
    prof = Profile() if profile else None
    console = Console()
    outputs: dict[str, Any] = {}
    results = graph.stream(itertools.repeat(values, repeat), executor=executor, profile=prof, **options)
    try:
        with contextlib.closing(results):  # stops the executor's threads before the nodes close
            for result in results:
                if result.error is not None:
                    raise result.error
                outputs = result.outputs or {}
    finally:
        graph.close()
    for name, value in outputs.items():
        console.print(f"[bold]{name}[/]: {_describe(value)}", highlight=False)
    if output is not None:
        for path in _save(outputs, output):
            console.print(f"wrote {path}", highlight=False)
    if prof is not None:
        console.print(prof.table(), highlight=False)
