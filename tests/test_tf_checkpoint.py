"""The pure-Python TensorFlow checkpoint reader, against checkpoints written by real TensorFlow
(tests/fixtures/tf_slim, made by tests/fixtures/make_tf_slim_fixtures.py). No TensorFlow needed."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from resnetkit.convert.tf_checkpoint import (
    CheckpointError,
    CheckpointReader,
    crc32c,
    list_variables,
    read_checkpoint,
)
from resnetkit.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "tf_slim"
CASES = ["v1_cls_gp_odd33", "v2_cls_gp_even32"]
FORMATS = ["v2fmt", "v1fmt"]


def _expected(npz_name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{npz_name}.npz") as data:
        return {k[len("var/"):]: data[k] for k in data.files if k.startswith("var/")}


def _copy_v2(case: str, tmp_path: Path) -> Path:
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(FIXTURES / f"{case}_v2fmt.ckpt{suffix}", tmp_path / f"model.ckpt{suffix}")
    return tmp_path / "model.ckpt"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES)
def test_reads_slim_checkpoint_exactly(case, fmt):
    expected = _expected(case)
    got = read_checkpoint(FIXTURES / f"{case}_{fmt}.ckpt")
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_v2_accepts_prefix_index_data_file_and_directory(case, tmp_path):
    expected = _expected(case)
    name = next(iter(expected))
    for path in (FIXTURES / f"{case}_v2fmt.ckpt.index", FIXTURES / f"{case}_v2fmt.ckpt.data-00000-of-00001"):
        np.testing.assert_array_equal(read_checkpoint(path)[name], expected[name])
    prefix = _copy_v2(case, tmp_path)
    assert CheckpointReader(tmp_path).format == "v2"
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    np.testing.assert_array_equal(read_checkpoint(tmp_path)[name], expected[name])
    assert CheckpointReader(prefix).format == "v2"
    assert CheckpointReader(FIXTURES / f"{case}_v1fmt.ckpt").format == "v1"


@pytest.mark.parametrize("fmt", FORMATS)
def test_list_variables(fmt):
    expected = _expected("v1_cls_gp_odd33")
    listed = list_variables(FIXTURES / f"v1_cls_gp_odd33_{fmt}.ckpt")
    assert listed == {name: ("float32", arr.shape) for name, arr in sorted(expected.items())}
    assert listed["resnet_v1/conv1/weights"] == ("float32", (7, 7, 3, 64))
    assert list(listed) == sorted(listed)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtypes_scalars_empty_and_partitioned(fmt):
    path = FIXTURES / f"reader_dtypes_{fmt}.ckpt"
    expected = _expected("reader_dtypes")
    if fmt == "v1fmt":  # TF's V1 writer cannot save bfloat16
        del expected["bf16"]
    listed = list_variables(path)
    assert listed["text"] == ("string", (2,))
    assert listed["part"] == ("float32", (10, 3))
    assert listed["f16"] == ("float16", (3, 5))
    if fmt == "v2fmt":
        assert listed["bf16"] == ("bfloat16", (2, 3))
    with pytest.warns(UserWarning, match=r"text \(string\)"):
        got = read_checkpoint(path)
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    with pytest.raises(CheckpointError, match="text.*string"):
        read_checkpoint(path, strict=True)
    with pytest.raises(CheckpointError, match="no tensor named 'nope'"):
        CheckpointReader(path).read("nope")


def test_crc32c_known_values():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=300_007, dtype=np.uint8).tobytes()
    # the vectorized path (long input) agrees with the byte loop (a prefix and a suffix combined)
    from resnetkit.convert.tf_checkpoint import _crc_loop

    assert crc32c(data) == _crc_loop(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def _error(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        read_checkpoint(path)
    assert isinstance(info.value, UserError)
    return str(info.value)


def test_truncated_index(tmp_path):
    prefix = _copy_v2("v1_cls_gp_odd33", tmp_path)
    index = prefix.with_name("model.ckpt.index")
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2])
    assert "model.ckpt.index" in _error(prefix, "bad magic")
    index.write_bytes(data[:20])
    _error(prefix, "too short")
    index.write_bytes(data[:100] + data[-48:])  # footer intact, blocks gone
    _error(prefix, "model.ckpt.index.*(outside the file|CRC32C)")


def test_truncated_data_file(tmp_path):
    prefix = _copy_v2("v1_cls_gp_odd33", tmp_path)
    shard = prefix.with_name("model.ckpt.data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[:-100])
    message = _error(prefix, "truncated")
    assert "data-00000-of-00001" in message


def test_flipped_byte_in_data_fails_crc(tmp_path):
    prefix = _copy_v2("v2_cls_gp_even32", tmp_path)
    shard = prefix.with_name("model.ckpt.data-00000-of-00001")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    assert "data-00000-of-00001" in _error(prefix, "CRC32C")
    # without verification the read succeeds (and returns the modified values)
    assert len(read_checkpoint(prefix, verify=False)) == len(_expected("v2_cls_gp_even32"))


def test_flipped_byte_in_v1_file_fails_crc(tmp_path):
    path = tmp_path / "model.ckpt"
    data = bytearray((FIXTURES / "v1_cls_gp_odd33_v1fmt.ckpt").read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    _error(path, "model.ckpt")


def test_missing_shard(tmp_path):
    prefix = _copy_v2("v1_cls_gp_odd33", tmp_path)
    prefix.with_name("model.ckpt.data-00000-of-00001").unlink()
    assert "model.ckpt.data-00000-of-00001" in _error(prefix, "data file missing")


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "junk.ckpt" in _error(junk, "not a TensorFlow checkpoint")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    _error(tmp_path / "empty.ckpt", "too short")
    _error(tmp_path / "absent.ckpt", "no TensorFlow checkpoint at")
    fake_index = tmp_path / "fake.ckpt.index"
    fake_index.write_bytes(b"x" * 100)
    _error(tmp_path / "fake.ckpt", "bad magic")


def test_v1_table_without_meta_and_bad_bundle(tmp_path):
    # A V2 index is a valid table, but not a V1 checkpoint: it has no SavedTensorSliceMeta.
    fake_v1 = tmp_path / "model.ckpt"
    fake_v1.write_bytes((FIXTURES / "v1_cls_gp_odd33_v2fmt.ckpt.index").read_bytes())
    with pytest.raises(CheckpointError, match="not a TensorFlow V1 checkpoint|corrupt"):
        CheckpointReader(fake_v1)


def test_no_tensorflow_imported():
    import sys

    read_checkpoint(FIXTURES / "v1_cls_gp_odd33_v2fmt.ckpt")
    assert "tensorflow" not in sys.modules


def test_no_warning_for_plain_checkpoint():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_checkpoint(FIXTURES / "v2_cls_gp_even32_v1fmt.ckpt")
