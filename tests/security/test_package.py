"""A model package is untrusted input: it may use only its own files, verified, and a malformed
manifest is one clear PackageError (from ModelPackage.load, load_model and every command)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import samdeploy.package as package_module
from samdeploy import load_model
from samdeploy.cli import main
from samdeploy.errors import PackageError
from samdeploy.package import ChecksumCache, ModelPackage, TensorSpec, sha256_file
from samdeploy.sam.model import DEFAULT_MODEL

ENCODER_FILE = "image_encoder.onnx"
FINISH_S = 60.0  # a load that has not returned by then is hung (on a FIFO, say)


def refused(path: Path, match: str) -> None:
    """ModelPackage.load, load_model and `samdeploy inspect` all refuse ``path`` with ``match``."""
    with pytest.raises(PackageError, match=match):
        ModelPackage.load(path)
    with pytest.raises(PackageError, match=match):
        load_model(path)


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def point_encoder_at(manifest: dict, name: str) -> None:
    """Name ``name`` as the encoder's file, listed in ``files`` with the real file's checksum."""
    manifest["files"][name] = manifest["files"].pop(ENCODER_FILE)
    manifest["models"]["image_encoder"]["file"] = name


def test_absolute_file_name_is_refused(package_copy, tmp_path, capsys) -> None:
    outside = tmp_path / "elsewhere" / ENCODER_FILE
    outside.parent.mkdir()
    shutil.copy(DEFAULT_MODEL / ENCODER_FILE, outside)  # same bytes: only the place is wrong
    package = package_copy(lambda m: point_encoder_at(m, str(outside)))
    refused(package, "absolute path")
    code, out, err = run_cli(capsys, "inspect", package)
    assert code == 2 and "absolute path" in err and "Traceback" not in err
    assert "every checksum matches" not in out


def test_dot_dot_file_name_is_refused(package_copy, tmp_path) -> None:
    shutil.copy(DEFAULT_MODEL / ENCODER_FILE, tmp_path / ENCODER_FILE)
    package = package_copy(lambda m: point_encoder_at(m, f"../{ENCODER_FILE}"))
    refused(package, "leaves the package folder")


def test_symlink_leading_out_is_refused(package_copy, tmp_path, capsys) -> None:
    package = package_copy()
    outside = tmp_path / "outside.onnx"
    shutil.copy(package / ENCODER_FILE, outside)  # identical bytes, so only the place is wrong
    (package / ENCODER_FILE).unlink()
    (package / ENCODER_FILE).symlink_to(outside)
    refused(package, "leads outside the package folder")
    code, out, err = run_cli(capsys, "inspect", package)
    assert code == 2 and "leads outside" in err and "every checksum matches" not in out
    # A folder symlinked from outside is outside too.
    other = package_copy(name="other")
    (tmp_path / "models").mkdir()
    shutil.move(other / ENCODER_FILE, tmp_path / "models" / ENCODER_FILE)
    (other / "sub").symlink_to(tmp_path / "models")
    manifest = json.loads((other / "model.json").read_text())
    point_encoder_at(manifest, f"sub/{ENCODER_FILE}")
    (other / "model.json").write_text(json.dumps(manifest))
    refused(other, "leads outside")


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_unlisted_special_files_in_the_folder_are_refused(package_copy, tmp_path, kind) -> None:
    """An ONNX file may name external-data files the manifest does not list: none of the folder's
    files may reach outside it or hang a reader."""
    package = package_copy()
    (package / "data").mkdir()
    if kind == "symlink":
        (tmp_path / "secret").write_text("secret")
        (package / "data" / "weights.bin").symlink_to(tmp_path / "secret")
        message = "data/weights.bin leads outside the package folder"
    else:
        os.mkfifo(package / "data" / "weights.bin")
        message = "data/weights.bin is not a regular file"
    assert finishes(lambda: refused(package, message)) is None


def test_symlink_inside_the_package_is_fine(package_copy) -> None:
    package = package_copy()
    (package / "weights").mkdir()
    shutil.move(package / ENCODER_FILE, package / "weights" / ENCODER_FILE)
    (package / ENCODER_FILE).symlink_to(Path("weights") / ENCODER_FILE)
    loaded = ModelPackage.load(package, verify=True)
    assert loaded.encoder_path == (package / "weights" / ENCODER_FILE).resolve()
    load_model(package).close()


def test_manifest_symlinked_from_outside_is_refused(package_copy, tmp_path) -> None:
    package = package_copy()
    shutil.move(package / "model.json", tmp_path / "model.json")
    (package / "model.json").symlink_to(tmp_path / "model.json")
    refused(package, "the manifest model.json leads outside")


def finishes(call) -> BaseException | None:
    """Run ``call`` in a thread; fail if it does not return in FINISH_S; return what it raised."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(FINISH_S)
    assert not thread.is_alive(), "loading hung"
    return outcome[0]


