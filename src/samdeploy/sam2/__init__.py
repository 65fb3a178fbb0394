"""SAM 2.x (SAM 2.1 image models) as an application of the engine, beside :mod:`samdeploy.sam`.

transforms (square resize, [0, 1] normalisation, direct upscale, mask-token selection), nodes,
graphs, model (:class:`~samdeploy.sam2.model.Sam2Model`), predictor
(:class:`~samdeploy.sam2.predictor.SAM2ImagePredictor`) and automatic
(:class:`~samdeploy.sam2.automatic.SAM2AutomaticMaskGenerator`). Prompts, RLE, the AMG arithmetic,
the embedding cache and the engine are shared with SAM 1.
"""
