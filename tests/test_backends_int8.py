"""`auto` weighs the int8 backends under the same agreement rule as the others, judged on images other than
the ones the int8 candidates calibrate on; `auto-fp32` keeps fp32. The candidate list follows the CPU: tested
on this CPU as it is, and on a pretended one without bf16 or VNNI (RESNETKIT_CPU_FLAGS)."""

import json

import pytest
import torch

import resnetkit
from resnetkit.export.auto import CALIB_N, FP32, QUANT_CALIB_N, auto_backend, default_candidates
from resnetkit.export.backends import make_backend
from resnetkit.export.runtimes import cpu_flags
from tests.conftest import randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")
VNNI = {"avx512_vnni", "avx_vnni", "amx_int8"}  # as cpu_flags() names them: tested with and without
BF16 = {"avx512_bf16", "amx_bf16"}  # as cpu_flags() names them


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_bn(resnetkit.create_model("resnet20", num_classes=10)).eval()


@pytest.fixture
def calib():
    return torch.randn(CALIB_N, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "backends.json"


@pytest.mark.parametrize("pretend", [None, "sse4_2,avx2,fma"], ids=["this-cpu", "avx2-only"])
def test_candidates_follow_the_cpu(pretend, monkeypatch):
    if pretend:
        monkeypatch.setenv("RESNETKIT_CPU_FLAGS", pretend)
    flags = cpu_flags()
    names = default_candidates()
    assert "onnxruntime-int8" in names and "onnxruntime" in names and names[0] == "channels_last"
    assert ("int8" in names) == bool(flags & VNNI)  # PT2E int8 only where VNNI/AMX make it fast
    assert ("compile-bf16" in names) == bool(flags & BF16) and ("compile" in names) != bool(flags & BF16)
    assert default_candidates(fp32=True) == list(FP32)  # what auto-fp32 weighs, on any CPU


def _wrong_on(model, rows: slice):
    """A candidate that answers like the model except on the calibration set's images `rows` (by content)."""
    def build():
        def run(x):
            out = model(x)
            bad = torch.zeros(len(x), dtype=torch.bool)
            for i, img in enumerate(x):
                bad[i] = any(torch.equal(img, r) for r in build.calib[rows])
            return torch.where(bad[:, None], -out, out)
        return run
    return build


def test_agreement_is_judged_on_images_the_int8_candidates_did_not_calibrate_on(model, calib, cache):
    """Wrong only on the QUANT_CALIB_N calibration images: accepted at 100%; wrong only on held-out ones: rejected.
    The cache entry says how the calibration set was split."""
    on_calib, on_held = _wrong_on(model, slice(0, QUANT_CALIB_N)), _wrong_on(model, slice(QUANT_CALIB_N, None))
    on_calib.calib = on_held.calib = calib
    b = auto_backend(model, calib=calib, batch_size=16,
                     candidates=["channels_last", ("calib-only", on_calib), ("held-out", on_held)])
    r = b.decision["results"]
    assert r["calib-only"]["ok"] and r["calib-only"]["agreement"] == 1.0
    assert not r["held-out"]["ok"] and r["held-out"]["agreement"] == 0.0
    entry = json.loads(cache.read_text())["entries"][0]
    assert entry["calib"] == {"n": CALIB_N, "source": "the job's images", "int8_calibration": QUANT_CALIB_N,
                              "agreement_on": CALIB_N - QUANT_CALIB_N}


def test_auto_measures_onnxruntime_int8_and_auto_fp32_keeps_fp32(model, calib, cache):
    """auto measures ORT int8 beside the others (quantisation counted in its setup time); auto-fp32 then picks
    among fp32 candidates only, measuring just the ones the cache entry lacks and adding them to it."""
    b = auto_backend(model, calib=calib, batch_size=16, candidates=["channels_last", "onnxruntime-int8"])
    q = b.decision["results"]["onnxruntime-int8"]
    assert {"img_s", "setup_s", "agreement", "ok"} <= set(q) and q["setup_s"] > 0 and 0 <= q["agreement"] <= 1
    assert q["ok"] == (q["agreement"] >= 0.995)
    fp32 = make_backend("auto-fp32", model, calib=calib, batch_size=16)
    assert fp32.decision["source"] == "measured" and fp32.decision["backend"] in FP32
    assert set(fp32.decision["results"]) == set(FP32)
    entry = json.loads(cache.read_text())["entries"]
    assert len(entry) == 1 and set(entry[0]["results"]) == {*FP32, "onnxruntime-int8"}
    assert entry[0]["results"]["onnxruntime-int8"] == json.loads(json.dumps(q))  # kept, not measured again
    again = make_backend("auto-fp32", model, calib=None, batch_size=16)  # all cached: nothing to measure
    assert again.decision["source"] == "cache" and again.decision["backend"] == fp32.decision["backend"]


def test_a_cache_entry_from_before_the_int8_candidates_is_measured_anew(model, calib, cache):
    first = auto_backend(model, calib=calib, batch_size=16, candidates=["channels_last"])
    data = json.loads(cache.read_text())
    del data["entries"][0]["calib"]["agreement_on"]  # as the previous version wrote it
    cache.write_text(json.dumps(data))
    b = auto_backend(model, calib=calib, batch_size=16, candidates=["channels_last"])
    assert first.decision["source"] == b.decision["source"] == "measured"
    assert auto_backend(model, calib=None, batch_size=16).decision["source"] == "cache"
