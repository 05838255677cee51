"""`resnetkit convert` end to end: detection, convert -> predict, and bad input that fails in one line
without leaving an output file."""

import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import resnetkit
from resnetkit.cli import main
from resnetkit.convert import detect_kind
from resnetkit.weights import PRESETS

FIX = Path(__file__).parent / "fixtures"
SLIM = FIX / "tf_slim" / "v2_cls_gp_even32_v2fmt.ckpt"


@pytest.fixture(scope="module")
def tv_pth(tmp_path_factory):
    """A torchvision resnet18 with random weights (BN statistics included), saved as torchvision does."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("tv") / "resnet18-random.pth"
    torch.save(model.state_dict(), path)
    return path, model


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_convert_then_predict(tmp_path, capsys, tv_pth):
    pth, tv = tv_pth
    out = tmp_path / "r18.safetensors"
    rc, stdout, _ = run(capsys, "convert", pth, "-o", out)
    assert rc == 0 and "resnet18" in stdout and "1000 classes" in stdout and out.is_file()
    model = resnetkit.load(out)
    assert model.card.class_names[0] == "tench" and model.card.preprocessing == PRESETS["torchvision"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)

    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(img)
    rc, stdout, _ = run(capsys, "predict", img, "--weights", out, "--format", "json", "--top-k", "3")
    assert rc == 0
    preds = json.loads(stdout)[0]["predictions"]
    assert len(preds) == 3 and all(p["class"] == model.card.class_names[p["index"]] for p in preds)
    assert preds[0]["prob"] >= preds[1]["prob"] >= preds[2]["prob"] > 0


def test_convert_options(tmp_path, capsys, tv_pth):
    pth, _ = tv_pth
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"c{i}" for i in range(1000)) + "\n")
    out = tmp_path / "o.safetensors"
    rc, _, _ = run(capsys, "convert", pth, "-o", out, "--from", "torchvision", "--arch", "resnet18",
                   "--preprocessing", "torchvision_v2", "--class-names", names)
    assert rc == 0
    card = resnetkit.read_card(out)
    assert card.class_names[:2] == ("c0", "c1") and card.preprocessing.resize == 232


@pytest.mark.parametrize("path,kind", [
    ("tf_slim/v2_cls_gp_even32_v2fmt.ckpt", "tf-slim"), ("tf_slim/v2_cls_gp_even32_v2fmt.ckpt.index", "tf-slim"),
    ("tf_slim/v1_cls_gp_odd33_v1fmt.ckpt", "tf-slim"), ("tf_slim", "tf-slim"),
    ("keras/tiny_v2.weights.h5", "keras"), ("keras/tiny_v2_legacy.h5", "keras"),
])
def test_detect_kind(path, kind):
    assert detect_kind(FIX / path) == kind


def test_detect_kind_torchvision_and_tar(tmp_path, tv_pth):
    assert detect_kind(tv_pth[0]) == "torchvision"
    legacy = tmp_path / "legacy.pth"
    torch.save({"fc.bias": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert detect_kind(legacy) == "torchvision"
    archive = tmp_path / "ckpt.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(FIX / "tf_slim" / "v1_cls_gp_odd33_v1fmt.ckpt", "model.ckpt")
    assert detect_kind(archive) == "tf-slim-tar"
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"hello world, not weights")
    with pytest.raises(resnetkit.UserError, match="cannot tell what this file is"):
        detect_kind(junk)


def _truncated(tmp_path, src: Path, n: int) -> Path:
    dst = tmp_path / src.name
    dst.write_bytes(src.read_bytes()[:n])
    return dst


@pytest.mark.parametrize("case", ["wrong-arch", "truncated-pth", "truncated-h5", "truncated-slim", "tiny-slim",
                                  "tiny-slim-arch", "tiny-keras", "slim-tarball", "missing", "slim-as-keras"])
def test_bad_input_one_line_error_and_no_output(tmp_path, capsys, tv_pth, case):
    pth, _ = tv_pth
    out = tmp_path / "out" / "model.safetensors"
    archive = tmp_path / "tiny_slim.tar.gz"
    if case == "slim-tarball":
        with tarfile.open(archive, "w:gz") as t:
            t.add(FIX / "tf_slim" / "v1_cls_gp_odd33_v1fmt.ckpt", "resnet_v1_tiny.ckpt")
    args, pattern = {
        "wrong-arch": ([pth, "--arch", "resnet34"], "missing in torchvision state dict: blocks.block1.unit_3"),
        "truncated-pth": ([_truncated(tmp_path, pth, 4000)], "not a readable torchvision checkpoint"),
        "truncated-h5": ([_truncated(tmp_path, FIX / "keras" / "tiny_v2_legacy.h5", 9000)], "not a readable Keras"),
        "truncated-slim": ([_truncated(tmp_path, FIX / "tf_slim" / "v1_cls_gp_odd33_v1fmt.ckpt", 3000)],
                           "cannot tell|checkpoint|truncated"),
        "tiny-slim": ([SLIM], r"units per block \(2, 2, 2\) match no slim depth.*pass arch=.*--arch"),
        "tiny-slim-arch": ([SLIM, "--arch", "resnet_v2_50"], "missing in TF-slim checkpoint: .*unit_3"),
        "tiny-keras": ([FIX / "keras" / "tiny_v2.weights.h5"], "matches no registered architecture"),
        "slim-tarball": ([archive], "match no slim depth"),
        "missing": ([tmp_path / "nope.pth"], "no such file"),
        "slim-as-keras": ([FIX / "tf_slim" / "v1_cls_gp_odd33_v1fmt.ckpt", "--from", "keras"],
                          "not a readable Keras HDF5"),
    }[case]
    rc, stdout, err = run(capsys, "convert", *args, "-o", out)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnetkit: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


def test_failed_convert_keeps_an_existing_output(tmp_path, capsys, tv_pth):
    pth, _ = tv_pth
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"previous")
    rc, _, _ = run(capsys, "convert", pth, "--arch", "resnet50", "-o", out)
    assert rc == 2 and out.read_bytes() == b"previous"
