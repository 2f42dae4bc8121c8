"""ONNX Runtime: the simplified, checked ONNX graph every other target converts from is an artifact too,
run in ONNX Runtime for parity and host timing."""
from __future__ import annotations

from importlib import metadata

import numpy as np

from core.artifact import VALIDATION_THREADS, Artifact, ConversionJob, OnnxModel, OutputsRunner, TensorSpec, run_in_chunks
from core.errors import ConverterError
from core.target import Target


class OnnxRuntimeTarget(Target):
    name = "onnx"
    display_name = "ONNX Runtime"
    platforms = ()  # every export holds it, whatever its platform
    profile_runtime = "onnxruntime"
    interchange = True
    reproducible_precisions = frozenset({"fp32"})  # measured on 2026-11-23, two exports
    runtime_package = "onnxruntime"
    runtime_module = "onnxruntime"

    def convert(self, job: ConversionJob) -> list[Artifact]:
        """Nothing to convert: the job's ONNX file is the artifact."""
        return [onnx_artifact(job.onnx, self.runtime)]

    def load(self, artifact: Artifact):
        return OnnxRuntimeRunner(onnx_model_of(artifact))

    def interchange_artifact(self, onnx_model: OnnxModel) -> Artifact:
        return onnx_artifact(onnx_model, self.runtime)

    def tool_versions(self) -> dict[str, str]:
        return {"onnxruntime": metadata.version("onnxruntime")}

    def timing_runner(self, artifact: Artifact, threads: int):
        runner = OnnxRuntimeRunner(onnx_model_of(artifact), threads=threads)
        return runner, {"provider": "CPUExecutionProvider", "intra_op_num_threads": threads,
                        "graph_optimization_level": "ORT_ENABLE_ALL (default)"}


def onnx_artifact(onnx_model: OnnxModel, runtime: str = OnnxRuntimeTarget.name) -> Artifact:
    import onnx

    opsets = onnx.load(str(onnx_model.path), load_external_data=False).opset_import
    opset = next((entry.version for entry in opsets if entry.domain in ("", "ai.onnx")), None)
    return Artifact(path=onnx_model.path, runtime=runtime, precision="fp32",
                    details={"opset": opset, "input_name": onnx_model.input_name,
                             "input_shape": list(onnx_model.input_shape), "outputs": onnx_model.outputs_to_manifest(),
                             "layout": "NCHW"})


def onnx_model_of(artifact: Artifact) -> OnnxModel:
    details = artifact.details
    # Exports before several outputs were supported recorded one "output_name".
    outputs = details.get("outputs") or [{"name": details["output_name"], "shape": []}]
    return OnnxModel(artifact.path, details["input_name"], tuple(details["input_shape"]),
                     tuple(TensorSpec(output["name"], tuple(output["shape"])) for output in outputs))


class OnnxRuntimeRunner(OutputsRunner):
    def __init__(self, onnx_model: OnnxModel, threads: int = VALIDATION_THREADS):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(str(onnx_model.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise ConverterError(f"ONNX Runtime cannot load {onnx_model.path.name}: {error}",
                                 hint="the graph uses an op ONNX Runtime does not support") from None
        self._input_name = onnx_model.input_name
        self._output_names = [output.name for output in self._session.get_outputs()]
        self._batch = onnx_model.input_shape[0]

    def run_outputs(self, batch_nchw: np.ndarray) -> dict[str, np.ndarray]:
        def run_fixed_batch(chunk: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(self._output_names, self._session.run(self._output_names, {self._input_name: chunk})))

        return run_in_chunks(run_fixed_batch, batch_nchw, self._batch)
