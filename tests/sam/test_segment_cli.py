"""``samdeploy segment`` and ``samdeploy graph`` end to end, and every bad input: one line, exit 2."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samdeploy import SamPredictor, load_model
from samdeploy.cli import main
from samdeploy.engine import Graph

HANDSHAKE_TIMEOUT_S = 10.0  # a handshake between threads that cannot happen fails after this


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    yy, xx = np.mgrid[0:120, 0:200]
    image = np.stack([xx, yy * 2, (xx + yy) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(image).save(folder / "photo.png")
    return folder / "photo.png"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_writes_mask_overlay_and_json(capsys, tmp_path, photo, tiny_package) -> None:
    code, _, err = run(
        capsys, "segment", photo, "--point", "50,40", "--point", "150,80,0", "--model", tiny_package,
        "--output", tmp_path / "mask.png", "--overlay", tmp_path / "overlay.png", "--json", tmp_path / "r.json",
        "--profile",
    )  # fmt: skip
    assert code == 0, err
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (120, 200) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(tmp_path / "overlay.png").size == (200, 120)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["size"] == [120, 200] and len(record["masks"]) == 1
    entry = record["masks"][0]
    decoded = mask_utils.decode(
        {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"]}
    )
    np.testing.assert_array_equal(decoded.astype(bool), mask > 0)
    assert entry["area"] == int((mask > 0).sum())
    assert record["prompt"]["labels"] == [1, 0]
    assert list(tmp_path.glob(".*tmp")) == []


def test_outputs_get_the_usual_file_mode(capsys, tmp_path, photo, tiny_package) -> None:
    """Atomic writes go through a private temporary file; the result must not stay owner-only."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    code, _, err = run(capsys, "segment", photo, "-p", "50,40", "-m", tiny_package, "-o", tmp_path / "m.png")
    assert code == 0, err
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_several_images_stream_to_a_folder(capsys, tmp_path, photo, tiny_package) -> None:
    other = tmp_path / "other.jpg"
    Image.open(photo).convert("RGB").save(other)
    (tmp_path / "broken.png").write_text("not a png")
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = run(
        capsys, "segment", photo, other, tmp_path / "broken.png", "--box", "10,10,150,100", "--multimask",
        "--model", tiny_package, "--output-dir", out, "--mode", "pipeline", "--profile",
    )  # fmt: skip
    assert code == 2  # one image failed; the others are written
    assert err.count("error:") == 1 and "broken.png" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}" for stem in ("photo", "other") for suffix in (".mask.png", ".overlay.png", ".json")
    )
    assert len(json.loads((out / "photo.json").read_text())["masks"]) == 3
    assert "sam/decode/mask_decoder" in stdout


@pytest.mark.parametrize("mode", ["sequential", "task"])
def test_modes_give_the_same_mask(capsys, tmp_path, photo, tiny_package, mode) -> None:
    code, _, err = run(capsys, "segment", photo, "-p", "60,60", "-m", tiny_package, "-o", tmp_path / "a.png")
    assert code == 0, err
    code, _, err = run(
        capsys, "segment", photo, "-p", "60,60", "-m", tiny_package, "-o", tmp_path / "b.png", "--mode", mode
    )
    assert code == 0, err
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    data = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:3000])
    return {
        "missing": tmp_path / "nope.jpg",
        "empty": tmp_path / "empty.jpg",
        "text": tmp_path / "text.jpg",
        "truncated": tmp_path / "cut.png",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--point", "500,40"], "outside the 200x120 image"),
        (["--point", "-1,40"], "outside"),
        (["--box", "100,10,20,50"], "inverted"),
        (["--box", "0,0,300,50"], "reaches outside"),
        (["--point", "5,5", "--max-pixels", "100"], "more than the limit of 100"),
    ],
)
def test_bad_prompts_and_options(capsys, tmp_path, photo, tiny_package, args, message) -> None:
    code, _, err = run(
        capsys, "segment", photo, *args, "--model", tiny_package, "--output", tmp_path / "m.png"
    )
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated"])
def test_bad_images(capsys, tmp_path, tiny_package, kind) -> None:
    image = _bad_files(tmp_path)[kind]
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(
        capsys, "segment", image, "--point", "5,5", "--model", tiny_package, "--output", out / "m.png"
    )
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_missing_output_folder(capsys, tmp_path, photo, tiny_package) -> None:
    code, _, err = run(
        capsys, "segment", photo, "-p", "5,5", "-m", tiny_package, "-o", tmp_path / "no" / "m.png"
    )
    assert code == 0, err  # created, as everything's --output-dir is
    assert (tmp_path / "no" / "m.png").is_file()
    code, _, err = run(
        capsys, "segment", photo, "-p", "5,5", "-m", tiny_package, "--output-dir", tmp_path / "new" / "dir"
    )
    assert code == 0, err  # --output-dir is created
    assert len(list((tmp_path / "new" / "dir").iterdir())) == 3


