"""`--backend auto` (measure once, cache, reuse), the named backends the machine cannot run, PyTorch's own
int8 and bf16 export. Compilations are few and tiny (resnet20 at 16-32 px): one for compile-bf16 or
compile inside auto, one for int8."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.cli import main
from resnetkit.errors import ConfigError
from resnetkit.export.auto import AGREEMENT, auto_backend, default_candidates, machine_key, model_digest
from resnetkit.export.backends import cpu_flags, make_backend
from resnetkit.export.formats import export_file, load_runner
from resnetkit.weights import Preprocessing, save_weights
from tests.conftest import randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")

# Each feature is tested where the CPU has it and its refusal where it does not. RESNETKIT_CPU_FLAGS may
# pretend a CPU *without* a feature (never with one: that would run instructions the CPU lacks).
BF16_HW = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
VNNI = bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_bn(resnetkit.create_model("resnet20", num_classes=10)).eval()


@pytest.fixture
def calib():
    return torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "backends.json"


def _measured(caplog) -> bool:
    return any("auto: measuring" in r.getMessage() for r in caplog.records)


def test_auto_measures_once_caches_and_reuses(model, calib, cache, caplog):
    caplog.set_level(logging.INFO, logger="resnetkit")
    first = auto_backend(model, calib=calib, batch_size=16, candidates=["channels_last", "compile-bf16"])
    assert first.decision["source"] == "measured" and _measured(caplog)
    entry = json.loads(cache.read_text())["entries"][0]
    assert entry["model_sha256"] == model_digest(model) and entry["torch"] == str(torch.__version__)
    assert first.name in entry["results"] and entry["results"][first.name]["ok"]
    assert all(v["agreement"] >= AGREEMENT for v in entry["results"].values() if v.get("ok"))
    with torch.no_grad():
        assert (first(calib).argmax(1) == model(calib).argmax(1)).float().mean() >= AGREEMENT

    caplog.clear()
    again = auto_backend(model, calib=None, batch_size=16)  # no images needed: nothing is measured
    assert again.decision["source"] == "cache" and not _measured(caplog)
    assert again.name == first.name
    assert sum("auto: " in r.getMessage() for r in caplog.records) == 1  # the choice, in one line
    # A one-image job does not pay a compilation: the cached figures make channels_last its best bet.
    one = auto_backend(model, n_images=1)
    assert one.decision["source"] == "cache" and one.name == "channels_last"


def test_cache_of_another_torch_or_machine_is_not_trusted(model, calib, cache, caplog):
    caplog.set_level(logging.INFO, logger="resnetkit")
    digest = model_digest(model)
    foreign = [{"model_sha256": digest, "machine": "another machine", "torch": str(torch.__version__),
                "results": {"eager": {"ok": True, "img_s": 1e9, "setup_s": 0.0, "agreement": 1.0}}},
               {"model_sha256": digest, "machine": "x", "torch": "1.0.0",
                "results": {"eager": {"ok": True, "img_s": 1e9, "setup_s": 0.0, "agreement": 1.0}}}]
    foreign[1]["machine"] = machine_key()  # this machine, another torch
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"version": 1, "entries": foreign}))
    b = auto_backend(model, calib=calib, candidates=["channels_last", "bf16"])
    assert b.decision["source"] == "measured" and _measured(caplog) and b.name != "eager"
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 3 and entries[:2] == foreign  # kept for their own machine / torch, never used here


def test_corrupt_cache_is_ignored_with_a_warning_and_rewritten(model, calib, cache, caplog):
    cache.parent.mkdir(parents=True)
    cache.write_text('{"version": 1, "entries": [')
    b = auto_backend(model, calib=calib, candidates=["channels_last"])
    assert b.decision["source"] == "measured"
    assert any(r.levelno == logging.WARNING and "unreadable backend cache" in r.getMessage() for r in caplog.records)
    assert json.loads(cache.read_text())["entries"][0]["results"]["channels_last"]["ok"] is True


def test_agreement_check_rejects_a_candidate_that_disagrees(model, calib, cache):
    # Negated logits: as fast as eager, and wrong on every image.
    b = auto_backend(model, calib=calib, candidates=["channels_last", ("negated", lambda: lambda x: -model(x))])
    negated = b.decision["results"]["negated"]
    assert negated["ok"] is False and negated["agreement"] < 0.1
    assert b.name == "channels_last"


def test_small_job_skips_measuring_and_unsupported_candidates_are_skipped(model, calib, cache, caplog,
                                                                          monkeypatch):
    caplog.set_level(logging.INFO, logger="resnetkit")
    # This CPU: compile-bf16 where it computes bf16, plain compile where not...
    assert ("compile-bf16" in default_candidates()) == BF16_HW and ("compile" in default_candidates()) != BF16_HW
    b = auto_backend(model, calib=calib, n_images=3)
    assert (b.name, b.decision["source"]) == ("channels_last", "small job") and not cache.exists()
    monkeypatch.setenv("RESNETKIT_CPU_FLAGS", "sse4_2,avx2")  # ...and whatever it has, one without bf16 or VNNI
    assert "compile" in default_candidates() and "compile-bf16" not in default_candidates()
    b = auto_backend(model, calib=calib, candidates=["channels_last", "bf16"])
    assert b.decision["results"]["bf16"]["ok"] is False
    assert sum("auto: skipping bf16" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ConfigError, match="needs a CPU with VNNI"):
        make_backend("int8", model, calib=calib)


@pytest.fixture
def photo_weights(tmp_path, model):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    pre = Preprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return save_weights(model, tmp_path / "m.safetensors", preprocessing=pre), tmp_path / "a.png"


def test_cli_refuses_a_backend_the_cpu_cannot_run_in_one_line(photo_weights, cache, monkeypatch, capsys, caplog):
    caplog.set_level(logging.INFO, logger="resnetkit")
    weights, image = photo_weights
    monkeypatch.setenv("RESNETKIT_CPU_FLAGS", "sse4_2,avx2")
    assert main(["predict", str(image), "--weights", str(weights), "--backend", "compile-bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("resnetkit: error: the compile-bf16 backend needs bf16 hardware")
    assert main(["bench", "--model", "resnet20", "--backend", "eager,int8", "--input", "16"]) == 2
    assert "needs a CPU with VNNI" in capsys.readouterr().err
    assert main(["export", "--weights", str(weights), "--dtype", "bf16", "-o", str(weights.with_suffix(".onnx"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dtype bf16 is not available for ONNX" in err[0]
    # The default, auto, runs a one-image job as channels_last without measuring, and says so.
    assert main(["predict", str(image), "--weights", str(weights)]) == 0
    assert any("auto: channels_last (1 images, fewer than" in r.getMessage() for r in caplog.records)


def test_int8_backend_quantises_with_pt2e_where_the_cpu_has_vnni(model, calib):
    if not VNNI:  # the refusal (its CLI line: test_cli_refuses_a_backend_the_cpu_cannot_run_in_one_line)
        with pytest.raises(ConfigError, match="needs a CPU with VNNI"):
            make_backend("int8", model, calib=calib)
        return
    pytest.importorskip("torchao")
    b = make_backend("int8", model, calib=calib)
    with torch.no_grad():
        ref, out = model(calib), b(calib)
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert 1e-5 < rel < 0.1  # really quantised (not the fp32 graph), and still close
    assert b(calib[:5]).shape == (5, 10)  # a smaller last batch is padded, not recompiled


def test_export_bf16(model, tmp_path):
    r = export_file(model, tmp_path / "m.pt2", "exported-program", input_size=(16, 16), dtype="bf16")
    assert r["dtype"] == "bf16" and r["checks"]
    run = load_runner(r["path"], "exported-program")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out, ref = run(x), model(x)
    assert out.dtype == torch.float32 and 1e-6 < float((out - ref).abs().max() / ref.abs().max()) < 0.05
    program = torch.export.load(str(r["path"]))
    assert any(v.dtype == torch.bfloat16 for v in program.state_dict.values())
    with pytest.raises(ConfigError, match="ONNX Runtime's CPU provider has no bf16 convolution"):
        export_file(model, tmp_path / "m.onnx", "onnx", input_size=(16, 16), dtype="bf16")
