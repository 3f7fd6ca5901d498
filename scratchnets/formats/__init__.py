"""Readers of published weight-file formats: each returns plain tensors plus what the file says
about the graph (``tflite``: TensorFlow Lite flatbuffers)."""

from .tflite import TFLiteError, TFLiteModel, read_tflite

__all__ = ["TFLiteError", "TFLiteModel", "read_tflite"]