def test_bad_model_packages(capsys, tmp_path, photo, tiny_package) -> None:
    args = ["segment", photo, "-p", "5,5", "-o", tmp_path / "m.png", "--model"]
    code, _, err = run(capsys, *args, tmp_path / "none")
    assert code == 2 and "model package not found" in err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_package, corrupt)
    (corrupt / "model.json").write_text("{not json")
    code, _, err = run(capsys, *args, corrupt)
    assert code == 2 and "corrupt" in err
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_package, truncated)
    onnx = truncated / "mask_decoder.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    code, _, err = run(capsys, *args, truncated)
    assert code == 2 and "mask_decoder.onnx" in err and "Traceback" not in err
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_package, mismatched)
    manifest = json.loads((mismatched / "model.json").read_text())
    manifest["image_size"] = 1024
    (mismatched / "model.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, *args, mismatched)
    assert code == 2 and "image_size 1024" in err
    assert not (tmp_path / "m.png").exists()


def test_graph_command_prints_and_saves(capsys, tmp_path, tiny_package) -> None:
    code, out, err = run(capsys, "graph", "--model", tiny_package, "--save", tmp_path / "graph.json")
    assert code == 0, err
    for name in ("preprocess", "image_encoder", "prompt_build", "mask_decoder", "postprocess", "onnxruntime"):
        assert name in out
    assert "input 256px" in out
    import samdeploy.sam.nodes  # noqa: F401  (registers the node types JSON names)

    graph = Graph.load(tmp_path / "graph.json")
    assert set(graph.nodes) == {"encode", "decode"}


# The CLI's wiring: what `segment` writes must be what the Python API answers for the same file
# and prompt. The API's image is read here with Pillow alone, so a samdeploy reader that changed
# the pixels (BGR order, a crop) fails these tests.


def rgb_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def api_predict(package: Path, image: np.ndarray, threads: int = 1, **prompt) -> tuple:
    with load_model(package, threads=threads) as model:
        predictor = SamPredictor(model)
        predictor.set_image(image)
        return predictor.predict(**prompt)


@pytest.fixture
def loaded(monkeypatch) -> list[dict[str, tuple[str, int]]]:
    """Spies on ``load_model`` wherever the CLI may import it from: per model loaded, the
    backend and intra-op thread count each ONNX model really runs with."""
    from samdeploy.sam import model as model_module

    real = model_module.load_model
    seen: list[dict[str, tuple[str, int]]] = []

    def spy(*args, **kwargs):
        sam = real(*args, **kwargs)
        runs = {}
        for node in (*sam.encode_graph.nodes.values(), *sam.decode_graph.nodes.values()):
            backend = getattr(node, "backend", None)
            if backend is None:
                continue
            if backend.name == "onnxruntime":
                threads = backend._session.get_session_options().intra_op_num_threads
            else:
                threads = int(backend._compiled.get_property("INFERENCE_NUM_THREADS"))
            runs[node.name] = (backend.name, threads)
        seen.append(runs)
        return sam

    for module in list(sys.modules.values()):
        if getattr(module, "load_model", None) is real:
            monkeypatch.setattr(module, "load_model", spy)
    return seen


def test_segment_mask_is_the_python_apis_mask(capsys, tmp_path, photo, tiny_package) -> None:
    # Why: nothing else checks that the CLI's mask is the API's for the same file and prompt. The
    # photo's channels differ, and the BGR twin's mask differs (asserted below), so a file reader
    # that returns BGR, or a prompt passed in the wrong order, fails here.
    prompt = {"point_coords": np.array([[50.0, 40.0], [150.0, 80.0]]), "point_labels": np.array([1, 0])}
    code, _, err = run(
        capsys, "segment", photo, "-p", "50,40", "-p", "150,80,0", "-m", tiny_package, "--threads", "1",
        "-o", tmp_path / "mask.png", "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    rgb = rgb_of(photo)
    masks, scores, _ = api_predict(tiny_package, rgb, multimask_output=False, **prompt)
    written = np.asarray(Image.open(tmp_path / "mask.png"))
    np.testing.assert_array_equal(written, masks[0].astype(np.uint8) * 255)
    record = json.loads((tmp_path / "r.json").read_text())
    assert [m["score"] for m in record["masks"]] == pytest.approx(scores.tolist(), abs=1e-5)
    bgr_masks, _, _ = api_predict(tiny_package, rgb[..., ::-1].copy(), multimask_output=False, **prompt)
    assert (bgr_masks[0] != masks[0]).sum() > 100  # the photo is one where channel order shows


def test_segment_box_mask_is_the_python_apis_mask(capsys, tmp_path, photo, tiny_package) -> None:
    # Why: the box path of the CLI (parse, validate, prompt) against the API's box prompt; a box
    # read as X0,X1,Y0,Y1 or in the wrong image size fails.
    code, _, err = run(
        capsys, "segment", photo, "--box", "20,10,130,100", "-m", tiny_package, "--threads", "1",
        "-o", tmp_path / "mask.png",
    )  # fmt: skip
    assert code == 0, err
    masks, _, _ = api_predict(
        tiny_package, rgb_of(photo), box=np.array([20.0, 10.0, 130.0, 100.0]), multimask_output=False
    )
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")) > 0, masks[0])


def test_multimask_writes_the_best_mask_not_the_first(capsys, tmp_path, photo, tiny_package) -> None:
    # Why: `--multimask` promises the best-scoring of three masks as the mask PNG. The prompt is
    # chosen (with the API, on the same model) so that the best is not index 0 and differs from
    # masks[0]: writing masks[0] fails here.
    rgb = rgb_of(photo)
    with load_model(tiny_package, threads=1) as model:
        predictor = SamPredictor(model)
        predictor.set_image(rgb)
        candidates = []
        for x, y in itertools.product(range(10, 200, 30), range(10, 120, 25)):
            masks, scores, _ = predictor.predict(
                point_coords=np.array([[x, y]]), point_labels=np.array([1]), multimask_output=True
            )
            best = int(np.argmax(scores))
            margin = float(scores[best] - np.delete(scores, best).max())
            if best != 0 and (masks[best] != masks[0]).sum() > 100:
                candidates.append((margin, x, y, best, masks[best]))
    assert candidates, "no prompt of the grid has its best mask elsewhere than index 0"
    _, x, y, best, expected = max(candidates, key=lambda c: c[0])  # the clearest winner
    code, _, err = run(
        capsys, "segment", photo, "-p", f"{x},{y}", "--multimask", "-m", tiny_package, "--threads", "1",
        "-o", tmp_path / "mask.png", "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")) > 0, expected)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["best"] == best and len(record["masks"]) == 3


