"""Data: idx and CIFAR readers on files the tests write, safe tar extraction, image folders, augmentation."""

import gzip
import io
import logging
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.data import BatchAugment, datasets, load_dataset, normalize
from resnetkit.data.idx import read_idx
from resnetkit.data.loader import derived_generator, epoch_batches
from resnetkit.download import DownloadError, safe_extract_tar
from resnetkit.errors import UserError
from tests.idx_data import idx_bytes, write_idx_files


def write_idx_set(folder, n_train=6, n_test=4, gz=True):
    rng = np.random.RandomState(0)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    write_idx_files(folder, arrays, gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_roundtrip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 7
    data = idx_bytes(a)
    p = tmp_path / "x.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(p)
    assert out.shape == (2, 3, 4) and np.array_equal(out, a)


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((10, 5), np.uint8))[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_from_data_dir(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    train, test = load_dataset("fashion-mnist", str(tmp_path))
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert test.labels.tolist() == [0, 1, 2, 3] and train.class_names[0] == "T-shirt/top"
    assert train.preprocessing().to_dict() == {"size": [28, 28], "mean": [0.2860], "std": [0.3530],
                                               "channel_order": "L", "interpolation": "bilinear", "resize": None,
                                               "crop": None, "crop_fraction": None, "name": ""}


def test_offline_error_names_every_way_out(tmp_path, monkeypatch):
    entry = datasets.IDX_DATASETS["fashion_mnist"]
    monkeypatch.setitem(datasets.IDX_DATASETS, "fashion_mnist", entry[:3] + (str(tmp_path / "none"),) + entry[4:])
    monkeypatch.setenv("RESNETKIT_DATA", str(tmp_path / "cache"))

    def offline(url, dest, md5=None, timeout_s=60.0):
        raise DownloadError(f"cannot download {url} (Temporary failure in name resolution)")

    monkeypatch.setattr(datasets.download, "download", offline)
    with pytest.raises(UserError) as e:
        load_dataset("fashion_mnist")
    msg = str(e.value)
    assert "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert str(tmp_path / "cache" / "fashion_mnist") in msg and "train-images-idx3-ubyte.gz" in msg


def test_missing_data_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_dataset("mnist", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="not all in data_dir"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imagenet21k")


def write_cifar10(root, n=4):
    """A tiny CIFAR-10 python-format folder, pickled as the original (protocol 2, bytes keys)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.RandomState(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        b = {b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8), b"labels": list(rng.randint(0, 10, n))}
        (d / name).write_bytes(pickle.dumps(b, protocol=2))
        batches[name] = b
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return batches


def test_cifar_reader(tmp_path):
    batches = write_cifar10(tmp_path)
    train, test = load_dataset("cifar10", str(tmp_path))
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    first = batches["data_batch_1"][b"data"][0]
    assert torch.equal(train.images[0, 1].flatten(), torch.from_numpy(first[1024:2048]))  # green plane
    assert test.labels.tolist() == [int(v) for v in batches["test_batch"][b"labels"]]
    assert train.class_names[-1] == "truck" and train.pad == 4 and train.flip


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_reader_refuses_code_in_pickles(tmp_path, capsys):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(UserError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_dataset("cifar10", str(tmp_path))
    assert "pwned" not in capsys.readouterr().out


def _tar_with(path, name, kind=tarfile.REGTYPE):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))


@pytest.mark.parametrize("name,kind", [("../escape.txt", tarfile.REGTYPE), ("a/../../escape.txt", tarfile.REGTYPE),
                                       ("/tmp/abs_escape.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)])
def test_tar_extraction_refuses_escapes(tmp_path, name, kind):
    archive = tmp_path / "evil.tar.gz"
    _tar_with(archive, name, kind)
    target = tmp_path / "out"
    with pytest.raises(UserError, match="refusing member"):
        safe_extract_tar(archive, target)
    assert not (tmp_path / "escape.txt").exists() and not target.exists()  # nothing half-extracted


def test_tar_extraction_normal_member(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    _tar_with(archive, "cifar/data.bin")
    safe_extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "cifar" / "data.bin").read_bytes() == b"hi"


def test_digits_split_is_fixed():
    train, test = load_dataset("digits")
    train2, test2 = load_dataset("digits")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert torch.equal(test.labels, test2.labels) and int(train.images.max()) == 255
    assert set(test.labels.tolist()) == set(range(10))


def write_folder(root, corrupt=True):
    for c, color in (("cat", 30), ("dog", 200)):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 9), (color, i * 40, 0)).save(root / c / f"{i}.png")
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"not a png at all")


def test_image_folder_skips_corrupt_images(tmp_path, caplog):
    write_folder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING):
        train, test = load_dataset(f"folder:{tmp_path / 'imgs'}", image_size=16)
    assert len(train) + len(test) == 6 and train.class_names == ["cat", "dog"]
    assert train.images.shape[1:] == (3, 16, 16)
    assert "skipped 1 unreadable image" in caplog.text and "broken.png" in caplog.text
    with pytest.raises(UserError, match="broken.png"):
        load_dataset(f"folder:{tmp_path / 'imgs'}", strict=True)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="hold no images"):
        load_dataset(f"folder:{tmp_path / 'noimg'}")


def test_image_folder_train_val_layout(tmp_path):
    write_folder(tmp_path / "ds" / "train", corrupt=False)
    write_folder(tmp_path / "ds" / "val", corrupt=False)
    train, test = load_dataset(f"folder:{tmp_path / 'ds'}", image_size=8, channels=1)
    assert len(train) == len(test) == 6 and train.images.shape[1:] == (1, 8, 8)


def test_crop_and_flip_match_a_reference():
    x = torch.randint(0, 256, (16, 3, 10, 10), dtype=torch.uint8)
    aug = BatchAugment(pad=2, flip=True)
    p = aug.sample(16, derived_generator(0, 0, 0))
    out = aug.crop_flip(x, p)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        dy, dx = int(p["dy"][i]), int(p["dx"][i])
        ref = padded[i, :, dy:dy + 10, dx:dx + 10]
        if p["flip"][i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert p["flip"].sum() not in (0, 16) and len(set(p["dx"].tolist())) > 1


def test_augmentation_is_deterministic_and_identity_when_off():
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    aug = BatchAugment(pad=2, flip=True, cutout=8)
    a = aug.crop_flip(x, aug.sample(8, derived_generator(3, 1, 5)))
    b = aug.crop_flip(x, aug.sample(8, derived_generator(3, 1, 5)))
    c = aug.crop_flip(x, aug.sample(8, derived_generator(3, 1, 6)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    off = BatchAugment()
    assert torch.equal(off.crop_flip(x, off.sample(8, derived_generator(0))), x)


def test_cutout_zeroes_a_square_after_normalisation():
    x = torch.full((4, 1, 16, 16), 200, dtype=torch.uint8)
    aug = BatchAugment(cutout=4)
    p = aug.sample(4, derived_generator(1))
    p["cy"], p["cx"] = torch.full((4,), 8), torch.full((4,), 8)  # centred: the square lies inside
    y = aug.apply_cutout(normalize(x, torch.tensor([0.5]), torch.tensor([0.25])), p)
    assert ((y == 0).sum(dim=(1, 2, 3)) == 16).all()
    assert torch.allclose(y[y != 0], torch.tensor((200 / 255 - 0.5) / 0.25))


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = [idx for _, idx in epoch_batches(100, 32, seed=0, epoch=2)]
    b = [idx for _, idx in epoch_batches(100, 32, seed=0, epoch=2, start=1)]
    c = [idx for _, idx in epoch_batches(100, 32, seed=0, epoch=3)]
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a[1:], b))
    assert not torch.equal(a[0], c[0])
    assert len(set(torch.cat(a).tolist())) == 96  # no repeats within an epoch
