"""An image folder in memory costs its decoded uint8 size, and data.stream=auto decides by measured costs."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetkit.cli import main
from resnetkit.data import ImageSet, StreamOptions, load_classification, memory
from resnetkit.data.datasets import split_90_10
from resnetkit.data.folder import read_folder
from resnetkit.errors import ConfigError

SIZE = 64  # decoded: 3 x 64 x 64 = 12 KiB per image


def make_photos(root: Path, n: int, classes: int = 4, seed: int = 0) -> Path:
    """n small JPEGs in `classes` class folders, of varied sizes (resized to SIZE when read)."""
    rs = np.random.RandomState(seed)
    for i in range(n):
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = rs.randint(20, 40, 2)
        Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i:04d}.jpg", quality=80)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("photos")
    return {n: make_photos(base / str(n), n) for n in (100, 400)}


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


OPTS = StreamOptions(image_size=SIZE)


def test_in_memory_folder_peaks_at_about_its_decoded_size(photos):
    # The peak's growth from 100 to 400 images, per image, so that constant scratch cancels (the statistics count
    # 64 images of 64 px at a time). Whole-array float64 copies made it ~17x the decoded size, np.stack or
    # x[train] ~2x; now it is ~1.0x.
    load = lambda n: load_classification(f"folder:{photos[n]}",  # noqa: E731
                                         options=StreamOptions(stream="off", image_size=SIZE))
    slope = (peak_bytes(lambda: load(400)) - peak_bytes(lambda: load(100))) / 300
    decoded = 3 * SIZE * SIZE
    assert slope < 1.5 * decoded, f"{slope:.0f} bytes per image at the peak, decoded {decoded}"


def test_statistics_and_split_are_those_of_a_float64_reference(photos):
    train, test = load_classification(f"folder:{photos[100]}",
                                      options=StreamOptions(stream="off", image_size=SIZE))
    x, y, _ = read_folder(photos[100], SIZE)
    tr, te = split_90_10(len(y))  # the fixed 90/10 split: train and test rows as x[tr], x[te] gave them
    assert np.array_equal(train.images.numpy(), x[tr]) and np.array_equal(test.images.numpy(), x[te])
    assert np.array_equal(train.labels.numpy(), y[tr]) and np.array_equal(test.labels.numpy(), y[te])
    xf = x[tr].astype(np.float64) / 255
    assert np.abs(np.array(train.mean) - xf.mean(axis=(0, 2, 3))).max() < 1e-12
    assert np.abs(np.array(train.std) - (xf.std(axis=(0, 2, 3)) + 1e-6)).max() < 1e-12
    assert train.images.data_ptr() != 0 and train.images.to("cpu").data_ptr() == train.images.data_ptr()


def test_measured_cost_per_image_is_the_decoded_size(photos):
    cost = memory.measure([str(p) for p in sorted(photos[100].rglob("*.jpg"))], SIZE, 3)
    assert cost is not None and cost.sampled == memory.SAMPLE and cost.decode_s > 0
    assert 3 * SIZE * SIZE <= cost.bytes < 1.1 * 3 * SIZE * SIZE


def test_auto_weighs_memory_and_decode_time(photos, caplog, monkeypatch):
    spec = f"folder:{photos[100]}"
    with caplog.at_level(logging.INFO, logger="resnetkit.data"):
        held, _ = load_classification(spec, options=OPTS, planned_epochs=50)
    assert isinstance(held, ImageSet)
    assert "KiB per image measured" in caplog.text and "x 50.00 planned epochs" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnetkit.data"):  # a fraction of an epoch: decoding all is waste
        short, _ = load_classification(spec, options=OPTS, planned_epochs=0.1)
    assert not isinstance(short, ImageSet) and "streaming decodes less" in caplog.text
    # Memory: 100 images need ~1.2 MiB; with 2 MiB available, at most half may be held.
    monkeypatch.setattr(memory, "available_memory", lambda: 2 << 20)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnetkit.data"):
        big, _ = load_classification(spec, options=OPTS)
    assert not isinstance(big, ImageSet) and "in memory would not fit" in caplog.text
    with pytest.raises(ConfigError, match=r"stream='off': 100 images at 64 px would hold 1\.2 MiB"):
        load_classification(spec, options=StreamOptions(stream="off", image_size=SIZE))


def test_cli_refuses_stream_off_that_does_not_fit(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory, "available_memory", lambda: 2 << 20)
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--model", "resnet20", "--data", f"folder:{photos[100]}", "--stream", "off",
               "--set", f"data.image_size={SIZE}", "--set", "schedule.steps=1", "--out", "run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("resnetkit: error:") and "--stream off: stream='off': 100 images" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "model.safetensors").exists()