def test_pipeline_mode_reads_the_next_image_while_one_is_decoded(
    capsys, tmp_path, photo, tiny_package, monkeypatch
) -> None:
    # Why: `--mode pipeline` (the default) must overlap the nodes of successive images. The first
    # image's postprocess waits until the reader has started on the third image: a segment path
    # that ran the images one after another (another executor, or none) times out and fails.
    # The three images differ, and each mask must be the API's for its own image: results given
    # to the wrong file fail.
    from samdeploy.sam import nodes

    pixels = rgb_of(photo)
    variants = [pixels, np.ascontiguousarray(pixels[..., ::-1]), np.ascontiguousarray(pixels[:, ::-1])]
    images = [tmp_path / f"img{i}.png" for i in range(3)]
    for path, variant in zip(images, variants, strict=True):
        Image.fromarray(variant).save(path)
    third_read = threading.Event()
    real_load, real_post = nodes.load_image, nodes.Postprocess.run
    first_post = threading.Lock()

    def load_image(path, *args, **kwargs):
        if Path(path).name == "img2.png":
            third_read.set()
        return real_load(path, *args, **kwargs)

    def postprocess(self, **inputs):
        if first_post.acquire(blocking=False) and not third_read.wait(HANDSHAKE_TIMEOUT_S):
            raise TimeoutError("the third image was not read while the first was decoded")
        return real_post(self, **inputs)

    monkeypatch.setattr(nodes, "load_image", load_image)
    monkeypatch.setattr(nodes.Postprocess, "run", postprocess)
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "segment", *images, "-p", "60,60", "-m", tiny_package, "--mode", "pipeline", "--threads", "1",
        "--output-dir", out,
    )  # fmt: skip
    assert code == 0, err
    assert third_read.is_set()
    prompt = {
        "point_coords": np.array([[60.0, 60.0]]),
        "point_labels": np.array([1]),
        "multimask_output": False,
    }
    expected = [api_predict(tiny_package, variant, **prompt)[0][0] for variant in variants]
    assert not np.array_equal(expected[0], expected[1]) and not np.array_equal(expected[0], expected[2])
    for i, mask in enumerate(expected):
        [written] = out.glob(f"img{i}*.mask.png")
        np.testing.assert_array_equal(np.asarray(Image.open(written)) > 0, mask)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_and_threads_reach_every_model(
    capsys, tmp_path, photo, tiny_package, loaded, backend
) -> None:
    # Why: `--backend` and `--threads` were never exercised. Each must reach both ONNX models
    # (read back from the live sessions), and the mask must still be the API's. One thread: the
    # backends' defaults are 0 (ONNX Runtime) and the core count (OpenVINO), so 1 shows the option.
    if backend == "openvino":
        pytest.importorskip("openvino")
    code, _, err = run(
        capsys, "segment", photo, "-p", "60,60", "-m", tiny_package, "--backend", backend, "--threads", "1",
        "-o", tmp_path / "mask.png",
    )  # fmt: skip
    assert code == 0, err
    assert len(loaded) == 1 and set(loaded[0]) == {"image_encoder", "mask_decoder"}
    assert set(loaded[0].values()) == {(backend, 1)}
    masks, _, _ = api_predict(
        tiny_package, rgb_of(photo), threads=1, point_coords=np.array([[60.0, 60.0]]),
        point_labels=np.array([1]), multimask_output=False,
    )  # fmt: skip
    written = np.asarray(Image.open(tmp_path / "mask.png")) > 0
    # OpenVINO computes in its own order: the same mask up to pixels on the threshold.
    assert np.mean(written == masks[0]) > (0.999 if backend == "openvino" else 1 - 1e-9)


