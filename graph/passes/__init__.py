"""ONNX → ONNX passes, one file each: lean graph (layout work removed), range equalization, int8 weight rounding."""
