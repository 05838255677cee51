"""The standing hostile-input suite: every case is made here, run through the CLI (`resnetkit.cli.main`, in
process), and must end with

  * the expected exit status (2 for a user's mistake),
  * exactly one line on stderr, `resnetkit: error: ...`, naming the problem, and no traceback,
  * no pre-existing file changed (every file is hashed before and after) and no new file left behind,
  * nothing left in the temporary directory,
  * no code run from a file (pickles try to create a canary file).

Categories: hostile weights files (header, metadata, tensors) through every command that reads one,
pickles, archives and containers, TF checkpoints with flipped bits, Keras files, images, dataset files,
every CLI argument at its edges, and disk faults.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import pickle
import shutil
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import resnetkit
from resnetkit.data.shapes import make_shapes
from resnetkit.weights import Preprocessing, save_weights
from tests.conftest import seg_model
from tests.hostile import assert_refused, copy, hashes, left_in, mat, run_cli, sandbox, voc_copy
from tests.idx_data import idx_bytes, write_idx_files

pytestmark = pytest.mark.usefixtures("one_thread")

FIX = Path(__file__).parent / "fixtures"


@dataclasses.dataclass
class Case:
    id: str
    build: Callable[[Path, Path], list[str]]  # (work folder, canary path) -> argv
    needle: str  # must appear in the one error line
    rc: int = 2


CASES: list[Case] = []


def case(id: str, needle: str, rc: int = 2):
    def wrap(build):
        CASES.append(Case(id, build, needle, rc))
        return build
    return wrap


# ------------------------------------------------------------------------------------------ materials
@pytest.fixture(scope="module")
def materials(tmp_path_factory) -> Path:
    """Good files to start from: a classification and a segmentation weights file, images, shapes data."""
    root = tmp_path_factory.mktemp("materials")
    torch.manual_seed(0)
    cls = resnetkit.create_model("resnet20", num_classes=3, in_chans=1).eval()
    save_weights(cls, root / "cls.safetensors", class_names=["a", "b", "c"],
                 preprocessing=Preprocessing(size=(8, 8), mean=(0.3,), std=(0.3,), channel_order="L"))
    seg = seg_model("resnet20", 6, "slim", 4).eval()
    save_weights(seg, root / "seg.safetensors", class_names=[f"c{i}" for i in range(6)],
                 preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3))
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / "img" / f"p{i}.png")
    make_shapes(root / "shapes", n_train=2, n_val=2, size=17, seed=0)
    return root


# ------------------------------------------------------------------------------------------ harness
@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_hostile_input(c: Case, materials, tmp_path, capsys, monkeypatch):
    work, tmp, canary = sandbox(materials, tmp_path, monkeypatch)
    argv = c.build(work, canary)
    before = hashes(work)
    rc, err = run_cli(argv, capsys)
    assert_refused(rc, err, c.rc, c.needle, before, work, tmp, canary)


def test_the_suite_is_large_enough():
    assert len(CASES) >= 200


# ====================================================================== 1. hostile weights files
def _raw_safetensors(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _rewrite(work: Path, name: str, card: Callable[[dict], dict] | None = None, tensors=None,
             meta: dict | None = None) -> Path:
    """cls.safetensors (or seg) with its card, tensors or raw metadata changed."""
    src = mat(name)
    t = load_file(src)
    if tensors is not None:
        t = tensors(t)
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        m = dict(f.metadata())
    if card is not None:
        m["resnetkit.card"] = json.dumps(card(json.loads(m["resnetkit.card"])))
        m.pop("resnetkit.tensors_sha256", None) if tensors is not None else None
    if meta is not None:
        m = meta(m) if callable(meta) else meta
    out = work / "hostile.safetensors"
    save_file(t, out, metadata=m)
    return out


def _with(d: dict, path: str, value) -> dict:
    d = json.loads(json.dumps(d))
    *parents, leaf = path.split(".")
    cur = d
    for p in parents:
        cur = cur[p]
    cur[leaf] = value
    return d


HEADER_CASES = {
    "empty_file": (lambda w: (w / "hostile.safetensors").write_bytes(b""), "not a safetensors file"),
    "seven_bytes": (lambda w: (w / "hostile.safetensors").write_bytes(b"\x01" * 7), "not a safetensors file"),
    "huge_header_length": (lambda w: (w / "hostile.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}"),
                           "not a safetensors file"),
    "header_past_end": (lambda w: (w / "hostile.safetensors").write_bytes(_raw_safetensors(b'{"a"')[:10] + b" " * 4),
                        "not a safetensors file"),
    "header_not_json": (lambda w: (w / "hostile.safetensors").write_bytes(_raw_safetensors(b"not json at all")),
                        "not a safetensors file"),
    "header_a_list": (lambda w: (w / "hostile.safetensors").write_bytes(_raw_safetensors(b"[1, 2, 3]")),
                      "not a safetensors file"),
    "offsets_out_of_range": (lambda w: (w / "hostile.safetensors").write_bytes(_raw_safetensors(
        b'{"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1600]}}', b"\0" * 16)), "not a safetensors file"),
    "unknown_dtype": (lambda w: (w / "hostile.safetensors").write_bytes(_raw_safetensors(
        b'{"x": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4)), "not a safetensors file"),
    "shape_disagrees_with_bytes": (lambda w: (w / "hostile.safetensors").write_bytes(_raw_safetensors(
        b'{"x": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4]}}', b"\0" * 4)),
        "not a safetensors file"),
    "no_resnetkit_metadata": (lambda w: save_file({"x": torch.zeros(2)}, w / "hostile.safetensors"),
                              "without resnetkit metadata"),
    "future_format_version": (lambda w: _rewrite(w, "cls.safetensors", meta=lambda m: {
        **m, "resnetkit.format_version": "99"}), "format version '99'"),
    "card_not_json": (lambda w: _rewrite(w, "cls.safetensors", meta=lambda m: {**m, "resnetkit.card": "{nope"}),
                      "not valid JSON"),
    "card_deeply_nested": (lambda w: _rewrite(w, "cls.safetensors", meta=lambda m: {
        **m, "resnetkit.card": "[" * 100_000 + "]" * 100_000}), "not valid JSON"),
    "card_a_list": (lambda w: _rewrite(w, "cls.safetensors", meta=lambda m: {**m, "resnetkit.card": "[]"}),
                    "JSON object"),
}

def _n(card: dict) -> int:
    return len(card["preprocessing"]["mean"])


def _key(t: dict, suffix: str) -> str:
    return next(k for k in t if k.endswith(suffix))


CARD_CASES = {
    "arch_unknown": (lambda c: _with(c, "config.arch", "resnet9000"), "unknown model"),
    "arch_not_a_string": (lambda c: _with(c, "config.arch", 50), "config"),
    "kwargs_not_a_dict": (lambda c: _with(c, "config.kwargs", [1, 2]), "config"),
    "billion_classes": (lambda c: _with(c, "config.kwargs.num_classes", 10**9), "shape mismatch"),
    "unknown_keyword": (lambda c: _with(c, "config.kwargs.colour", "red"), "unexpected keyword"),
    "impossible_output_stride": (lambda c: _with(c, "config.kwargs.output_stride", 3), "output_stride"),
    "negative_in_chans": (lambda c: _with(c, "config.kwargs.in_chans", -1), "cannot build"),
    "string_num_classes": (lambda c: _with(c, "config.kwargs.num_classes", "three"), "cannot build"),
    "class_names_wrong_count": (lambda c: _with(c, "class_names", ["a", "b"]), "2 class names for a model of"),
    "class_name_escape_sequence": (lambda c: _with(c, "class_names", ["a", "\x1b[2J\x1b[H", "c"]), "class name"),
    "class_names_not_strings": (lambda c: _with(c, "class_names", [1, 2, 3]), "class_names must be"),
    "class_name_too_long": (lambda c: _with(c, "class_names", ["a", "b" * 5000, "c"]), "class name"),
    "class_name_empty": (lambda c: _with(c, "class_names", ["a", "", "c"]), "class name"),
    "zero_std": (lambda c: _with(c, "preprocessing.std", [0.0] * _n(c)), "std must be positive"),
    "nan_mean": (lambda c: _with(c, "preprocessing.mean", [float("nan")] * _n(c)), "non-finite"),
    "infinite_std": (lambda c: _with(c, "preprocessing.std", [float("inf")] * _n(c)), "non-finite"),
    "huge_input_size": (lambda c: _with(c, "preprocessing.size", [10**6, 10**6]), "preprocessing.size"),
    "negative_input_size": (lambda c: _with(c, "preprocessing.size", [-8, 8]), "preprocessing.size"),
    "size_a_string": (lambda c: _with(c, "preprocessing.size", "8x8"), "preprocessing.size"),
    "mean_a_string": (lambda c: _with(c, "preprocessing.mean", "0.3"), "preprocessing.mean"),
    "unknown_channel_order": (lambda c: _with(c, "preprocessing.channel_order", "CMYK"), "channel_order"),
    "unknown_preprocessing_key": (lambda c: _with(c, "preprocessing.exec", "rm -rf /"), "unknown keys"),
    "preprocessing_not_a_dict": (lambda c: _with(c, "preprocessing", "imagenet"), "preprocessing must be"),
    "mean_wrong_length": (lambda c: _with(c, "preprocessing.mean", [0.1, 0.2]), "values for"),
    "metrics_not_a_dict": (lambda c: _with(c, "metrics", [1]), "metrics must be"),
    "huge_resize": (lambda c: _with(c, "preprocessing.resize", 10**9), "preprocessing.resize"),
    "crop_fraction_nan": (lambda c: _with(c, "preprocessing.crop_fraction", float("nan")), "non-finite"),
}

TENSOR_CASES = {
    "missing_tensor": (lambda t: {k: v for k, v in t.items() if k != _key(t, "logits.weight")}, "missing in"),
    "extra_tensor": (lambda t: {**t, "backdoor.weight": torch.zeros(3)}, "unused from"),
    "wrong_shape": (lambda t: {**t, _key(t, "logits.weight"): torch.zeros(3, 64, 1, 1, 1)}, "shape mismatch"),
    "nan_weights": (lambda t: {**t, _key(t, "logits.weight"): torch.full_like(t[_key(t, "logits.weight")],
                                                                               float("nan"))}, "NaN or Inf"),
    "inf_bn_stats": (lambda t: {**t, _key(t, "running_var"): torch.full_like(t[_key(t, "running_var")],
                                                                             float("inf"))}, "NaN or Inf"),
}


def _without_checksum(meta: dict) -> dict:
    """Edited tensors with the checksum dropped, as a careful attacker would: the other checks must hold."""
    return {k: v for k, v in meta.items() if k != "resnetkit.tensors_sha256"}


def _flip_tensor_bit(work: Path, base: str) -> Path:
    out = work / "hostile.safetensors"
    raw = bytearray(mat(base).read_bytes())
    raw[8 + int.from_bytes(raw[:8], "little") + 4000] ^= 0x04
    out.write_bytes(bytes(raw))
    return out


COMMANDS = {
    "predict": lambda w, f: ["predict", str(copy("img/p0.png", w)), "--weights", str(f)],
    "eval": lambda w, f: ["eval", "--weights", str(f), "--data", "digits", "--out", str(w / "ev")],
    "export": lambda w, f: ["export", "--weights", str(f), "--format", "torchscript", "-o", str(w / "m.pt")],
    "segment": lambda w, f: ["segment", str(copy("img/p0.png", w)), "--weights", str(f), "-o", str(w / "masks")],
}


def _register_weights_cases():
    for cmd, argv in COMMANDS.items():
        for name, (make, needle) in HEADER_CASES.items():
            case(f"weights-{name}-{cmd}", needle)(
                lambda w, c, make=make, argv=argv: argv(w, (make(w), w / "hostile.safetensors")[1]))
        base = "seg.safetensors" if cmd == "segment" else "cls.safetensors"
        for name, (edit, needle) in CARD_CASES.items():
            case(f"card-{name}-{cmd}", needle)(
                lambda w, c, edit=edit, argv=argv, base=base: argv(w, _rewrite(w, base, card=edit)))
        for name, (edit, needle) in TENSOR_CASES.items():
            case(f"tensors-{name}-{cmd}", needle)(
                lambda w, c, edit=edit, argv=argv, base=base: argv(w, _rewrite(w, base, tensors=edit,
                                                                               meta=_without_checksum)))
        case(f"tensors-flipped-bit-{cmd}", "checksum")(
            lambda w, c, argv=argv, base=base: argv(w, _flip_tensor_bit(w, base)))
        case(f"weights-missing-file-{cmd}", "no such weights file")(
            lambda w, c, argv=argv: argv(w, w / "nope.safetensors"))


_register_weights_cases()


@case("legacy-segmentation-unknown-head", "head")
def _(w, c):
    src = mat("cls.safetensors")
    t = load_file(src)
    out = w / "legacy.safetensors"
    save_file(t, out, metadata={"resnetkit.format_version": "1", "resnetkit.config": json.dumps(
        {"arch": "segmentation", "kwargs": {"backbone": "resnet20", "head": "fcn32"}})})
    return ["predict", str(copy("img/p0.png", w)), "--weights", str(out)]


@case("wrong-task-predict-with-segmentation-weights", "segmentation model")
def _(w, c):
    return ["predict", str(copy("img/p0.png", w)), "--weights", str(copy("seg.safetensors", w))]


@case("wrong-task-segment-with-classification-weights", "classification model")
def _(w, c):
    return ["segment", str(copy("img/p0.png", w)), "--weights", str(copy("cls.safetensors", w)), "-o", "out"]


# ====================================================================== 2. pickles that run code
class _Evil:
    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (open, (str(self.canary), "w"))


@case("pickle-torchvision-pth-reduce", "not a readable torchvision checkpoint")
def _(w, c):
    path = w / "resnet18.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": _Evil(c)}))
    return ["convert", str(path), "-o", str(w / "out.safetensors"), "--from", "torchvision"]


@case("pickle-torch-save-zip-reduce", "not a readable torchvision checkpoint")
def _(w, c):
    path = w / "resnet18.pth"
    torch.save({"conv1.weight": _Evil(c)}, path)
    return ["convert", str(path), "-o", str(w / "out.safetensors")]


@case("pickle-cifar-batch-reduce", "refusing to load")
def _(w, c):
    d = w / "cifar" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps(good, protocol=2))
    (d / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(c), b"labels": [0]}, protocol=2))
    weights = save_weights(resnetkit.create_model("resnet20"), w / "c10.safetensors",
                           class_names=[str(i) for i in range(10)],
                           preprocessing=Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3))
    return ["eval", "--weights", str(weights), "--data", "cifar10", "--data-dir", str(w / "cifar"), "--out", "ev"]


# ====================================================================== 3. archives and containers
def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind=tarfile.REGTYPE, data: bytes = b"x", linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


TAR_CASES = {
    "traversal": ([_member("../../evil.txt")], "outside"),
    "absolute": ([_member("/tmp/evil.txt")], "outside"),
    "symlink": ([_member("link", tarfile.SYMTYPE, linkname="/etc/passwd")], "links and devices"),
    "hardlink": ([_member("a"), _member("hard", tarfile.LNKTYPE, linkname="a")], "links and devices"),
    "char_device": ([_member("dev", tarfile.CHRTYPE)], "links and devices"),
    "fifo": ([_member("fifo", tarfile.FIFOTYPE)], "links and devices"),
    "nested_traversal": ([_member("ckpt/../../../evil")], "outside"),
    "no_checkpoint_inside": ([_member("readme.txt")], "TensorFlow checkpoints found"),
}

for _name, (_members, _needle) in TAR_CASES.items():
    for _mode in ("w:gz", "w"):
        @case(f"tar-{_name}-{_mode.replace(':', '')}", _needle)
        def _(w, c, members=_members, mode=_mode):
            return ["convert", str(_tar(w / "model.tar.gz", members, mode)), "-o", str(w / "out.safetensors"),
                    "--from", "tf-slim"]


@case("tar-bomb", "refused")
def _(w, c):
    big = tarfile.TarInfo("model.ckpt.data-00000-of-00001")
    big.size = 100 << 20  # ~100 KB compressed: past 4x its size plus 64 MiB
    return ["convert", str(_tar(w / "bomb.tar.gz", [(big, b"\0" * big.size)])), "-o", str(w / "o.safetensors")]


@case("tar-truncated", "tar archive")
def _(w, c):
    p = _tar(w / "model.tar.gz", [_member("model.ckpt.index", data=os.urandom(5000))])
    p.write_bytes(p.read_bytes()[:200])
    return ["convert", str(p), "-o", str(w / "o.safetensors"), "--from", "tf-slim"]


@case("keras-zip-bomb", "refused")
def _(w, c):
    p = w / "model.keras"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.weights.h5", b"\0" * (100 << 20))
    return ["convert", str(p), "-o", str(w / "o.safetensors")]


@case("keras-zip-without-weights", "without model.weights.h5")
def _(w, c):
    p = w / "model.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
    return ["convert", str(p), "-o", str(w / "o.safetensors"), "--from", "keras"]


@case("keras-hdf5-dataset-bomb", "refused")
def _(w, c):
    h5py = pytest.importorskip("h5py")
    p = w / "bomb.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = [b"conv1_conv"]
        g = f.create_group("conv1_conv")
        g.attrs["weight_names"] = [b"conv1_conv/kernel:0"]
        g.create_dataset("conv1_conv/kernel:0", shape=(20_000, 20_000), dtype="f4", compression="gzip")
    return ["convert", str(p), "-o", str(w / "o.safetensors")]


@case("keras-truncated", "not a readable Keras HDF5")
def _(w, c):
    p = w / "tiny.h5"
    p.write_bytes((FIX / "keras" / "tiny_v2_legacy.h5").read_bytes()[:4000])
    return ["convert", str(p), "-o", str(w / "o.safetensors")]


@case("keras-random-bytes", "not a readable Keras HDF5")
def _(w, c):
    p = w / "weights.h5"
    p.write_bytes(os.urandom(3000))
    return ["convert", str(p), "-o", str(w / "o.safetensors"), "--from", "keras"]


def _keras_wrong_shape(w: Path, layer: str) -> Path:
    h5py = pytest.importorskip("h5py")
    p = w / "wrong.h5"
    shutil.copy(FIX / "keras" / "tiny_v2_legacy.h5", p)
    with h5py.File(p, "r+") as f:
        g = f[layer]
        name = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]][0]
        shape = g[name].shape
        del g[name]
        g.create_dataset(name, data=np.zeros((*shape[:-1], shape[-1] + 3), np.float32))
    return p


for _layer in ("conv1_conv", "post_bn", "predictions"):
    @case(f"keras-wrong-shape-{_layer}", "shape mismatch")
    def _(w, c, layer=_layer):
        return ["convert", str(_keras_wrong_shape(w, layer)), "-o", str(w / "o.safetensors")]


# ====================================================================== 4. TF checkpoints with flipped bits
_TF = FIX / "tf_slim"
TF_FILES = {"v2index": "v2_cls_gp_even32_v2fmt.ckpt.index", "v2data": "v2_cls_gp_even32_v2fmt.ckpt.data-00000-of-00001",
            "v1": "v1_cls_gp_odd33_v1fmt.ckpt"}

for _kind, _fname in TF_FILES.items():
    for _frac in (0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.97):
        @case(f"tf-flipped-bit-{_kind}-{int(_frac * 100):02d}pct", "error")
        def _(w, c, fname=_fname, frac=_frac):
            for f in _TF.glob(fname.split(".ckpt")[0] + ".ckpt*"):
                shutil.copy(f, w / f.name)
            target = w / fname
            raw = bytearray(target.read_bytes())
            raw[min(len(raw) - 1, int(frac * len(raw)))] ^= 0x20
            target.write_bytes(bytes(raw))
            prefix = w / (fname.split(".ckpt")[0] + ".ckpt")
            return ["convert", str(prefix if "v2" in fname else target), "-o", str(w / "o.safetensors"),
                    "--from", "tf-slim"]


@case("tf-v2-data-file-missing", "error")
def _(w, c):
    shutil.copy(_TF / TF_FILES["v2index"], w / TF_FILES["v2index"])
    return ["convert", str(w / "v2_cls_gp_even32_v2fmt.ckpt"), "-o", str(w / "o.safetensors"), "--from", "tf-slim"]


@case("tf-truncated-data", "error")
def _(w, c):
    for name in (TF_FILES["v2index"], TF_FILES["v2data"]):
        shutil.copy(_TF / name, w / name)
    d = w / TF_FILES["v2data"]
    d.write_bytes(d.read_bytes()[: d.stat().st_size // 2])
    return ["convert", str(w / "v2_cls_gp_even32_v2fmt.ckpt"), "-o", str(w / "o.safetensors"), "--from", "tf-slim"]


# ====================================================================== 5. images
IMAGES = {
    "empty": b"",
    "text_named_png": b"hello, not a picture",
    "png_signature_only": b"\x89PNG\r\n\x1a\n",
    "truncated_png": None,  # made from a real PNG
    "truncated_jpeg": None,
    "garbage_after_signature": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "gif_header_only": b"GIF89a\x01\x00",
    "bmp_header_only": b"BM" + b"\0" * 30,
}


def _broken_image(w: Path, kind: str) -> Path:
    p = w / f"{kind}.png"
    data = IMAGES[kind]
    if data is None:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(buf, "JPEG" if "jpeg" in kind else "PNG")
        data = buf.getvalue()[: len(buf.getvalue()) // 3]
    p.write_bytes(data)
    return p


for _kind in IMAGES:
    @case(f"image-{_kind}-predict", "unreadable image")
    def _(w, c, kind=_kind):
        return ["predict", str(_broken_image(w, kind)), "--weights", str(copy("cls.safetensors", w))]

    @case(f"image-{_kind}-segment", "unreadable image")
    def _(w, c, kind=_kind):
        return ["segment", str(_broken_image(w, kind)), "--weights", str(copy("seg.safetensors", w)), "-o", "m"]


def _png_header_only(w: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (a few dozen bytes on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    p = w / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                  chunk(b"IEND", b""))
    return p


for _side in (20_000, 100_000):
    @case(f"image-decompression-bomb-{_side}-predict", "decompression bomb")
    def _(w, c, side=_side):
        return ["predict", str(_png_header_only(w, side, side)), "--weights", str(copy("cls.safetensors", w))]

    @case(f"image-decompression-bomb-{_side}-segment", "decompression bomb")
    def _(w, c, side=_side):
        return ["segment", str(_png_header_only(w, side, side)), "--weights", str(copy("seg.safetensors", w)),
                "-o", "m"]


@case("image-missing-file-predict", "no such file")
def _(w, c):
    return ["predict", str(w / "nope.jpg"), "--weights", str(copy("cls.safetensors", w))]


@case("image-empty-folder-segment", "no images found")
def _(w, c):
    (w / "empty").mkdir()
    return ["segment", str(w / "empty"), "--weights", str(copy("seg.safetensors", w)), "-o", "m"]


# ====================================================================== 6. dataset files
def _idx_set(w: Path, train_labels=None, test_labels=None, test_images=None, raw: dict | None = None) -> Path:
    files = {"train-images-idx3-ubyte": np.zeros((4, 28, 28)), "train-labels-idx1-ubyte": np.arange(4) % 10,
             "t10k-images-idx3-ubyte": np.zeros((3, 28, 28)) if test_images is None else test_images,
             "t10k-labels-idx1-ubyte": np.arange(3) % 10 if test_labels is None else test_labels}
    if train_labels is not None:
        files["train-labels-idx1-ubyte"] = train_labels
    return write_idx_files(w / "fm", files, raw=raw)


def _fm_weights(w: Path) -> Path:
    model = resnetkit.create_model("resnet20", num_classes=10, in_chans=1)
    return save_weights(model, w / "fm.safetensors", class_names=[str(i) for i in range(10)],
                        preprocessing=Preprocessing(size=(28, 28), mean=(0.3,), std=(0.3,), channel_order="L"))


DATA_CASES = {
    "label_out_of_range": (lambda w: _idx_set(w, test_labels=np.array([0, 1, 200])), "outside the 10 classes"),
    "count_mismatch": (lambda w: _idx_set(w, test_labels=np.array([0, 1])), "3 images but 2 labels"),
    "bad_magic": (lambda w: _idx_set(w, raw={"t10k-labels-idx1-ubyte": b"\x07\x07\x07\x07" + b"\0" * 8}),
                  "not an IDX file"),
    "truncated_idx": (lambda w: _idx_set(w, raw={"t10k-images-idx3-ubyte": idx_bytes(np.zeros((3, 28, 28)))[:100]}),
                      "truncated or corrupt IDX"),
    "header_claims_billions": (lambda w: _idx_set(w, raw={"t10k-images-idx3-ubyte": b"\x00\x00\x08\x03" + struct.pack(
        ">3I", 4_000_000_000, 28, 28)}), "truncated or corrupt IDX"),
}

for _name, (_make, _needle) in DATA_CASES.items():
    @case(f"dataset-idx-{_name}-eval", _needle)
    def _(w, c, make=_make):
        return ["eval", "--weights", str(_fm_weights(w)), "--data", "fashion-mnist", "--data-dir", str(make(w)),
                "--out", str(w / "ev")]


@case("dataset-corrupt-gzip-eval", "cannot read")
def _(w, c):
    d = _idx_set(w)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    return ["eval", "--weights", str(_fm_weights(w)), "--data", "fashion-mnist", "--data-dir", str(d), "--out", "ev"]


@case("dataset-cifar-label-out-of-range-eval", "outside the 10 classes")
def _(w, c):
    d = w / "cifar" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [0, 42] if name == "test_batch" else [0, 1]
        (d / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, protocol=2))
    weights = save_weights(resnetkit.create_model("resnet20"), w / "c10.safetensors",
                           preprocessing=Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3))
    return ["eval", "--weights", str(weights), "--data", "cifar10", "--data-dir", str(w / "cifar"), "--out", "ev"]


def _voc(w: Path, mask: np.ndarray | None = None, split: str | None = None) -> Path:
    return voc_copy(w, "val", mask, split)


SEG_DATA_CASES = {
    "mask_class_out_of_range": (lambda w: _voc(w, mask=np.full((17, 17), 77)), "palette index 77 outside"),
    "mask_wrong_size": (lambda w: _voc(w, mask=np.zeros((5, 5))), "mask is 5x5"),
    "split_lists_missing_image": (lambda w: _voc(w, split="ghost_000001\n"), "no such image"),
    "split_empty": (lambda w: _voc(w, split="\n"), "lists no images"),
}

for _name, (_make, _needle) in SEG_DATA_CASES.items():
    @case(f"dataset-voc-{_name}-eval", _needle)
    def _(w, c, make=_make):
        return ["eval", "--weights", str(copy("seg.safetensors", w)), "--data", str(make(w)), "--out", str(w / "ev")]


# ====================================================================== 7. arguments at their edges
def _cls(w):
    return str(copy("cls.safetensors", w))


def _img(w):
    return str(copy("img/p0.png", w))


ARG_CASES = {
    # predict
    "predict-top-k-zero": (lambda w: ["predict", _img(w), "--weights", _cls(w), "--top-k", "0"], "top_k"),
    "predict-top-k-negative": (lambda w: ["predict", _img(w), "--weights", _cls(w), "--top-k", "-3"], "top_k"),
    "predict-top-k-not-int": (lambda w: ["predict", _img(w), "--weights", _cls(w), "--top-k", "two"], "--top-k"),
    "predict-unknown-backend": (lambda w: ["predict", _img(w), "--weights", _cls(w), "--backend", "tpu"], "--backend"),
    "predict-unknown-format": (lambda w: ["predict", _img(w), "--weights", _cls(w), "--format", "xml"], "--format"),
    "predict-workers-negative": (lambda w: ["predict", _img(w), "--weights", _cls(w), "--out", "p.csv", "--workers",
                                            "-2"], "workers"),
    "predict-out-is-the-input": (lambda w: ["predict", _img(w), "--weights", _cls(w), "--out", "p0.png"],
                                 "over the input"),
    "predict-out-exists": (lambda w: (Path("p.csv").write_text("mine"), ["predict", _img(w), "--weights", _cls(w),
                                                                         "--out", "p.csv"])[1], "already exists"),
    "predict-out-inside-input-folder": (lambda w: ["predict", str(copy("img", w)), "--weights", _cls(w), "--out",
                                                   "img/p.csv"], "inside the input"),
    "predict-no-inputs": (lambda w: ["predict", "--weights", _cls(w)], "required"),
    "predict-no-weights": (lambda w: ["predict", _img(w)], "--weights"),
    # eval
    "eval-batch-zero": (lambda w: ["eval", "--weights", _cls(w), "--data", "digits", "--batch-size", "0", "--out",
                                   "e"], "batch_size"),
    "eval-batch-negative": (lambda w: ["eval", "--weights", _cls(w), "--data", "digits", "--batch-size", "-500",
                                       "--out", "e"], "batch_size"),
    "eval-unknown-dataset": (lambda w: ["eval", "--weights", _cls(w), "--data", "imagenet22k", "--out", "e"],
                             "unknown dataset"),
    "eval-misspelt-dataset": (lambda w: ["eval", "--weights", _cls(w), "--data", "fashion-mnst", "--out", "e"],
                              "did you mean fashion-mnist"),
    "eval-wrong-class-count": (lambda w: ["eval", "--weights", _cls(w), "--data", "digits", "--out", "e"],
                               "predicts 3 classes but digits has 10"),
    "eval-existing-eval-json": (lambda w: ((w / "e").mkdir(), (w / "e" / "eval.json").write_text("{}"),
                                           ["eval", "--weights", _cls(w), "--data", "digits", "--out", "e"])[2],
                                "already exists"),
    "eval-missing-data-dir": (lambda w: ["eval", "--weights", _cls(w), "--data", "mnist", "--data-dir", "nope",
                                         "--out", "e"], "no such directory"),
    # segment
    "segment-alpha-negative": (lambda w: ["segment", _img(w), "--weights", str(copy("seg.safetensors", w)), "-o", "m",
                                          "--alpha", "-0.5"], "alpha"),
    "segment-alpha-above-one": (lambda w: ["segment", _img(w), "--weights", str(copy("seg.safetensors", w)), "-o",
                                           "m", "--alpha", "1.5"], "alpha"),
    "segment-alpha-nan": (lambda w: ["segment", _img(w), "--weights", str(copy("seg.safetensors", w)), "-o", "m",
                                     "--alpha", "nan"], "alpha"),
    "segment-output-over-input": (lambda w: ["segment", str(copy("img", w)), "--weights",
                                             str(copy("seg.safetensors", w)), "-o", "img"], "inside the input"),
    "segment-existing-mask": (lambda w: ((w / "m").mkdir(), (w / "m" / "p0.png").write_bytes(b"someone's"),
                                         ["segment", _img(w), "--weights", str(copy("seg.safetensors", w)), "-o",
                                          "m"])[2], "already exists"),
    # export
    "export-unknown-format": (lambda w: ["export", "--weights", _cls(w), "--format", "tflite"], "unknown export"),
    "export-int8-not-onnx": (lambda w: ["export", "--weights", _cls(w), "--format", "torchscript", "--int8"],
                             "--int8 needs --format onnx"),
    "export-int8-no-calibration": (lambda w: ["export", "--weights", _cls(w), "--int8"], "--calib-data"),
    "export-input-zero": (lambda w: ["export", "--weights", _cls(w), "--input", "0"], "--input"),
    "export-input-garbage": (lambda w: ["export", "--weights", _cls(w), "--input", "8x8x8"], "--input"),
    "export-over-the-weights": (lambda w: ["export", "--weights", _cls(w), "--format", "torchscript", "-o",
                                           "cls.safetensors", "--overwrite"], "over the input"),
    "export-existing-output": (lambda w: (Path("m.pt").write_bytes(b"mine"), ["export", "--weights", _cls(w),
                                                                              "--format", "torchscript", "-o",
                                                                              "m.pt"])[1], "already exists"),
    "export-opset-zero": (lambda w: ["export", "--weights", _cls(w), "--opset", "0"], "opset"),
    "export-calib-n-zero": (lambda w: ["export", "--weights", _cls(w), "--int8", "--calib-data", "digits",
                                       "--calib-n", "0"], "--calib-n"),
    # bench
    "bench-batch-zero": (lambda w: ["bench", "--model", "resnet20", "--batch", "0"], "--batch"),
    "bench-iters-negative": (lambda w: ["bench", "--model", "resnet20", "--iters", "-1"], "--iters"),
    "bench-both-model-and-weights": (lambda w: ["bench", "--model", "resnet20", "--weights", _cls(w)], "exactly one"),
    "bench-unknown-backend": (lambda w: ["bench", "--model", "resnet20", "--backend", "eager,tpu"], "unknown backend"),
    "bench-unknown-model": (lambda w: ["bench", "--model", "resnet21"], "unknown model"),
    "bench-threads-negative": (lambda w: ["bench", "--model", "resnet20", "--threads", "-2"], "threads"),
    "bench-warmup-negative": (lambda w: ["bench", "--model", "resnet20", "--warmup", "-1"], "warmup"),
    "bench-json-exists": (lambda w: (Path("b.json").write_text("{}"), ["bench", "--model", "resnet20", "--json",
                                                                        "b.json"])[1], "already exists"),
    # summary / models
    "summary-output-stride-three": (lambda w: ["summary", "resnet_v2_50", "--output-stride", "3"], "output_stride"),
    "summary-output-stride-zero": (lambda w: ["summary", "resnet_v2_50", "--output-stride", "0"], "output_stride"),
    "summary-num-classes-negative": (lambda w: ["summary", "resnet20", "--num-classes", "-5"], "num_classes"),
    "summary-in-chans-zero": (lambda w: ["summary", "resnet20", "--in-chans", "0"], "in_chans"),
    "summary-input-tiny": (lambda w: ["summary", "resnet20", "--input", "2"], "too small"),
    "summary-input-zero": (lambda w: ["summary", "resnet20", "--input", "0"], "--input"),
    "summary-unknown-model": (lambda w: ["summary", "resnet_v3_50"], "unknown model"),
    "models-no-match": (lambda w: ["models", "vgg*"], "no model matches"),
    "models-unknown-task": (lambda w: ["models", "--task", "detection"], "--task"),
    # convert
    "convert-output-is-the-source": (lambda w: (torch.save({}, "x.pth"), ["convert", "x.pth", "-o", "x.pth",
                                                                          "--overwrite"])[1], "over the input"),
    "convert-existing-output": (lambda w: (Path("o.safetensors").write_bytes(b"mine"), torch.save(
        {}, "x.pth"), ["convert", "x.pth", "-o", "o.safetensors"])[2], "already exists"),
    "convert-unknown-arch": (lambda w: (torch.save({}, "x.pth"), ["convert", "x.pth", "-o", "o.safetensors",
                                                                  "--arch", "resnet51"])[1], "unknown model"),
    "convert-class-names-missing": (lambda w: (torch.save({}, "x.pth"), ["convert", "x.pth", "-o", "o.safetensors",
                                                                         "--class-names", "nope.txt"])[1],
                                    "--class-names"),
    "convert-unknown-kind": (lambda w: (Path("x.dat").write_bytes(b"\x00\x01garbage"), [
        "convert", "x.dat", "-o", "o.safetensors"])[1], "cannot tell"),
    "convert-missing-source": (lambda w: ["convert", "nope.pth", "-o", "o.safetensors"], "no such file"),
    "convert-empty-state-dict": (lambda w: (torch.save({}, "x.pth"), ["convert", "x.pth", "-o", "o.safetensors"])[1],
                                 "cannot tell the architecture"),
    "convert-drop-background-torchvision": (lambda w: (torch.save({}, "x.pth"), [
        "convert", "x.pth", "-o", "o.safetensors", "--from", "torchvision", "--drop-background"])[1],
        "drop_background"),
    # data make-shapes
    "shapes-size-tiny": (lambda w: ["data", "make-shapes", "d", "--size", "4"], "size 4"),
    "shapes-n-train-zero": (lambda w: ["data", "make-shapes", "d", "--n-train", "0"], "n_train"),
    "shapes-n-val-negative": (lambda w: ["data", "make-shapes", "d", "--n-val", "-1"], "n_val"),
    "shapes-seed-negative": (lambda w: ["data", "make-shapes", "d", "--seed", "-1"], "seed"),
    "shapes-non-empty-folder": (lambda w: ((w / "d").mkdir(), (w / "d" / "notes.txt").write_text("mine"),
                                           ["data", "make-shapes", "d"])[2], "not empty"),
    "shapes-path-is-a-file": (lambda w: (Path("d").write_text("mine"), ["data", "make-shapes", "d"])[1],
                              "not a folder"),
    "unknown-command": (lambda w: ["frobnicate"], "invalid choice"),
}

for _name, (_argv, _needle) in ARG_CASES.items():
    case(f"args-{_name}", _needle)(lambda w, c, argv=_argv: [str(a) for a in argv(w)])


# ====================================================================== 8. disk faults
def _fail_on_replace(code: int, monkeypatch):
    real = os.replace

    def replace(a, b):
        if ".tmp" in str(a):
            raise OSError(code, os.strerror(code), str(b))
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)


DISK_ARGV = {
    "export": lambda w: ["export", "--weights", _cls(w), "--format", "torchscript", "-o", "m.pt"],
    "predict-out": lambda w: ["predict", _img(w), "--weights", _cls(w), "--out", "p.csv", "--workers", "0"],
    "segment": lambda w: ["segment", _img(w), "--weights", str(copy("seg.safetensors", w)), "-o", "m"],
    "eval": lambda w: ["eval", "--weights", _cls(w), "--data", "digits", "--out", "e"],
    "make-shapes": lambda w: ["data", "make-shapes", "d", "--n-train", "1", "--n-val", "1", "--size", "16"],
    "bench-json": lambda w: ["bench", "--model", "resnet20", "--backend", "eager", "--iters", "1", "--warmup", "0",
                             "--batch", "1", "--json", "b.json"],
}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES], ids=errno.errorcode.get)
@pytest.mark.parametrize("command", list(DISK_ARGV))
def test_disk_faults(command, code, materials, tmp_path, capsys, monkeypatch):
    work, tmp, _ = sandbox(materials, tmp_path, monkeypatch)
    argv = DISK_ARGV[command](work)
    before = hashes(work)
    _fail_on_replace(code, monkeypatch)
    rc, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and errno.errorcode[code] in lines[0] and "Traceback" not in err, err
    assert hashes(work) == before, "a partial file was left or an old one changed"
    assert left_in(tmp) == []