def test_unknown_backend_and_bad_threads_are_one_line(capsys, tmp_path, photo, tiny_package) -> None:
    # Why: a wrong --backend or --threads is the user's mistake: one line, exit 2, no file.
    for args, message in ((["--backend", "tensorflow"], "tensorflow"), (["--threads", "-3"], "threads")):
        code, _, err = run(
            capsys, "segment", photo, "-p", "5,5", "-m", tiny_package, *args, "-o", tmp_path / "m.png"
        )
        assert code == 2 and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["-p", "1;2"],
            "malformed --point '1;2': use X,Y or X,Y,LABEL (LABEL 1 = foreground, 0 = background)",
        ),
        (["-p", "x,1"], "malformed --point 'x,1': X and Y must be numbers"),
        (["-p", "1,2,5"], "unknown label '5' in --point '1,2,5': use 1 (foreground) or 0 (background)"),
        (["-p", "nan,3"], "--point 'nan,3' is not a finite position"),
        (["-b", "1,2,3"], "malformed --box '1,2,3': use X0,Y0,X1,Y1 (four numbers, pixels)"),
        (["-b", "a,b,c,d"], "malformed --box 'a,b,c,d': use X0,Y0,X1,Y1 (four numbers, pixels)"),
        (["-b", "1,2,inf,4"], "--box '1,2,inf,4' is not finite"),
        ([], "no prompt: give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1"),
        (["-p", "5,5", "--mode", "fast"], "unknown --mode 'fast'; choose one of sequential, task, pipeline"),
        (["-p", "5,5", "--max-pixels", "-1"], "--max-pixels must be positive, or 0 for no limit"),
    ],
)
def test_segment_option_errors_are_whole_sentences(capsys, tmp_path, photo, args, line) -> None:
    # Why: segment's own checks of its options, compared as whole lines (a fragment would let a
    # garbled or truncated message through). Nothing is loaded or written before they pass.
    code, _, err = run(capsys, "segment", photo, *args, "-m", tmp_path / "none", "-o", tmp_path / "m.png")
    assert code == 2 and err == f"error: {line}\n"
    assert list(tmp_path.iterdir()) == []


