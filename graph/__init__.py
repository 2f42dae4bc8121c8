"""The graph floor: one ONNX graph view, one ncnn .param reader, the cost model and the ONNX → ONNX passes.
Pure functions from graph to graph or to numbers; imports only the ground floor (core)."""
