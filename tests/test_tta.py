"""Test-time augmentation: what flip and multiscale average, and that eval and predict use it."""

import pytest
import torch

import resnetkit
from resnetkit.errors import ConfigError
from resnetkit.export.segment import predict_logits
from resnetkit.export.tta import TTA
from resnetkit.weights import Preprocessing, save_weights
from tests.conftest import randomize_bn, seg_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flip_averages_the_image_and_its_mirror():
    model = randomize_bn(resnetkit.create_model("resnet20", num_classes=4)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = TTA(model, "flip", segmentation=False)(x).exp()
        want = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, model(x).softmax(1))  # the mirror changes something: the test can fail


def test_segmentation_flip_mirrors_the_logits_back_and_multiscale_keeps_the_size():
    model = randomize_bn(seg_model("resnet20", 3, "slim", 4)).eval()
    x = torch.randn(1, 3, 30, 26)
    with torch.no_grad():
        got = TTA(model, "flip", segmentation=True)(x).exp()
        want = (predict_logits(model, x).softmax(1) + predict_logits(model, x.flip(-1)).softmax(1).flip(-1)) / 2
        multi = TTA(model, "multiscale", segmentation=True)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert multi.shape == (1, 3, 30, 26) and torch.allclose(multi.exp().sum(1), torch.ones(1, 30, 26), atol=1e-5)


def test_tta_through_evaluate_file_and_predict(tmp_path):
    model = randomize_bn(resnetkit.create_model("resnet20", num_classes=10, in_chans=1)).eval()
    path = save_weights(model, tmp_path / "d.safetensors", class_names=[str(i) for i in range(10)],
                        preprocessing=Preprocessing(size=(8, 8), mean=(0.25,), std=(0.3,), channel_order="L"))
    plain = resnetkit.evaluate_file(path, "digits", batch_size=128)
    flip = resnetkit.evaluate_file(path, "digits", batch_size=128, tta="flip")
    assert plain["n"] == flip["n"] and plain["loss"] != flip["loss"]
    with pytest.raises(ConfigError, match="multiscale.*segmentation"):
        resnetkit.evaluate_file(path, "digits", tta="multiscale")
