"""Shared fixtures: seeded random-weight SAM models and the packages exported from them.

* ``tiny_sam_config``: a small custom config of the official architecture (ViT 64x2, 2 heads, one
  global block, window 7 over a 16x16 grid so window padding runs, 256 px input; official decoder).
* ``tiny_sam``: the torch ``Sam`` for it with seeded random weights, eval mode.
* ``tiny_checkpoint``: its state dict saved as ``.pth``.
* ``tiny_package``: the validated package exported from ``tiny_checkpoint``.
* ``vit_b_sam`` / ``vit_b_checkpoint`` / ``vit_b_package``: the same for a full-size random vit_b
  (exported once per test run, shared by xdist workers through a file lock).

``tiny_sam`` and ``vit_b_sam`` are loaded from the very checkpoint their package was exported from,
so torch and ONNX always hold identical weights. Tests must not modify them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

TINY_SEED = 0
VIT_B_SEED = 1


def pytest_configure(config: pytest.Config) -> None:
    """Keep the package checksum cache of this run (and of the commands it starts) out of the user's own."""
    os.environ.setdefault("SAMDEPLOY_CACHE_DIR", tempfile.mkdtemp(prefix="samdeploy-test-cache-"))


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by all xdist workers of this run (the run's own temp folder otherwise).

    ``SAMDEPLOY_TEST_FIXTURES=DIR`` keeps the exported models in DIR across runs instead: for tools
    that start one pytest session per try (mutation testing). Delete DIR after changing export code.
    """
    kept = os.environ.get("SAMDEPLOY_TEST_FIXTURES")
    if kept:
        shared = Path(kept)
        shared.mkdir(parents=True, exist_ok=True)
        return shared
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    shared = root / "samdeploy-fixtures"
    shared.mkdir(exist_ok=True)
    return shared


def _build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """Run ``build(folder)`` once per test run (across workers) and return the folder."""
    from filelock import FileLock

    shared = _shared_dir(tmp_path_factory)
    folder = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not (folder / ".complete").exists():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / ".complete").touch()
    return folder


def _model_artifacts(tmp_path_factory: pytest.TempPathFactory, name: str, config, seed: int) -> Path:
    """Folder with ``checkpoint.pth`` and the exported, validated ``package/``."""

    def build(folder: Path) -> None:
        import torch

        from samdeploy.export import export_model, random_sam

        torch.save(random_sam(config, seed).state_dict(), folder / "checkpoint.pth")
        export_model(folder / "checkpoint.pth", folder / "package", force=True)

    return _build_once(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def tiny_sam_config():
    from samdeploy.export import SamConfig

    return SamConfig(
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=256,
        window_size=7,
    )


@pytest.fixture(scope="session")
def _tiny_artifacts(tmp_path_factory, tiny_sam_config) -> Path:
    return _model_artifacts(tmp_path_factory, "tiny", tiny_sam_config, TINY_SEED)


@pytest.fixture(scope="session")
def tiny_checkpoint(_tiny_artifacts) -> Path:
    return _tiny_artifacts / "checkpoint.pth"


@pytest.fixture(scope="session")
def tiny_package(_tiny_artifacts) -> Path:
    return _tiny_artifacts / "package"


@pytest.fixture(scope="session")
def tiny_sam(tiny_sam_config, tiny_checkpoint):
    from samdeploy.export import load_sam, load_state_dict

    return load_sam(load_state_dict(tiny_checkpoint), tiny_sam_config)


@pytest.fixture(scope="session")
def _vit_b_artifacts(tmp_path_factory) -> Path:
    from samdeploy.export import PRESETS

    return _model_artifacts(tmp_path_factory, "vit_b", PRESETS["vit_b"], VIT_B_SEED)


@pytest.fixture(scope="session")
def vit_b_checkpoint(_vit_b_artifacts) -> Path:
    return _vit_b_artifacts / "checkpoint.pth"


@pytest.fixture(scope="session")
def vit_b_package(_vit_b_artifacts) -> Path:
    return _vit_b_artifacts / "package"


@pytest.fixture(scope="session")
def vit_b_sam(vit_b_checkpoint):
    from samdeploy.export import PRESETS, load_sam, load_state_dict

    return load_sam(load_state_dict(vit_b_checkpoint), PRESETS["vit_b"])


@pytest.fixture(scope="session")
def build_once(tmp_path_factory) -> Callable[[str, Callable[[Path], None]], Path]:
    """``build_once(name, build)``: run ``build(folder)`` once per test run (across xdist workers)
    and return the folder; for fixtures of other test folders (e.g. the SAM 2 packages)."""
    return lambda name, build: _build_once(tmp_path_factory, name, build)


@pytest.fixture
def package_without(tmp_path) -> Callable[..., Path]:
    """``package_without(package, *roles)``: a copy of ``package`` whose manifest and folder lack the
    models ``roles``, as a package exported by an earlier version that had no such graphs."""
    import json
    import shutil

    def copy(package: Path, *roles: str) -> Path:
        old = tmp_path / "old"
        shutil.copytree(package, old)
        manifest = json.loads((old / "model.json").read_text())
        for role in roles:
            file = manifest["models"].pop(role)["file"]
            del manifest["files"][file]
            (old / file).unlink()
        (old / "model.json").write_text(json.dumps(manifest))
        return old

    return copy
