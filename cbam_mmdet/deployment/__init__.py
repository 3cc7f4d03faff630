"""ONNX export of CBAM backbones and detectors, checked against onnxruntime."""
from .graphs import (BackboneGraph, FeatureGraph, InputNormalizer, SSDDetectionGraph,
                     TwoStageDetectionGraph)
from .onnx_export import ExportError, export_onnx, onnx_session, run_onnx
from .parity import detection_differences, detections_match, relative_difference

__all__ = [
    'BackboneGraph', 'ExportError', 'FeatureGraph', 'InputNormalizer', 'SSDDetectionGraph',
    'TwoStageDetectionGraph',
    'detection_differences', 'detections_match', 'export_onnx', 'onnx_session',
    'relative_difference', 'run_onnx'
]
