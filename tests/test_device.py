"""--device for predict, eval, segment and serve: the rule that picks a device, and the CLI's flag."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit._helpers import resolve_device
from resnetkit.cli import main
from resnetkit.errors import ConfigError
from resnetkit.export.backends import backend_device
from resnetkit.weights import Preprocessing, save_weights
from tests.conftest import seg_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("gpus", [0, 2])
def test_the_device_rule(monkeypatch, gpus):
    """Patched, so that it reads the same on a machine with GPUs and one without."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    default = "cuda" if gpus else "cpu"
    assert resolve_device(None).type == default
    assert backend_device("auto").type == default and backend_device("channels_last").type == default
    assert backend_device("onnxruntime").type == "cpu" and backend_device("int8").type == "cpu"
    assert backend_device("onnxruntime", "cpu").type == "cpu"
    if gpus:
        assert resolve_device("cuda:1") == torch.device("cuda", 1)
    for bad, words in (("cuda:2" if gpus else "cuda", f"has {gpus} CUDA device"), ("tpu", "use cpu, cuda"),
                       ("cuda:x", "use cpu, cuda")):
        with pytest.raises(ConfigError, match=words):
            resolve_device(bad)


@pytest.fixture(scope="module")
def weights_and_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    torch.manual_seed(0)
    model = resnetkit.create_model("resnet20", num_classes=3).eval()
    w = save_weights(model, root / "m.safetensors", class_names=["a", "b", "c"],
                     preprocessing=Preprocessing(size=(16, 16)))
    seg = save_weights(seg_model("resnet20", 2, output_stride=4), root / "seg.safetensors",
                       preprocessing=Preprocessing())
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "x.png")
    return w, seg, root / "x.png"


def test_predict_on_the_cpu_and_a_missing_gpu(weights_and_image, capsys):
    w, seg, image = weights_and_image
    assert main(["predict", str(image), "--weights", str(w), "--format", "json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert main(["predict", str(image), "--weights", str(w), "--format", "json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["class"] == default[0]["predictions"][0]["class"]
    for cmd, weights in ((["predict", str(image)], w), (["segment", str(image), "-o", "out"], seg),
                         (["eval", "--data", "digits"], w), (["serve"], w)):
        assert main([*cmd, "--weights", str(weights), "--device", "cuda:99"]) == 2
        err = capsys.readouterr().err
        assert "device 'cuda:99'" in err and err.count("\n") == 1, err
