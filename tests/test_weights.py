"""Pretrained registry, downloads (offline: file:// URLs and fake openers), tar safety, our file format's
round trip, create_model(pretrained=...) and the preprocessing presets."""

import hashlib
import io
import re
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import resnetkit
from resnetkit import pretrained
from resnetkit.download import download, safe_extract_tar
from resnetkit.errors import UserError
from resnetkit.models import list_models
from resnetkit.weights import PRESETS, imagenet_class_names, preset, save_weights
from resnetkit.weights.presets import VGG_MEAN_255

SLIM_FIX = Path(__file__).parent / "fixtures" / "tf_slim"


# ---------------------------------------------------------------------------------------- registry
def test_registry_has_the_published_weights():
    expected = {f"resnet_v{v}_{d}.tf_slim" for v in (1, 2) for d in (50, 101, 152)}
    expected |= {f"resnet{d}.tv_in1k" for d in (18, 34, 50, 101, 152)}
    expected |= {f"resnet{d}.tv2_in1k" for d in (50, 101, 152)} | {f"resnet_v2_{d}.keras" for d in (50, 101, 152)}
    assert set(pretrained.REGISTRY) == expected


@pytest.mark.parametrize("tag", sorted(pretrained.REGISTRY))
def test_registry_entry_is_consistent(tag):
    w = pretrained.REGISTRY[tag]
    assert w.arch in list_models() and w.preprocessing in PRESETS
    assert w.url.startswith(("http://", "https://")) and w.kind in ("tf-slim", "torchvision", "keras")
    assert 60 < w.top1 < 90 and w.top1 < w.top5 < 100
    assert len(w.class_names()) == w.num_classes
    if w.kind == "torchvision":  # the hash prefix is the one in the published file name
        assert re.fullmatch(r"[0-9a-f]{8}", w.sha256_prefix) and f"-{w.sha256_prefix}.pth" in w.url
        assert w.num_classes == 1000 and w.preprocessing.startswith("torchvision")
    elif w.kind == "keras":
        assert re.fullmatch(r"[0-9a-f]{32}", w.md5) and w.url.endswith("_weights_tf_dim_ordering_tf_kernels.h5")
        assert w.preprocessing == "keras_tf"
    else:  # no checksum is published for the slim tarballs
        assert w.sha256 is None and w.url.endswith(".tar.gz")
        assert (w.num_classes, w.preprocessing) == ((1000, "vgg") if "_v1_" in tag else (1001, "inception"))


def test_torchvision_entries_match_torchvision_itself():
    from torchvision.models import get_model_weights

    for tag in pretrained.list_pretrained():
        w = pretrained.REGISTRY[tag]
        if w.kind != "torchvision":
            continue
        tv = get_model_weights(w.arch)["IMAGENET1K_V2" if "tv2" in tag else "IMAGENET1K_V1"]
        assert tv.url == w.url
        assert (tv.meta["_metrics"]["ImageNet-1K"]["acc@1"], tv.meta["_metrics"]["ImageNet-1K"]["acc@5"]) == (w.top1,
                                                                                                             w.top5)
        assert tv.transforms.keywords.get("resize_size", 256) == PRESETS[w.preprocessing].resize


def test_imagenet_class_names():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    names = imagenet_class_names(1000)
    assert names == list(_IMAGENET_CATEGORIES) and names[0] == "tench" and names[-1] == "toilet tissue"
    assert imagenet_class_names(1001) == ["background", *names]
    with pytest.raises(ValueError):
        imagenet_class_names(10)


def test_unknown_tag_suggests():
    with pytest.raises(UserError, match="did you mean resnet50.tv_in1k"):
        pretrained.get_weights("resnet50.tv_in1")


# ---------------------------------------------------------------------------------------- download
@pytest.fixture
def blob(tmp_path):
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(b"resnetkit" * 1000)
    return src, hashlib.sha256(src.read_bytes()).hexdigest(), hashlib.md5(src.read_bytes()).hexdigest()


