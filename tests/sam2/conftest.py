"""SAM 2.1 fixtures: a small custom config of the official architecture with seeded random weights,
its checkpoint, the validated package exported from it, and the official predictor on the same weights.

``sam2.1_hiera_test.yaml`` (beside this file): Hiera 16 wide with blocks [1, 1, 2, 1], 64 channels,
256 px input (16x16 embedding, 64x64 low-res masks), high-resolution features and the object-score
head as in SAM 2.1. ``sam2_model`` is loaded from the very checkpoint its package was exported from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SAM2_TEST_CONFIG = Path(__file__).with_name("sam2.1_hiera_test.yaml")
SAM2_SEED = 0


@pytest.fixture(scope="session")
def sam2_config():
    pytest.importorskip("sam2")
    from samdeploy.export.sam2 import Sam2Config

    return Sam2Config.from_yaml(SAM2_TEST_CONFIG)


@pytest.fixture(scope="session")
def _sam2_artifacts(build_once, sam2_config) -> Path:
    def build(folder: Path) -> None:
        import torch

        from samdeploy.export import export_model
        from samdeploy.export.sam2 import random_sam2

        torch.save({"model": random_sam2(sam2_config, SAM2_SEED).state_dict()}, folder / "checkpoint.pt")
        export_model(folder / "checkpoint.pt", folder / "package", config=SAM2_TEST_CONFIG, force=True)

    return build_once("sam2_small", build)


@pytest.fixture(scope="session")
def sam2_checkpoint(_sam2_artifacts) -> Path:
    return _sam2_artifacts / "checkpoint.pt"


@pytest.fixture(scope="session")
def sam2_package(_sam2_artifacts) -> Path:
    return _sam2_artifacts / "package"


@pytest.fixture(scope="session")
def sam2_model(sam2_config, sam2_checkpoint):
    """The official ``SAM2Base`` holding the package's weights."""
    from samdeploy.export import load_state_dict
    from samdeploy.export.sam2 import load_sam2

    return load_sam2(load_state_dict(sam2_checkpoint), sam2_config)


@pytest.fixture(scope="session")
def official_predictor(sam2_model):
    """The official ``SAM2ImagePredictor`` on ``sam2_model`` (feature sizes of its 256 px input)."""
    from samdeploy.export.sam2 import official_predictor

    return official_predictor(sam2_model)


@pytest.fixture
def without_prepared_pair(tmp_path):
    """``strip(package) -> copy``: a copy of a package as exports before the decoder was cut in two
    wrote it (no ``mask_decoder_image`` / ``mask_decoder_prepared``)."""
    import json
    import shutil

    from samdeploy.package import IMAGE_SIDE, PREPARED_DECODER, write_manifest

    def strip(package: Path) -> Path:
        copy = tmp_path / f"{package.parent.name}-before-the-cut"
        shutil.copytree(package, copy)
        manifest = json.loads((copy / "model.json").read_text())
        for role in (IMAGE_SIDE, PREPARED_DECODER):
            file = manifest["models"].pop(role)["file"]
            del manifest["files"][file]
            (copy / file).unlink()
        write_manifest(copy, manifest)
        return copy

    return strip


@pytest.fixture
def count_runs(monkeypatch):
    """``count(node) -> runs``: a list that grows by one each time the Inference ``node``'s model runs."""

    def count(node) -> list:
        node.ensure_setup()
        runs: list = []
        real_run = node._backend.run
        monkeypatch.setattr(
            node._backend, "run", lambda feeds, outputs=None: runs.append(1) or real_run(feeds, outputs)
        )
        return runs

    return count