@pytest.mark.parametrize("name", [ENCODER_FILE, "model.json"])
def test_fifo_is_refused_without_hanging(package_copy, name) -> None:
    package = package_copy()
    (package / name).unlink()
    os.mkfifo(package / name)
    for call in (lambda: ModelPackage.load(package, verify=True), lambda: load_model(package)):
        error = finishes(call)
        assert isinstance(error, PackageError) and "not a regular file" in str(error), error


def test_file_not_listed_with_a_checksum_is_refused(package_copy) -> None:
    def unlist(manifest: dict) -> None:
        del manifest["files"][ENCODER_FILE]

    refused(package_copy(unlist), "models.image_encoder.file: image_encoder.onnx is not listed in files")


def flip_bytes(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of ``path`` in place: same size, other content."""
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        data = handle.read(count)
        handle.seek(path.stat().st_size // 2)
        handle.write(bytes(255 - b for b in data))


def test_modified_model_file_is_refused_at_load(package_copy, capsys) -> None:
    package = package_copy()
    size = (package / ENCODER_FILE).stat().st_size
    flip_bytes(package / ENCODER_FILE)
    assert (package / ENCODER_FILE).stat().st_size == size
    with pytest.raises(PackageError, match="checksum mismatch for .*image_encoder.onnx"):
        load_model(package)
    code, _, err = run_cli(capsys, "inspect", package)
    assert code == 2 and "checksum mismatch" in err
    load_model(package, verify=False).close()  # the opt-out for trusted hot paths


def test_checksums_are_computed_once_per_file(package_copy, monkeypatch) -> None:
    package = package_copy()
    hashed: list[int] = []
    real = package_module._sha256_fd
    monkeypatch.setattr(package_module, "_sha256_fd", lambda fd, *a: hashed.append(fd) or real(fd, *a))
    load_model(package).close()
    files = len(json.loads((package / "model.json").read_text())["files"])
    assert len(hashed) == files
    load_model(package).close()
    assert len(hashed) == files  # remembered: no file read again
    package_module.CHECKSUMS._memory.clear()  # a new process: the cache file still knows them
    package_module.CHECKSUMS._loaded_from = None
    load_model(package).close()
    assert len(hashed) == files
    ModelPackage.load(package, verify=True)  # inspect's explicit check hashes every byte
    assert len(hashed) == 2 * files


def test_a_file_changed_in_place_with_its_mtime_restored_is_hashed_again(package_copy) -> None:
    package = package_copy()
    load_model(package).close()
    encoder = package / ENCODER_FILE
    before = encoder.stat()
    time.sleep(0.05)  # let the clock move past the copy's timestamps
    flip_bytes(encoder)
    os.utime(encoder, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert encoder.stat().st_mtime_ns == before.st_mtime_ns and encoder.stat().st_size == before.st_size
    with pytest.raises(PackageError, match="checksum mismatch"):
        load_model(package)


def test_the_embedded_model_is_verified_too(monkeypatch) -> None:
    hashed: list[int] = []
    real = package_module._sha256_fd
    monkeypatch.setattr(package_module, "_sha256_fd", lambda fd, *a: hashed.append(fd) or real(fd, *a))
    load_model().close()
    assert len(hashed) == len(ModelPackage.load(DEFAULT_MODEL).manifest["files"])


def _set(path: str, value):
    """An edit that sets manifest[path] (dotted; '-' deletes the key)."""

    def edit(manifest: dict) -> None:
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        if value == "-":
            del node[last]
        else:
            node[last] = value

    return edit


MALFORMED = [
    ("models.image_encoder.file", "-", "models.image_encoder.file: Field required"),
    ("models", ["image_encoder"], "models: Input should be an object"),
    ("files", [ENCODER_FILE], "files: Input should be an object"),
    ("image_size", None, "image_size: Input should be a valid integer"),
    ("pixel_mean", "abc", "pixel_mean: Input should be a valid array"),
    ("pixel_mean", [1, 2, "abc"], r"pixel_mean\[2\]: Input should be a valid number"),
    ("runtime", "x", "runtime: Input should be an object"),
    ("models.mask_decoder.inputs", "-", "models.mask_decoder.inputs: Field required"),
    ("format_version", -1, "format_version: Input should be greater than or equal to 1"),
    ("format_version", True, "format_version: Input should be a valid integer"),
    ("pixel_std", [0, 57.12, 57.375], r"pixel_std\[0\]: Input should be greater than or equal to"),
    ("files.image_encoder.onnx", None, None),  # replaced below: the byte count as a string
    ("models.image_encoder.inputs", [], "models.image_encoder.inputs: List should have at least 1 item"),
    ("preprocessing.normalize", "in_graph", "preprocessing.normalize: Input should be 'runtime'"),
    ("generator", {"points_per_side": 100000}, "generator.points_per_side: Input should be less than"),
    ("generator", {"no_such_option": 1}, "generator.no_such_option: Extra inputs are not permitted"),
    ("runtime", {"decoder_x": {"backend": "openvino"}}, "runtime.decoder_x: no model of that name"),
    ("family", "SAM 2", "family: 'SAM 2' is not a valid model family"),
    ("image_size", 10**9, "image_size: Input should be less than or equal to 8192"),
]


@pytest.mark.parametrize(
    ("field", "value", "message"), MALFORMED, ids=[f"{f}={v!r}"[:40] for f, v, _ in MALFORMED]
)
def test_malformed_manifest_names_the_field(package_copy, field, value, message) -> None:
    if field == "files.image_encoder.onnx":

        def edit(manifest: dict) -> None:
            info = manifest["files"][ENCODER_FILE]
            info["bytes"] = str(info["bytes"])

        message = r"files\['image_encoder.onnx'\].bytes: Input should be a valid integer"
    else:
        edit = _set(field, value)
    refused(package_copy(edit), message)


def test_malformed_manifest_through_a_command(package_copy, capsys, tmp_path) -> None:
    package = package_copy(_set("pixel_std", [0, 1, 1]))
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (20, 10)).save(image)
    code, _, err = run_cli(capsys, "segment", image, "-p", "5,5", "-m", package, "-o", tmp_path / "m.png")
    assert code == 2 and "pixel_std[0]" in err and "Traceback" not in err
    assert not (tmp_path / "m.png").exists()


def test_nan_and_oversized_manifests(package_copy) -> None:
    package = package_copy()
    text = (package / "model.json").read_text()
    (package / "model.json").write_text(text.replace("58.395", "NaN", 1))
    refused(package, "NaN is not a number JSON allows")
    (package / "model.json").write_text(text + " " * (16 * 2**20))
    refused(package, "model.json size: .* is over the limit")


def test_other_families_load_as_packages_but_do_not_run(package_copy) -> None:
    package = package_copy(_set("family", "sam3"))
    assert ModelPackage.load(package).family == "sam3"
    with pytest.raises(PackageError, match="holds a 'sam3' model; this samdeploy runs 'sam', 'sam2.1' and"):
        load_model(package)


def test_a_sam_package_labelled_sam2_is_refused(package_copy) -> None:
    # SAM 2.x packages run SAM 2's pre-processing: SAM's (padding) under a SAM 2 label is refused.
    with pytest.raises(PackageError, match="preprocessing: not the pre-processing of a 'sam2.1' package"):
        ModelPackage.load(package_copy(_set("family", "sam2.1")))


def test_generator_settings_are_read(package_copy) -> None:
    settings = {"points_per_side": 16, "pred_iou_thresh": 0.7, "crop_n_layers": 1}
    package = ModelPackage.load(package_copy(_set("generator", settings)))
    assert package.generator == settings


def test_every_shipped_manifest_field_is_accepted() -> None:
    package = ModelPackage.load(DEFAULT_MODEL, verify=True)
    assert package.family == "sam" and package.paths
    assert all(path.is_relative_to(DEFAULT_MODEL.resolve()) for path in package.paths.values())
    assert sha256_file(package.encoder_path) == package.manifest["files"][ENCODER_FILE]["sha256"]


def test_a_package_of_nan_weights_is_refused_at_the_first_prediction(package_copy) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from samdeploy import SamPredictor
    from samdeploy.package import describe_files, write_manifest

    package = package_copy()
    manifest = json.loads((package / "model.json").read_text())
    for role in [role for role in manifest["models"] if role != "image_encoder"]:  # every decoder
        path = package / manifest["models"][role]["file"]
        model = onnx.load(str(path))
        for tensor in model.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.dtype.kind == "f" and array.size > 1000:
                tensor.CopyFrom(numpy_helper.from_array(np.full_like(array, np.nan), tensor.name))
        onnx.save(model, str(path))
    manifest["files"] = describe_files(package, list(manifest["files"]))  # checksums of the NaN files
    write_manifest(package, manifest)
    with load_model(package) as model:
        predictor = SamPredictor(model)
        predictor.set_image(np.full((20, 30, 3), 90, np.uint8))
        with pytest.raises(
            PackageError, match="gave NaN or infinite scores or logits: its weights are broken"
        ):
            predictor.predict(np.array([[5.0, 5.0]]), np.array([1]))


def test_a_manifest_holding_nan_is_never_written(tmp_path) -> None:
    # Why: the JSON standard has no NaN, and a NaN validation figure would read as a pass; every
    # writer (both families' exports, the precision options) goes through write_manifest.
    from samdeploy.package import write_manifest

    with pytest.raises(PackageError, match="NaN or infinite"):
        write_manifest(tmp_path, {"export": {"validation": {"worst": {"embeddings_rel": float("nan")}}}})
    assert not (tmp_path / "model.json").exists()


# -- exact behaviour of the package's parts (each test kills changes mutation testing found unnoticed) --


def _message(path: Path) -> str:
    with pytest.raises(PackageError) as caught:
        ModelPackage.load(path)
    return str(caught.value)


def test_tensor_specs_round_trip_through_json() -> None:
    """The manifest's tensor entries read into TensorSpec and write back unchanged (the exporter writes them)."""
    data = {"name": "point_coords", "shape": [1, "num_points", 2], "dtype": "float32"}
    spec = TensorSpec.from_json(data)
    assert spec == TensorSpec("point_coords", (1, "num_points", 2), "float32")
    assert spec.to_json() == data


def test_model_entries_and_runtime_are_read(package_copy) -> None:
    """model(role) gives the file and both tensor lists; runtime(role) the package's wish for that role."""
    folder = package_copy(_set("runtime", {"image_encoder": {"backend": "openvino"}}))
    package = ModelPackage.load(folder)
    assert package.root == folder  # as given: messages and `inspect` show the user's own path
    entry = package.model("image_encoder")
    assert entry.file == ENCODER_FILE
    assert [spec.name for spec in entry.outputs] == [
        t["name"] for t in package.manifest["models"]["image_encoder"]["outputs"]
    ]
    assert all(isinstance(spec, TensorSpec) for spec in entry.inputs + entry.outputs)
    assert package.runtime("image_encoder") == {"backend": "openvino"}
    assert package.runtime("mask_decoder") == {}


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    """SAMDEPLOY_CACHE_DIR, else $XDG_CACHE_HOME/samdeploy, else ~/.cache/samdeploy (the XDG convention)."""
    monkeypatch.setenv("SAMDEPLOY_CACHE_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert package_module.cache_dir() == tmp_path / "own"
    monkeypatch.delenv("SAMDEPLOY_CACHE_DIR")
    assert package_module.cache_dir() == tmp_path / "xdg" / "samdeploy"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert package_module.cache_dir() == tmp_path / "home" / ".cache" / "samdeploy"


def test_manifest_is_written_readable_in_the_given_order(tmp_path) -> None:
    """model.json is indented by 2, keeps the exporter's key order (not sorted) and ends with a newline."""
    path = package_module.write_manifest(tmp_path, {"format": "x", "b": [1], "a": 2})
    assert path == tmp_path / "model.json"
    assert path.read_text() == '{\n  "format": "x",\n  "b": [\n    1\n  ],\n  "a": 2\n}\n'


def test_checksum_cache_persists_evicts_and_clears(monkeypatch, tmp_path) -> None:
    """Digests survive the process (a new cache reads the file), only the newest MAX_ENTRIES are kept, no
    staging file is left behind, and clear() forgets them on disk too, also when nothing is stored."""
    folder = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv("SAMDEPLOY_CACHE_DIR", str(folder))
    monkeypatch.setattr(ChecksumCache, "MAX_ENTRIES", 2)
    first = ChecksumCache()
    for key in "abc":
        first.put(key, key * 64)
    first.put("b", "d" * 64)  # a key put again becomes the newest
    assert sorted(p.name for p in folder.iterdir()) == ["checksums.json"]
    second = ChecksumCache()
    assert (second.get("a"), second.get("b"), second.get("c")) == (None, "d" * 64, "c" * 64)
    second.put("e", "e" * 64)
    assert (second.get("c"), second.get("b")) == (None, "d" * 64)
    second.clear()
    assert not (folder / "checksums.json").exists() and second.get("b") is None
    second.clear()  # nothing on disk: still fine
    assert ChecksumCache().get("e") is None


def test_checksum_cache_ignores_malformed_entries(monkeypatch, tmp_path) -> None:
    """Entries of a damaged or foreign checksums.json (not a string, not a 64-digit digest) are dropped."""
    monkeypatch.setenv("SAMDEPLOY_CACHE_DIR", str(tmp_path))
    good = "f" * 64
    stored = {"good": good, "short": "f" * 63, "number": 5, "list": [good]}
    (tmp_path / "checksums.json").write_text(json.dumps(stored))
    cache = ChecksumCache()
    assert [cache.get(key) for key in stored] == [good, None, None, None]
    # The file is read once per cache folder: a later change on disk is not merged in again.
    (tmp_path / "checksums.json").write_text(json.dumps({"late": good}))
    assert cache.get("late") is None


def test_open_regular_refuses_with_a_clear_message(tmp_path) -> None:
    """A missing path or a folder is a PackageError naming it and the reason; a file opens non-blocking (a FIFO
    swapped in after the check could otherwise hang the reader)."""
    import fcntl

    missing = tmp_path / "missing.onnx"
    with pytest.raises(PackageError) as caught:
        package_module.open_regular(missing)
    assert str(caught.value) == f"cannot read {missing}: No such file or directory"
    with pytest.raises(PackageError) as caught:
        package_module.open_regular(tmp_path)
    assert str(caught.value) == f"{tmp_path} is not a regular file (a FIFO, device or folder)"
    (tmp_path / "a").write_bytes(b"x" * 10)
    fd = package_module.open_regular(tmp_path / "a")
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        os.close(fd)


def test_load_messages_say_what_is_wrong(package_copy, tmp_path) -> None:
    """Each refusal of ModelPackage.load is one sentence naming the path and what to do."""
    assert _message(tmp_path / "nothing") == f"model package not found: {tmp_path / 'nothing'}"
    (tmp_path / "file").write_text("x")
    assert (
        _message(tmp_path / "file") == f"model package must be a folder with model.json: {tmp_path / 'file'}"
    )
    (tmp_path / "empty").mkdir()
    assert (
        _message(tmp_path / "empty") == f"not a samdeploy model package (no model.json): {tmp_path / 'empty'}"
    )
    package = package_copy(_set("format", "other"))
    assert (
        _message(package)
        == f"not a samdeploy model package ({package / 'model.json'} has no format 'samdeploy-model')"
    )
    package = package_copy(_set("format_version", 99), name="newer")
    assert _message(package).endswith(
        "has format version 99; this samdeploy reads up to 1: upgrade samdeploy"
    )
    (package / "model.json").write_bytes(b'{"format": "\xff"}')
    assert _message(package).startswith(f"corrupt {package / 'model.json'}: 'utf-8' codec can't decode")
    (package / "model.json").write_text("{" + " " * 16 * 2**20 + "}")
    assert _message(package).startswith(f"{package / 'model.json'} size: ")


def test_a_format_version_that_is_a_boolean_is_a_schema_error(package_copy) -> None:
    """true is not a version (bool is an int in Python): the schema refuses it, not the version check."""
    assert "format_version" in _message(package_copy(_set("format_version", True)))


def test_a_listed_file_that_is_missing_or_resized(package_copy) -> None:
    """A listed file gone or of another size than listed: PackageError naming it, at load and at verify."""
    package = package_copy()
    (package / ENCODER_FILE).unlink()
    assert _message(package) == f"model package {package.resolve()} is missing {ENCODER_FILE}"
    package = package_copy(name="resized")
    loaded = ModelPackage.load(package)
    listed = loaded.manifest["files"][ENCODER_FILE]["bytes"]
    with open(package / ENCODER_FILE, "ab") as handle:
        handle.write(b"\0")
    assert _message(package) == (
        f"model package {package.resolve()}: {ENCODER_FILE} has {listed + 1} bytes, the manifest says {listed}"
        " (corrupt or replaced file; export the package again)"
    )
    with pytest.raises(PackageError) as caught:
        loaded.verify()
    assert str(caught.value) == (
        f"{loaded.paths[ENCODER_FILE]} has {listed + 1} bytes, the manifest says {listed}"
        " (corrupt or replaced file; export the package again)"
    )


def test_a_modified_file_fails_verify_with_the_advice(package_copy) -> None:
    """Same size, other bytes: the checksum mismatch names the file and says to export again."""
    package = package_copy()
    loaded = ModelPackage.load(package)
    data = bytearray((package / ENCODER_FILE).read_bytes())
    data[-1] ^= 0xFF
    (package / ENCODER_FILE).write_bytes(bytes(data))
    with pytest.raises(PackageError) as caught:
        loaded.verify()
    assert str(caught.value) == (
        f"checksum mismatch for {loaded.paths[ENCODER_FILE]}: the file is corrupt or was modified"
        " (export the package again)"
    )


def test_verify_returns_every_digest_and_caches_by_the_file(package_copy) -> None:
    """verify() returns each file's sha256; the cache is keyed by the file's path and identity."""
    loaded = ModelPackage.load(package_copy())
    digests = loaded.verify(cache=True)
    assert digests == {name: info["sha256"] for name, info in loaded.manifest["files"].items()}
    path = loaded.paths[ENCODER_FILE]
    key = ChecksumCache.key(path, os.stat(path))
    assert key.startswith(f"{path}|") and package_module.CHECKSUMS.get(key) == digests[ENCODER_FILE]


def test_a_package_built_without_resolved_paths_resolves_them(package_copy, tmp_path) -> None:
    """A ModelPackage made from its fields (no paths) finds its files itself, with the same checks as load."""
    package = package_copy()
    manifest = json.loads((package / "model.json").read_text())
    bare = ModelPackage(root=package, manifest=manifest)
    assert bare.encoder_path == (package / ENCODER_FILE).resolve()
    assert bare.verify() == {name: info["sha256"] for name, info in manifest["files"].items()}
    (tmp_path / "outside.onnx").write_bytes((package / ENCODER_FILE).read_bytes())
    (package / ENCODER_FILE).unlink()
    (package / ENCODER_FILE).symlink_to(tmp_path / "outside.onnx")
    with pytest.raises(
        PackageError, match=f"^model package {package.resolve()}: file {ENCODER_FILE} leads outside"
    ):
        bare.model_path("image_encoder")
    with pytest.raises(
        PackageError, match=f"file {ENCODER_FILE} leads outside .*; a package may use only its own files$"
    ):
        bare.verify()


def test_a_broken_symlink_in_the_folder_is_refused(package_copy) -> None:
    """A dangling symlink is refused by name (it would resolve later to whatever is created there)."""
    package = package_copy()
    (package / "extra.data").symlink_to(package / "not-there")
    assert _message(package) == f"model package {package}: extra.data is a broken or looping symlink"


def test_folder_entry_limit_counts_every_entry(package_copy, monkeypatch) -> None:
    """The limit on a package folder's entries admits exactly its number and refuses one more."""
    package = package_copy()
    (package / "sub").mkdir()
    (package / "sub" / "note.txt").write_text("x")
    entries = sum(len(dirs) + len(files) for _, dirs, files in os.walk(package))
    monkeypatch.setattr(package_module, "MAX_FOLDER_ENTRIES", entries)
    ModelPackage.load(package)
    monkeypatch.setattr(package_module, "MAX_FOLDER_ENTRIES", entries - 1)
    assert _message(package) == f"model package {package} holds more than {entries - 1:,} files"
