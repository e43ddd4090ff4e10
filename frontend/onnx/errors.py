"""Errors of the ONNX importer and exporter: each names the node it is about."""
from __future__ import annotations


class OnnxImportError(ValueError):
    """An ONNX model the importer cannot translate exactly (unsupported operator, attribute
    value, data type, or a malformed node); the message names the node."""


class OnnxExportError(ValueError):
    """An irgraph graph with a node that has no ONNX equivalent; the message names it."""


def describe_node(node, index: int) -> str:
    """``node 3 'conv1' (Conv)``: how every importer message names an ONNX node."""
    name = f" '{node.name}'" if node.name else ""
    domain = f"{node.domain}." if node.domain and node.domain != "ai.onnx" else ""
    return f"node {index}{name} ({domain}{node.op_type})"


class ShapeInputError(OnnxImportError):
    """A graph input is used where the IR needs a value known at import time (a shape, axes,
    pads, slice bounds). ``input_name`` names it: pass its value in ``import_onnx(...,
    constants={name: value})`` to specialize the model on it."""

    def __init__(self, msg: str, input_name: str):
        super().__init__(msg)
        self.input_name = input_name
