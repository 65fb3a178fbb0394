"""The decoder's reassociated two-way transformer equals the official one.

Why: ``export/twoway.py`` regroups the attention products of every decoder graph samdeploy exports.
A wrong transpose, a dropped bias or a layer taking the wrong branch would change every mask; the
export's validation would refuse such a package, but only after minutes of export on a real
checkpoint. These tests compare the transformer alone, on SAM's own decoder size, for the shapes
the runtime uses: one image for all prompts or one per prompt (batched ``mask_input``), one point or
many (where the grouping does more arithmetic, but must still agree).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformer_module = pytest.importorskip("segment_anything.modeling.transformer")

from samdeploy.export.twoway import _softmax_over_tokens, two_way_transformer  # noqa: E402


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(0)
    model = transformer_module.TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048).eval()
    with torch.no_grad():  # the official init leaves biases at zero: a dropped bias must show
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize(
    ("prompts", "tokens", "image_batch"),
    [(1, 7, 1), (5, 7, 1), (3, 6, 3), (2, 20, 1), (2, 9, 2)],
    ids=["one-point", "prompt-batch", "batched-mask-input", "many-points", "batched-many"],
)
def test_matches_official_transformer(transformer, prompts, tokens, image_batch):
    generator = torch.Generator().manual_seed(prompts * 100 + tokens)
    image = torch.randn(image_batch, 256, 16, 16, generator=generator)
    pe = torch.randn(1, 256, 16, 16, generator=generator)
    points = torch.randn(prompts, tokens, 256, generator=generator)
    with torch.no_grad():
        # the official forward needs one image copy per prompt, as MaskDecoder.predict_masks makes
        expected_queries, expected_keys = transformer(
            image.expand(prompts, -1, -1, -1), pe.expand(prompts, -1, -1, -1), points
        )
        queries, keys = two_way_transformer(transformer, image, pe, points)
    assert queries.shape == expected_queries.shape and keys.shape == expected_keys.shape
    torch.testing.assert_close(queries, expected_queries, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(keys, expected_keys, rtol=1e-4, atol=2e-5)


def test_first_layer_without_positional_encoding(transformer):
    """SAM's first layer skips the PE in its self attention (``skip_first_layer_pe``); honoured as is."""
    assert transformer.layers[0].skip_first_layer_pe and not transformer.layers[1].skip_first_layer_pe
    generator = torch.Generator().manual_seed(7)
    image, pe = torch.randn(1, 256, 8, 8, generator=generator), torch.randn(1, 256, 8, 8, generator=generator)
    points = torch.randn(2, 7, 256, generator=generator)
    transformer.layers[0].skip_first_layer_pe = False
    try:
        with torch.no_grad():
            expected = transformer(image.expand(2, -1, -1, -1), pe.expand(2, -1, -1, -1), points)
            result = two_way_transformer(transformer, image, pe, points)
    finally:
        transformer.layers[0].skip_first_layer_pe = True
    torch.testing.assert_close(result[0], expected[0], rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(result[1], expected[1], rtol=1e-4, atol=2e-5)


def test_softmax_over_tokens_is_safe_for_large_scores():
    """The image -> tokens soft-max is spelled out over the token axis (dim 2 of BxhxTxN) for speed;
    it must equal the operator's, and stay finite where unshifted exponentials would overflow
    (scores of a few hundred occur with real checkpoints' unnormalised tokens)."""
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 8, 7, 64, generator=generator) * torch.tensor([1.0, 30.0, 1000.0]).repeat(22)[:64]
    probs = _softmax_over_tokens(scores)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs, torch.softmax(scores, dim=2), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(probs.sum(dim=2), torch.ones(2, 8, 64))
