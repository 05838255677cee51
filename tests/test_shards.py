"""Tar shards as WebDataset defines them (resnetkit.data.shards): shards written by GNU tar (`./` names, a
folder with a dot), by webdataset's own TarWriter (the format's oracle) and read over http:// and file://
train and evaluate exactly like the shards `resnetkit data pack` writes of the same images."""

import functools
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import torch
import webdataset
from safetensors.torch import load_file

from resnetkit.cli import main
from resnetkit.data.shards import load_shards, sample_key, samples
from resnetkit.data.stream import EvalTransform, TrainTransform
from resnetkit.errors import DependencyError
from tests.test_stream import FAST, make_folder

TRAIN_T, EVAL_T = TrainTransform(16), EvalTransform(16, 18)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """`data pack` of 2 x 12 train and 2 x 3 val tiny JPEGs, in three train shards: ROOT/pack/."""
    root = tmp_path_factory.mktemp("shards")
    make_folder(root / "imgs" / "train", 12, suffix=".jpg", size=(24, 18))
    make_folder(root / "imgs" / "val", 3, suffix=".jpg", size=(18, 24), seed=1)
    assert main(["data", "pack", str(root / "imgs"), str(root / "pack"), "--shard-size", "24K"]) == 0
    assert len(list((root / "pack").glob("train-*.tar"))) == 3
    return root


def pack_shards(root: Path, split: str) -> list[Path]:
    return sorted((root / "pack").glob(f"{split}-*.tar"))


def pack_samples(shard: Path) -> list[tuple[bytes, int]]:
    """(JPEG bytes, label) of a `data pack` shard, in its order."""
    return [(image, int(label)) for _, image, label, _ in samples(str(shard))]


def pattern(folder: Path, split: str, n: int) -> str:
    return f"{folder}/{split}-{{000000..{n - 1:06d}}}.tar"


def gnu_tar_copy(root: Path, out: Path) -> Path:
    """The pack's shards rewritten by GNU tar from a folder of files v1.0/NNNNNN.{jpg,cls}: members
    './v1.0/000000.cls', ... (what `tar -C dir -cf x.tar .` writes; --sort=name keeps a sample's files
    together), without an index.json, into OUT."""
    for split in ("train", "val"):
        for k, shard in enumerate(pack_shards(root, split)):
            src = out.parent / f"{out.name}-src-{split}-{k}"
            (src / "v1.0").mkdir(parents=True)
            for j, (image, label) in enumerate(pack_samples(shard)):  # names sort in the pack's order
                (src / "v1.0" / f"{j:06d}.jpg").write_bytes(image)
                (src / "v1.0" / f"{j:06d}.cls").write_text(str(label))
            out.mkdir(exist_ok=True)
            subprocess.run(["tar", "--sort=name", "-C", str(src), "-cf", str(out / f"{split}-{k:06d}.tar"), "."],
                           check=True)
    with tarfile.open(out / "train-000000.tar") as t:
        names = t.getnames()
    assert names[:3] == [".", "./v1.0", "./v1.0/000000.cls"], names[:3]  # really GNU tar's "./" names
    return out


def webdataset_copy(root: Path, out: Path) -> Path:
    """The pack's shards rewritten by webdataset.TarWriter (keys in a folder, cls as an int) into OUT."""
    out.mkdir()
    for split in ("train", "val"):
        for k, shard in enumerate(pack_shards(root, split)):
            with webdataset.TarWriter(str(out / f"{split}-{k:06d}.tar")) as w:
                for j, (image, label) in enumerate(pack_samples(shard)):
                    w.write({"__key__": f"imgs.v2/{j:06d}", "jpg": image, "cls": label})
    return out


def first_batches(train_pattern: str, val_pattern: str, workers: int = 0):
    train, val = load_shards(train_pattern, val_pattern, TRAIN_T, EVAL_T, workers=workers)
    xs = [(b["x"], b["y"]) for b in train.train_batches(4, 0, 0, 8, 0, 1, 1)]
    return len(train), len(val), train.num_classes, xs, list(val.eval_batches(0, 1, 4))