def test_download_file_url_checks_hashes(tmp_path, blob):
    src, sha, md5 = blob
    dest = tmp_path / "cache" / "blob.bin"
    assert download(src.as_uri(), dest, sha256=sha).read_bytes() == src.read_bytes()
    dest.unlink()
    assert download(src.as_uri(), dest, sha256_prefix=sha[:8], md5=md5).is_file()
    # An existing file is checked and reused: no network needed.
    assert download("http://unreachable.invalid/blob.bin", dest, sha256=sha, opener=None) == dest


def test_download_checksum_mismatch_keeps_nothing(tmp_path, blob):
    src, sha, _ = blob
    dest = tmp_path / "cache" / "blob.bin"
    with pytest.raises(UserError, match=r"sha256 prefix [0-9a-f]{64} does not match the published 00000000"):
        download(src.as_uri(), dest, sha256_prefix="00000000")
    with pytest.raises(UserError, match="md5"):
        download(src.as_uri(), dest, md5="0" * 32)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a .part


def test_download_offline_says_where_to_put_the_file(tmp_path):
    def offline(req, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    dest = tmp_path / "cache" / "resnet18-f37072fd.pth"
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    with pytest.raises(UserError) as e:
        download(url, dest, sha256_prefix="f37072fd", opener=offline)
    msg = str(e.value)
    assert "\n" not in msg and url in msg and str(dest) in msg and "name resolution" in msg
    assert list(dest.parent.iterdir()) == []


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("evil", [
    [_file("../escape.txt")], [_file("/tmp/abs.txt")], [_file("ok/../../escape.txt")],
    [_link("link", "/etc/passwd", tarfile.SYMTYPE)], [_file("a.txt"), _link("hard", "a.txt", tarfile.LNKTYPE)],
])
def test_tar_extraction_refuses_escapes_and_links(tmp_path, evil):
    archive = _tar(tmp_path / "evil.tar.gz", [_file("fine.txt")] + evil)
    target = tmp_path / "out" / "x"
    with pytest.raises(UserError, match="refusing member"):
        safe_extract_tar(archive, target)
    assert not target.exists() and list(target.parent.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_slim_tarball_extracts_to_a_readable_checkpoint(tmp_path):
    from resnetkit.convert import find_tf_checkpoint
    from resnetkit.convert.tf_checkpoint import read_checkpoint

    archive = tmp_path / "resnet_v2_tiny_2017_04_14.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        for suffix in (".index", ".data-00000-of-00001"):
            t.add(SLIM_FIX / f"v2_cls_gp_even32_v2fmt.ckpt{suffix}", f"resnet_v2_tiny.ckpt{suffix}")
    folder = safe_extract_tar(archive, tmp_path / "x")
    prefix = find_tf_checkpoint(folder)
    assert prefix.name == "resnet_v2_tiny.ckpt"
    ref = np.load(SLIM_FIX / "v2_cls_gp_even32.npz")
    got = read_checkpoint(prefix)
    assert got.keys() == {k[4:] for k in ref.files if k.startswith("var/")}
    truncated = tmp_path / "trunc.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(UserError):
        safe_extract_tar(truncated, tmp_path / "y")


# ---------------------------------------------------------------------------------- our file format
def test_round_trip_identical_tensors_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = resnetkit.create_model("preact_resnet110", num_classes=5, bn_eps=1.001e-5, shortcut="B").eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    pre = preset("inception")
    path = save_weights(model, tmp_path / "m.safetensors", class_names=list("abcde"), preprocessing=pre, source="t")
    loaded = resnetkit.load(path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.card.class_names == tuple("abcde") and loaded.card.preprocessing == pre
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_create_model_pretrained_from_file(tmp_path):
    model = resnetkit.create_model("resnet20", num_classes=3).eval()
    path = save_weights(model, tmp_path / "r20.safetensors", class_names=["a", "b", "c"],
                        preprocessing=preset("torchvision"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        m = resnetkit.create_model("resnet20", pretrained=path)
        assert torch.equal(m(x), ref) and m.card.class_names == ("a", "b", "c")
        fcn = resnetkit.create_model("resnet20", pretrained=str(path), global_pool=False)  # same tensors
        assert fcn(x).shape == (2, 3, 8, 8) and fcn.card.class_names == ("a", "b", "c")
    with pytest.raises(UserError, match="do not fit"):
        resnetkit.create_model("resnet20", pretrained=path, num_classes=10)
    with pytest.raises(UserError, match="holds a resnet20, not a resnet32"):
        resnetkit.create_model("resnet32", pretrained=path)
    with pytest.raises(UserError, match="neither a weights file nor a catalogue tag .*resnet18.tv_in1k"):
        resnetkit.create_model("resnet18", pretrained=tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="are for resnet50"):
        resnetkit.create_model("resnet18", pretrained="resnet50.tv_in1k")


def test_create_model_pretrained_tag_downloads_checks_converts_once(tmp_path, monkeypatch):
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(num_classes=1000).eval()
    src = tmp_path / "server" / "resnet18-xxxxxxxx.pth"
    src.parent.mkdir()
    torch.save(tv.state_dict(), src)
    prefix = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    good = pretrained.PretrainedWeights("resnet18.test", src.as_uri(), "torchvision", 1000, "torchvision", 70.0, 89.0,
                                      "test", sha256_prefix=prefix)
    monkeypatch.setitem(pretrained.REGISTRY, good.tag, good)
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path / "cache"))

    model = resnetkit.create_model("resnet18", pretrained="resnet18.test")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)
    assert model.card.class_names[:2] == ("tench", "goldfish") and model.card.preprocessing.resize == 256
    assert model.card.metrics["top1"] == 70.0
    assert (tmp_path / "cache" / "converted" / "resnet18.test.safetensors").is_file()
    src.unlink()  # the second call reads the converted cache, no download
    again = resnetkit.create_model("resnet18", pretrained="resnet18.test")
    assert torch.equal(again.logits.weight, model.logits.weight)

    bad = pretrained.PretrainedWeights("resnet18.bad", (tmp_path / "missing.pth").as_uri(), "torchvision", 1000,
                                     "torchvision", 70.0, 89.0, "test", sha256_prefix="00000000")
    monkeypatch.setitem(pretrained.REGISTRY, bad.tag, bad)
    with pytest.raises(UserError, match="cannot download .*missing.pth.*put it at .*downloads/missing.pth"):
        resnetkit.create_model("resnet18", pretrained="resnet18.bad")


# ------------------------------------------------------------------------------------ preprocessing
def _image(w=300, h=200, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("tag,name", [("IMAGENET1K_V1", "torchvision"), ("IMAGENET1K_V2", "torchvision_v2")])
def test_torchvision_presets_equal_torchvision_transforms(tag, name):
    im = _image()
    ref = torchvision.models.ResNet50_Weights[tag].transforms()(im)
    got = preset(name).transform()(im)
    assert got.shape == (3, 224, 224)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_vgg_and_inception_and_keras_presets():
    im = _image(320, 240)
    vgg = preset("vgg")(im)  # pixels minus the RGB means, in 0-255 units
    raw = np.asarray(im.resize((341, 256), Image.BILINEAR), np.float32)[16:240, 58:282]
    np.testing.assert_allclose(vgg.numpy(), (raw - VGG_MEAN_255).transpose(2, 0, 1), atol=1e-3)
    inc = preset("inception")(im)
    assert inc.shape == (3, 299, 299) and -1 <= inc.min() and inc.max() <= 1
    k = preset("keras_tf")(im)
    expected = np.asarray(im.resize((224, 224), Image.BILINEAR), np.float32) / 127.5 - 1
    np.testing.assert_allclose(k.numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_tar_bombs_are_refused_before_anything_is_written(tmp_path):
    big = tarfile.TarInfo("ckpt.data")
    big.size = 100 << 20  # 100 MB of zeros: a ~100 KB .tar.gz
    archive = _tar(tmp_path / "bomb.tar.gz", [(big, b"\0" * big.size)])
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(UserError, match="refused: 1 members of 104,857,600 bytes"):
        safe_extract_tar(archive, tmp_path / "x")
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir()] == ["bomb.tar.gz"]
    many = [(tarfile.TarInfo(f"f{i}"), b"") for i in range(30)]
    with pytest.raises(UserError, match="30 members"):
        safe_extract_tar(_tar(tmp_path / "many.tar.gz", many), tmp_path / "y", max_members=20)
    assert safe_extract_tar(archive, tmp_path / "z", max_bytes=101 << 20).is_dir()  # allowed when asked
