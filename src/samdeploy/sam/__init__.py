"""SAM as an application of the engine: transforms, prompts, the five nodes, the graph, the predictor.

The public names (``load_model``, ``SamModel``, ``SamPredictor``) are re-exported by :mod:`samdeploy`.
"""
