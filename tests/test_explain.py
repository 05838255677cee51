"""Grad-CAM: equal to an independent implementation with module hooks; the command end to end."""

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.cli import main
from resnetkit.export import grad_cam
from resnetkit.weights import Preprocessing, save_weights
from tests.conftest import randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def _hooked_cam(model, x, module, target):
    """Grad-CAM the textbook way: a forward hook keeps the activations, a tensor hook their gradient."""
    store = {}

    def keep(_m, _i, out):
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    h = module.register_forward_hook(keep)
    try:
        model(x)[:, target].sum().backward()
    finally:
        h.remove()
    w = store["g"].mean((2, 3), keepdim=True)
    cam = torch.relu((w * store["a"]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]  # an all-zero map stays zero


@pytest.mark.parametrize("name,layer,block", [("resnet20", "resnet20/block3", "block3"),
                                              ("resnet20", "resnet20/block2", "block2"),
                                              ("resnet_v2_50", "resnet_v2_50/block3", "block3")])
def test_grad_cam_equals_a_hooked_implementation(name, layer, block):
    torch.manual_seed(0)
    model = randomize_bn(resnetkit.create_model(name, num_classes=5)).eval()
    x = torch.randn(2, 3, 64, 64)
    cam, cls, prob = grad_cam(model, x, layer=layer, target=3)
    ref = _hooked_cam(model, x, getattr(model.blocks, block), 3)
    assert cam.shape == (2, 64, 64) and cls.tolist() == [3, 3] and (0 <= prob).all() and (prob <= 1).all()
    torch.testing.assert_close(cam, ref, rtol=1e-4, atol=1e-5)
    top, _, _ = grad_cam(model, x, layer=layer)  # default target: each image's top class
    assert top.shape == cam.shape


def test_unknown_layer_lists_real_ones():
    model = resnetkit.create_model("resnet20", num_classes=3).eval()
    with pytest.raises(ValueError, match=r"not an end point.*resnet20/block1"):
        grad_cam(model, torch.randn(1, 3, 32, 32), layer="resnet20/block9")


def test_explain_command(tmp_path, capsys):
    model = randomize_bn(resnetkit.create_model("resnet20", num_classes=3, in_chans=1)).eval()
    weights = save_weights(model, tmp_path / "m.safetensors", class_names=["cat", "dog", "owl"],
                           preprocessing=Preprocessing(size=(16, 16), mean=(0.5,), std=(0.25,), channel_order="L"))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "cams"
    assert main(["explain", str(tmp_path / "a.png"), "--weights", str(weights), "--class", "dog", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "a.png: dog" in printed and "resnet20/block3" in printed
    assert Image.open(out / "a_cam.png").size == (16, 16)
    assert main(["explain", str(tmp_path / "a.png"), "--weights", str(weights), "--class", "cow", "-o",
                 str(out), "--overwrite"]) == 2
    assert "class 'cow' is not one of the model's classes" in capsys.readouterr().err
