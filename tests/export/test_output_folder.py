"""What an export may delete: only the files of the package it replaces, never its input, never
other files; and the partial folders of exports that were killed are cleaned on the next run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samdeploy.cli import main
from samdeploy.errors import ExportError
from samdeploy.export import export_model
from samdeploy.package import ModelPackage

DEFAULT_PACKAGE = Path(__file__).parents[2] / "src" / "samdeploy" / "models" / "default"


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_force_replaces_only_the_package_files(tmp_path, tiny_checkpoint, tiny_package):
    # --force used to delete the whole folder: unrelated files and the user's checkpoint with it.
    out = tmp_path / "pkg"
    shutil.copytree(tiny_package, out)
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()
    (out / "runs" / "log.txt").write_text("mine too")
    # The old package had a file the new one does not write: it goes, as the package's own.
    (out / "image_encoder.onnx.data").write_bytes(b"old weights")
    manifest = json.loads((out / "model.json").read_text())
    manifest["files"]["image_encoder.onnx.data"] = {"bytes": 11, "sha256": "0" * 64}
    (out / "model.json").write_text(json.dumps(manifest))

    export_model(tiny_checkpoint, out, validate=False, simplify="none", force=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "runs" / "log.txt").read_text() == "mine too"
    assert not (out / "image_encoder.onnx.data").exists()
    package = ModelPackage.load(out, verify=True)
    assert package.export_report["simplify"] == "none"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "runs", "model.json", *package.manifest["files"]]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_force_never_deletes_what_a_manifest_names_outside_the_folder(
    tmp_path, tiny_checkpoint, tiny_package
):
    # An old manifest is untrusted input: names that leave the folder, or links, are never deleted.
    out = tmp_path / "pkg"
    shutil.copytree(tiny_package, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / "link.onnx").symlink_to(victim)
    manifest = json.loads((out / "model.json").read_text())
    for name in ("../victim.txt", str(victim), "link.onnx"):
        manifest["files"][name] = {"bytes": 4, "sha256": "0" * 64}
    (out / "model.json").write_text(json.dumps(manifest))
    try:
        export_model(tiny_checkpoint, out, validate=False, simplify="none", force=True)
    except ExportError as exc:  # a package loader that refuses such a manifest is fine too
        assert "not a samdeploy model package" in str(exc)
    assert victim.read_text() == "keep"
    assert (out / "link.onnx").is_symlink()


def test_output_holding_the_input_checkpoint_is_refused(tmp_path, capsys):
    # The default package keeps checkpoint.pth in its folder: re-exporting it in place, with
    # --force, must refuse rather than risk the only copy of the weights.
    out = tmp_path / "default"
    shutil.copytree(DEFAULT_PACKAGE, out)
    checkpoint = out / "checkpoint.pth"
    before = checkpoint.read_bytes()
    with pytest.raises(ExportError, match="holds the input checkpoint"):
        export_model(checkpoint, out, force=True)
    code = main(["export", str(checkpoint), "-o", str(out), "--force"])
    stderr = capsys.readouterr().err
    assert code == 2 and "holds the input checkpoint" in stderr and "Traceback" not in stderr
    code = main(["export", str(checkpoint), "-o", str(out), "--force", "--precision", "int8"])
    assert code == 2 and "holds the input checkpoint" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in DEFAULT_PACKAGE.iterdir())
    assert _partials(tmp_path) == []


def test_a_live_export_s_partial_folder_is_left_alone(tmp_path, tiny_checkpoint):
    # Two exports of the same target at once must not delete each other's work; a dead one's
    # partial (its process gone) is removed.
    live = tmp_path / ".pkg.partial-live0000"
    live.mkdir()
    (live / ".owner").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    dead = tmp_path / ".pkg.partial-dead0000"
    dead.mkdir()
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    (dead / ".owner").write_text(f"{socket.gethostname()} {dead_pid.pid}\n")
    (dead / "image_encoder.onnx").write_bytes(b"x" * 1000)
    export_model(tiny_checkpoint, tmp_path / "pkg", validate=False, simplify="none")
    assert _partials(tmp_path) == [live.name]


def test_a_sigkilled_export_s_partial_folder_is_removed_by_the_next(tmp_path, tiny_checkpoint, capsys):
    # SIGKILL cannot be caught: the killed export leaves its hidden partial folder (gigabytes for
    # vit_h); the next export of the same target removes it and says so.
    process = subprocess.Popen(
        [sys.executable, "-m", "samdeploy", "export", str(tiny_checkpoint), "-o", str(tmp_path / "pkg")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        # Wait until it has written a traced graph into the partial folder.
        while not list(tmp_path.glob(".pkg.partial-*/.work/*/*.onnx")):
            assert process.poll() is None, "export ended before it was killed"
            assert time.monotonic() < deadline, "export never started writing"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    stale = _partials(tmp_path)
    assert len(stale) == 1
    code = main(
        ["export", str(tiny_checkpoint), "-o", str(tmp_path / "pkg"), "--no-validate", "--simplify", "none"]
    )
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    assert f"removed {stale[0]}" in stderr and "interrupted export" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    ModelPackage.load(tmp_path / "pkg", verify=True)


@pytest.mark.parametrize("where", [".owner", ".work"])
def test_an_interrupt_right_after_the_partial_folder_appears_removes_it(
    tmp_path, tiny_checkpoint, monkeypatch, where
):
    # Why: CI once found the partial folder left after a SIGTERM that landed between the folder's
    # creation and the export's clean-up `try` (the owner file and the `.work` folder came between).
    # Here the interrupt lands at each of those two steps, every time.
    real_write_text, real_mkdir = Path.write_text, Path.mkdir

    def interrupted(step):
        def call(self, *args, **kwargs):
            if self.name == where and ".partial-" in self.parent.name:
                raise KeyboardInterrupt
            return step(self, *args, **kwargs)

        return call

    monkeypatch.setattr(Path, "write_text", interrupted(real_write_text))
    monkeypatch.setattr(Path, "mkdir", interrupted(real_mkdir))
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_checkpoint, tmp_path / "pkg", validate=False, simplify="none")
    assert list(tmp_path.iterdir()) == []
