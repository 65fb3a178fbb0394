"""The deployment engine: graphs of nodes run by sequential, task or pipeline executors.

Model-agnostic: it knows nothing of SAM. See docs/engine.md and docs/engine-api.md.
"""

from samdeploy.engine.backends import Backend, available_backends, create_backend
from samdeploy.engine.executors import (
    Executor,
    ItemResult,
    PipelineExecutor,
    SequentialExecutor,
    TaskExecutor,
    make_executor,
)
from samdeploy.engine.graph import Graph, Plan
from samdeploy.engine.inference import Inference
from samdeploy.engine.node import Node, node_type, register_node, registered_node_types
from samdeploy.engine.profile import NodeStats, Profile

__all__ = [
    "Backend",
    "Executor",
    "Graph",
    "Inference",
    "ItemResult",
    "Node",
    "NodeStats",
    "PipelineExecutor",
    "Plan",
    "Profile",
    "SequentialExecutor",
    "TaskExecutor",
    "available_backends",
    "create_backend",
    "make_executor",
    "node_type",
    "register_node",
    "registered_node_types",
]
