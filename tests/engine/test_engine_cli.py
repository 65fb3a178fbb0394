"""``samdeploy run-graph`` end to end, in-process and as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_toys import Scale, Text, build_tiny_model
from PIL import Image

from samdeploy.cli import main
from samdeploy.engine import Graph, Inference


@pytest.fixture
def graph_file(tmp_path: Path) -> Path:
    """scale(x2) -> tiny model, saved with a model path relative to the graph file."""
    build_tiny_model(tmp_path / "tiny.onnx")
    g = Graph("demo")
    g.add(Scale("scale"))
    g.add(Inference("model", {"model": str(tmp_path / "tiny.onnx")}))
    g.connect("scale.x", "model.x")
    g.input("x", "scale.x")
    g.output("sum", "model.sum")
    g.output("y", "model.y")
    g.nodes["model"].params.model = "tiny.onnx"
    return g.save(tmp_path / "demo.json")


def test_run_graph_with_npy_and_json_inputs(
    graph_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    assert (
        main(
            ["run-graph", str(graph_file), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "out")]
        )
        == 0
    )
    np.testing.assert_allclose(np.load(tmp_path / "out" / "sum.npy"), [[12.0], [12.0]])
    assert "sum: array float32 [2, 1] min 12 max 12" in capsys.readouterr().out
    # A JSON literal going to an ndarray port becomes an array (float64 here, which the model
    # refuses: the error names the node and the cause).
    assert main(["run-graph", str(graph_file), "--input", "x=[[1, 1, 1]]"]) == 2
    assert "node 'model'" in capsys.readouterr().err


def test_run_graph_profile_and_executors(
    graph_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    for executor in ("sequential", "task", "pipeline"):
        args = ["run-graph", str(graph_file), "-i", f"x={tmp_path / 'x.npy'}", "--executor", executor]
        assert main([*args, "--repeat", "5", "--profile"]) == 0
        out = capsys.readouterr().out
        assert "node" in out and "scale" in out and "model" in out and "5 item(s)" in out


def test_run_graph_image_and_text_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    g = Graph("mixed")
    g.add(Scale("scale", {"factor": 1.0}))
    g.add(Text("text"))
    g.input("image", "scale.x")
    g.input("name", "text.text")
    g.output("image", "scale.x")
    g.output("length", "text.length")
    g.save(tmp_path / "mixed.json")
    Image.fromarray(np.full((4, 6, 3), 7, np.uint8)).save(tmp_path / "img.png")
    args = [
        "run-graph",
        str(tmp_path / "mixed.json"),
        "-i",
        f"image={tmp_path / 'img.png'}",
        "-i",
        "name=hello",
    ]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "image.npy").shape == (4, 6, 3)
    assert json.loads((tmp_path / "out" / "outputs.json").read_text()) == {"length": 5}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "x"], "NAME=VALUE"),
        (["-i", "x=missing.npy"], "file not found"),
        (["-i", "x=not json"], "is neither a"),
        (["-i", "z=1"], "has no input 'z'"),
        (["--executor", "turbo", "-i", "x=1"], "unknown executor 'turbo'"),
    ],
)
def test_run_graph_user_errors(
    graph_file: Path, args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run-graph", str(graph_file), *args]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_run_graph_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run-graph", str(tmp_path / "none.json")]) == 2
    assert "cannot read graph file" in capsys.readouterr().err
    (tmp_path / "g.json").write_text(
        '{"type": "engine.Graph", "name": "g", "nodes": [{"type": "x.Y", "name": "n"}]}'
    )
    assert main(["run-graph", str(tmp_path / "g.json")]) == 2
    assert "unknown node type 'x.Y'" in capsys.readouterr().err


def test_run_graph_as_a_command(graph_file: Path, tmp_path: Path) -> None:
    """A fresh process: node types come from --import."""
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    command = [
        sys.executable,
        "-m",
        "samdeploy",
        "run-graph",
        str(graph_file),
        "-i",
        f"x={tmp_path / 'x.npy'}",
    ]
    done = subprocess.run(
        [*command, "--import", "engine_toys"], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "sum: array float32 [1, 1] min 12 max 12" in done.stdout
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2 and "unknown node type 'toy.Scale'" in done.stderr
