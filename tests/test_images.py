"""Images as users have them: 16-bit PNGs are scaled, not clipped; decompression bombs are refused by name."""

import numpy as np
import pytest
from PIL import Image

from resnetkit._helpers import open_image
from resnetkit.data.folder import load_image
from resnetkit.errors import DataError
from resnetkit.weights import Preprocessing


@pytest.fixture
def png16(tmp_path):
    """A 16-bit grey ramp: 0 .. 65535."""
    a = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I")
    return path, a


def test_16_bit_images_are_scaled_to_8_bits(png16):
    path, a = png16
    for mode in ("L", "RGB"):
        got = np.asarray(open_image(path, mode), dtype=np.float64)
        got = got if got.ndim == 2 else got[..., 0]
        np.testing.assert_allclose(got, a / 257, atol=0.51)  # PIL's own convert would clip 255+ to 255
    x = Preprocessing(size=(32, 32), mean=(0.0,), std=(1.0,), channel_order="L")(path)
    assert 0.45 < float(x.mean()) < 0.55 and float(x.max()) == pytest.approx(1.0)
    folder = load_image(path, 32, 1)
    assert folder.dtype == np.uint8 and 100 < folder.mean() < 155


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 2 - 1)  # between the warning and the error
    with pytest.raises(DataError, match="big.png: refused as a decompression bomb"):
        open_image(path, "RGB")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 3)  # past PIL's own error threshold too
    with pytest.raises(DataError, match="decompression bomb"):
        open_image(path, "RGB")


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a", b"not an image"])
def test_broken_images_are_one_named_error(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match="broken.png: unreadable image"):
        open_image(path, "RGB")