def assert_same_batches(a, b) -> None:
    assert a[:3] == b[:3]  # sample counts and class count
    for (xa, ya), (xb, yb) in zip(a[3] + a[4], b[3] + b[4], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def train_run(data: str, val: str | None, out: Path, *extra: str) -> dict:
    args = ["train", "--model", "resnet20", "--data", f"shards:{data}", "--stream", "on", "--set",
            "data.train_crop=16", "--set", "data.eval_crop=16", "--batch-size", "8", "--set", "schedule.steps=2",
            "--workers", "0", "--deterministic", "--out", str(out), *FAST, *extra]
    assert main(args + (["--val", val] if val else [])) == 0
    return load_file(out / "model.safetensors")


def test_the_key_rule_is_webdatasets():
    assert sample_key("a/b.c/k.seg.png") == ("a/b.c/k", "seg.png")
    assert sample_key("./000001.jpg") == ("000001", "jpg")
    assert sample_key("v1.0/000001.JPG") == ("v1.0/000001", "jpg")  # fields lower-cased, as WebDataset does
    assert sample_key("README") is None and sample_key("x/.hidden") is None


def test_samples_group_members_by_key_and_skip_other_fields(tmp_path):
    """Python's tarfile writing keys with dotted folders, a segmentation field, a label.txt and a stray file."""
    members = [("a/b.c/k.png", b"P"), ("a/b.c/k.seg.png", b"S"), ("a/b.c/k.label.txt", b"1"), ("README", b"hi"),
               ("a/b.c/k2.jpeg", b"J"), ("a/b.c/k2.cls", b"0"), ("a/b.c/k2.label", b"1")]
    with tarfile.open(tmp_path / "x.tar", "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    got = list(samples(str(tmp_path / "x.tar")))
    assert got == [("a/b.c/k", b"P", b"1", ".png"), ("a/b.c/k2", b"J", b"0", ".jpeg")]  # .cls wins over .label


@pytest.mark.parametrize("writer", [gnu_tar_copy, webdataset_copy], ids=["gnu-tar", "webdataset-tarwriter"])
def test_foreign_shards_train_and_evaluate_like_packed_ones(packed, writer, tmp_path, one_thread):
    """The same images in the same order give the same batches and, trained for two steps, the same weights."""
    n = len(pack_shards(packed, "train"))
    foreign = writer(packed, tmp_path / "foreign")
    want = first_batches(pattern(packed / "pack", "train", n), pattern(packed / "pack", "val", 1))
    got = first_batches(pattern(foreign, "train", n), pattern(foreign, "val", 1))
    assert want[:3] == (24, 6, 2)
    assert_same_batches(want, got)
    ours = train_run(pattern(packed / "pack", "train", n), None, tmp_path / "ours")
    theirs = train_run(pattern(foreign, "train", n), pattern(foreign, "val", 1), tmp_path / "theirs")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    last = [json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[-1]) for r in ("ours", "theirs")]
    assert [(r["test_loss"], r["test_err"]) for r in last] == [(last[0]["test_loss"], last[0]["test_err"])] * 2


@pytest.fixture()
def served(packed):
    """An http.server on 127.0.0.1 serving ROOT (pack/ with its index.json, and what a test adds)."""
    handler = functools.partial(_QuietHandler, directory=str(packed))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_shards_over_http_and_file_urls(packed, served, tmp_path, capsys, one_thread):
    """URLs with brace patterns: the index.json beside them is read (counts, classes, val shards), batches
    equal the local ones with forked workers too, and `resnetkit train` / `eval` run on them."""
    n = len(pack_shards(packed, "train"))
    local = pattern(packed / "pack", "train", n)
    for url in (pattern(f"{served}/pack", "train", n), f"file://{local}"):
        assert_same_batches(first_batches(local, None, workers=2), first_batches(url, None, workers=2))
    train, _ = load_shards(pattern(f"{served}/pack", "train", n), None, TRAIN_T, EVAL_T)
    assert train.class_names == ["a", "b"] and train.counts == [int(c) for _, c in json.loads(
        (packed / "pack" / "index.json").read_text())["splits"]["train"]]
    ours = train_run(local, None, tmp_path / "local")
    remote = train_run(pattern(f"{served}/pack", "train", n), None, tmp_path / "remote")
    assert all(torch.equal(ours[k], remote[k]) for k in ours)
    for name, data in (("local", local), ("remote", pattern(f"{served}/pack", "train", n))):
        assert main(["eval", "--weights", str(tmp_path / "local" / "model.safetensors"), "--data", f"shards:{data}",
                     "--batch-size", "4", "--backend", "eager", "--out", str(tmp_path / f"eval-{name}")]) == 0
    ev = [json.loads((tmp_path / f"eval-{name}" / "eval.json").read_text()) for name in ("local", "remote")]
    assert ev[0]["n"] == ev[1]["n"] == 6 and ev[0]["confusion_matrix"] == ev[1]["confusion_matrix"]
    # shards without an index.json over http are scanned; a missing one is named
    gnu = gnu_tar_copy(packed, packed / "served-gnu")
    rel = gnu.relative_to(packed)
    scanned, val = load_shards(pattern(f"{served}/{rel}", "train", n), f"{served}/{rel}/val-000000.tar", TRAIN_T,
                               EVAL_T)
    assert (len(scanned), len(val), scanned.class_names) == (24, 6, ["0", "1"])
    capsys.readouterr()
    assert main(["train", "--data", f"shards:{served}/pack/train-{{000000..000009}}.tar", "--set",
                 "schedule.steps=1", "--out", str(tmp_path / "x")]) == 2
    assert "train-000009.tar does not exist" in capsys.readouterr().err


def test_a_url_without_its_package_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed, whatever this machine has
    assert main(["train", "--data", "shards:s3://bucket/train-{000000..000003}.tar", "--set", "schedule.steps=1",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetkit: error: s3://bucket/train-000000.tar:") and "s3fs" in err
    assert "resnetkit[remote]" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # fsspec's http client
    with pytest.raises(DependencyError, match=r"aiohttp.*\(pip install 'resnetkit\[remote\]'\)"):
        load_shards("http://127.0.0.1:9/train-000000.tar", None, TRAIN_T, EVAL_T)
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(DependencyError, match=r"needs fsspec \(pip install 'resnetkit\[remote\]'\)"):
        load_shards("http://127.0.0.1:9/train-000000.tar", None, TRAIN_T, EVAL_T)
