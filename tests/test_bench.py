"""`resnetkit bench` and the timing helpers (no timing assertions: only that they measure and report)."""

from __future__ import annotations

import json

import pytest
import torch

from resnetkit.bench import format_table, machine_info, time_fn
from resnetkit.cli import main


def test_time_fn_counts_calls_and_reports_stats():
    calls = []
    r = time_fn(lambda x: calls.append(x) or x, torch.zeros(1), iters=7, warmup=2)
    assert len(calls) == 1 + 2 + 7 and r["n"] == 7
    assert 0 <= r["median_s"] <= r["p90_s"] and r["std_s"] >= 0


def test_format_table_has_speedup_column():
    rows = [dict(backend=b, img_s=s, median_ms=1.0, p90_ms=1.0, mean_ms=1.0, std_ms=0.0, n=3, setup_s=0.0,
                 first_s=0.1) for b, s in (("eager", 10.0), ("onnxruntime", 25.0))]
    text = format_table(rows, baseline="eager")
    assert "speed-up" in text.splitlines()[0] and "2.50x" in text.splitlines()[2]


def test_machine_info_names_versions():
    info = machine_info(2)
    assert info["threads"] == 2 and info["torch"] == torch.__version__ and info["cores"] >= 1


def test_cli_bench_tiny_model(capsys, tmp_path):
    backends = "eager,channels_last"
    try:
        import onnxruntime  # noqa: F401

        backends += ",onnxruntime"
    except ImportError:
        pass
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", "resnet20", "--batch", "2", "--input", "16", "--threads", "1",
               "--backend", backends, "--iters", "2", "--warmup", "0", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "threads: 1" in text and "torch " in text and "cores" in text
    for b in backends.split(","):
        assert any(line.startswith(b + " ") for line in text.splitlines()), b
    rows = json.loads(out.read_text())["rows"]
    assert [r["backend"] for r in rows] == backends.split(",") and all(r["img_s"] > 0 for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet20", "--backend", "eager,tensorrt"], "unknown backend tensorrt"),
    (["--model", "resnet_20"], "unknown model 'resnet_20'"),
    ([], "give exactly one of --model NAME or --weights FILE"),
])
def test_cli_bench_bad_input(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
