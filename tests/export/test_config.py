"""SamConfig presets, building the official model, and detecting the config from tensor shapes."""

from __future__ import annotations

import pytest
import torch

from samdeploy.errors import CheckpointError
from samdeploy.export import PRESETS, SamConfig, build_sam, detect_config, preset_name, resolve_config


def _meta_state(config: SamConfig) -> dict[str, torch.Tensor]:
    """A state dict with the right shapes and no memory behind it."""
    with torch.device("meta"):
        return build_sam(config).state_dict()


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_detects_official_presets_from_shapes(name):
    state = _meta_state(PRESETS[name])
    config = detect_config(state)
    assert config == PRESETS[name]
    assert preset_name(config) == name
    assert resolve_config(state, "auto") == PRESETS[name]
    assert resolve_config(state, name) == PRESETS[name]


def test_official_builders_agree_with_presets():
    from segment_anything import sam_model_registry

    for name, config in PRESETS.items():
        with torch.device("meta"):
            official = sam_model_registry[name]().state_dict()
        ours = _meta_state(config)
        assert {k: tuple(v.shape) for k, v in official.items()} == {
            k: tuple(v.shape) for k, v in ours.items()
        }


@pytest.mark.parametrize(
    "config",
    [
        SamConfig(64, 2, 2, (1,), image_size=256, window_size=7),
        SamConfig(96, 4, 3, (1, 3), image_size=512, window_size=8, mlp_ratio=2.0),
        SamConfig(32, 3, 1, (0, 1, 2), image_size=128, patch_size=8),
        SamConfig(
            48,
            2,
            4,
            (),
            image_size=192,
            window_size=5,
            prompt_embed_dim=128,
            mask_in_chans=8,
            decoder_depth=1,
            decoder_mlp_dim=256,
            decoder_attention_downsample_rate=4,
            num_multimask_outputs=2,
            iou_head_depth=2,
            iou_head_hidden_dim=64,
        ),
    ],
    ids=["tiny", "512px", "all-global", "custom-decoder"],
)
def test_detects_custom_configs(config):
    assert detect_config(_meta_state(config)) == config
    assert preset_name(config) == "custom"


@pytest.mark.parametrize(("actual", "claimed"), [("vit_b", "vit_l"), ("vit_l", "vit_h"), ("vit_h", "vit_b")])
def test_wrong_model_type_is_one_line_error(actual, claimed):
    with pytest.raises(CheckpointError, match=f"checkpoint is {actual} .*not {claimed}") as info:
        resolve_config(_meta_state(PRESETS[actual]), claimed)
    assert "\n" not in str(info.value)


def test_unknown_model_type():
    with pytest.raises(CheckpointError, match="unknown model type 'vit_x'"):
        resolve_config(_meta_state(PRESETS["vit_b"]), "vit_x")


def test_config_json_round_trip():
    config = SamConfig(96, 4, 3, (1, 3), image_size=512, window_size=8)
    assert SamConfig.from_json(config.to_json()) == config
    with pytest.raises(CheckpointError, match="unknown SAM config keys: colour"):
        SamConfig.from_json({**config.to_json(), "colour": 1})


def test_missing_tensor_is_not_sam():
    state = _meta_state(PRESETS["vit_b"])
    del state["image_encoder.pos_embed"]
    with pytest.raises(
        CheckpointError, match="not a SAM checkpoint: the state dict has no 'image_encoder.pos_embed'"
    ):
        detect_config(state)
