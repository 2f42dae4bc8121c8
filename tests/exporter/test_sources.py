import pytest
import torch

from core.errors import InputError
from exporter.sources import load_model, load_state_dict
from exporter.zoo.mobilenet_v2 import mobilenet_v2


def test_zoo_mobilenet_v2_loads_torchvision_imagenet_weights_and_labels():
    loaded = load_model("zoo:mobilenet_v2")
    assert loaded.weights.endswith("mobilenet_v2-b0353104.pth")
    assert len(loaded.labels) == 1000 and loaded.labels[281] == "tabby cat"
    assert sum(p.numel() for p in loaded.module.parameters()) == 3_504_872  # torchvision's figure


def test_state_dict_for_another_architecture_names_the_mismatch(tmp_path):
    weights = tmp_path / "half_width.pt"
    torch.save(mobilenet_v2(width_mult=0.5).state_dict(), weights)
    with pytest.raises(InputError) as caught:
        load_model("zoo:mobilenet_v2", weights=str(weights))
    assert "wrong shape" in caught.value.message and "width multiplier" in caught.value.hint


def test_pickled_objects_in_weights_are_refused_without_trust(tmp_path):
    checkpoint = tmp_path / "with_code.pt"
    torch.save({"state_dict": mobilenet_v2().state_dict(), "optimizer_factory": torch.optim.SGD}, checkpoint)
    with pytest.raises(InputError, match="pickled Python objects"):
        load_state_dict(checkpoint)
    assert "features.0.0.weight" in load_state_dict(checkpoint, trust_pickle=True)


def test_nan_weights_are_refused(tmp_path):
    state = mobilenet_v2(num_classes=1000).state_dict()
    state["classifier.1.weight"][0, 0] = float("nan")
    weights = tmp_path / "diverged.pt"
    torch.save(state, weights)
    with pytest.raises(InputError, match="NaN or Inf"):
        load_model("zoo:mobilenet_v2", weights=str(weights))