def test_point_and_box_parsing() -> None:
    # Why: the values a prompt is made of; spaces are allowed, the label defaults to foreground.
    from samdeploy.cli.segment import parse_box, parse_point

    assert parse_point("3,4") == (3.0, 4.0, 1)
    assert parse_point(" 1.5 , 2 , 0 ") == (1.5, 2.0, 0)
    assert parse_point("7,8,1") == (7.0, 8.0, 1)
    assert parse_box("1,2.5,30,40") == (1.0, 2.5, 30.0, 40.0)


def test_output_paths_per_image(tmp_path) -> None:
    # Why: where each image's files go decides what a run overwrites. With --output-dir each image gets
    # its name's three files; otherwise one image writes exactly the files asked for; a mix is refused.
    from samdeploy.cli.inputs import InputImage
    from samdeploy.cli.segment import _outputs
    from samdeploy.errors import SamDeployError

    images = [InputImage(tmp_path / "a.png", Path("a")), InputImage(tmp_path / "sub/b.jpg", Path("sub/b"))]
    out = tmp_path / "out"
    assert _outputs(images, None, None, None, out) == [
        {"mask": out / "a.mask.png", "overlay": out / "a.overlay.png", "json": out / "a.json"},
        {"mask": out / "sub/b.mask.png", "overlay": out / "sub/b.overlay.png", "json": out / "sub/b.json"},
    ]
    single = images[:1]
    mask, overlay, record = tmp_path / "m.png", tmp_path / "o.png", tmp_path / "r.json"
    assert _outputs(single, mask, overlay, record, None) == [
        {"mask": mask, "overlay": overlay, "json": record}
    ]
    assert _outputs(single, mask, None, None, None) == [{"mask": mask, "overlay": None, "json": None}]
    refusals = [
        ((single, mask, None, None, out), "use either --output-dir or --output/--overlay/--json, not both"),
        (
            (single, None, overlay, None, out),
            "use either --output-dir or --output/--overlay/--json, not both",
        ),
        ((single, None, None, record, out), "use either --output-dir or --output/--overlay/--json, not both"),
        (
            (images, mask, None, None, None),
            "several images (or a folder) need --output-dir DIR (one mask per image)",
        ),
        ((single, None, overlay, record, None), "give --output mask.png (or --output-dir DIR)"),
        ((single, None, None, None, mask.parent / "m.png"), None),  # an existing file as the folder
    ]
    mask.write_bytes(b"")
    for args, message in refusals:
        with pytest.raises(SamDeployError) as caught:
            _outputs(*args)
        assert str(caught.value) == (message or f"--output-dir {mask} exists and is not a folder")


def test_graph_tensor_labels() -> None:
    # Why: `samdeploy graph` prints each tensor as name[dims], dynamic axes by their name.
    from samdeploy.cli.segment import _tensor
    from samdeploy.package import TensorSpec

    assert (
        _tensor(TensorSpec("point_coords", (1, "num_points", 2), "float32"))
        == "point_coords[1, num_points, 2]"
    )
    assert _tensor(TensorSpec("scalar", (), "float32")) == "scalar[]"
