"""ONNX import and export (the optional ``onnx`` extra: ``pip install -e '.[onnx]'``).

* ``import_onnx(model)``: an ONNX file, bytes or ``ModelProto`` -> ``OnnxModel`` (an irgraph
  ``Graph`` whose parameters are the initializers, the weights, and ``compile``).
* ``export_onnx(graph, weights)``: an irgraph inference graph -> ``ModelProto``.
* ``backend.py``: an ``onnx.backend.base.Backend`` over the irgraph backends (conformance).

docs/onnx.md lists the operators, what is refused and why.
"""
from .errors import OnnxExportError, OnnxImportError
from .importer import OnnxModel, import_onnx

__all__ = ["import_onnx", "OnnxModel", "OnnxImportError", "export_onnx", "OnnxExportError"]


def export_onnx(*args, **kwargs):
    """See ``frontend.onnx.export.export_onnx``."""
    from .export import export_onnx as _export
    return _export(*args, **kwargs)
