"""The top floor: the CLI, the export spec and config, model sources and the zoo, the ONNX stage, the pipeline,
calibration photos, the conversion cache, publishing, and the bundle for app teams."""
