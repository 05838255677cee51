"""Typed errors: a Python caller catches the built-in exception it expects, messages name the parameter
(never a CLI flag), and the CLI turns each into one line with exit status 2."""

import ast
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.cli import main
from resnetkit.errors import CheckpointError, ConfigError, MissingFileError, UserError

SRC = Path(resnetkit.__file__).parent


def test_bad_values_are_value_errors():
    with pytest.raises(ValueError, match="output_stride") as e:
        resnetkit.create_model("resnet_v2_50", output_stride=3)
    assert isinstance(e.value, ConfigError) and isinstance(e.value, UserError)
    with pytest.raises(ValueError, match="did you mean .*resnet50"):
        resnetkit.create_model("resnet5O")
    with pytest.raises(ValueError, match="unexpected keyword"):
        resnetkit.create_model("resnet20", colour="red")
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        resnetkit.create_model("slimseg_resnet20", num_classes=0)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        resnetkit.load(tmp_path / "nope.safetensors")
    assert isinstance(e.value, MissingFileError)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        resnetkit.load(junk)


def _raised_messages(path: Path):
    """The string constants of every `raise X(...)` in a module."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in node.exc.args:
                for s in ast.walk(arg):
                    if isinstance(s, ast.Constant) and isinstance(s.value, str):
                        yield node.lineno, s.value


def test_library_errors_name_parameters_not_flags():
    """Only resnetkit.cli knows flag names; elsewhere `--resume` or `--set` in a message is a defect
    (the parameter's name is what a Python caller can act on)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if "cli" in path.relative_to(SRC).parts:
            continue
        for line, text in _raised_messages(path):
            if " --" in f" {text}" and "(CLI: --" not in text:
                offenders.append(f"{path.relative_to(SRC)}:{line}: {text!r}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("argv,needle", [
    (["summary", "resnet_v2_50", "--output-stride", "3"], "output_stride"),
    (["summary", "resnet5O"], "did you mean"),
    (["predict", "x.jpg", "--weights", "missing.safetensors"], "no such weights file"),
])
def test_cli_prints_one_line_and_exits_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnetkit: error:") and "\n" not in err and needle in err


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_disk_faults_are_one_line_and_keep_the_old_file(tmp_path, capsys, monkeypatch, code):
    import errno
    import os

    from resnetkit.weights import save_weights

    src = save_weights(resnetkit.create_model("resnet20", num_classes=2), tmp_path / "m.safetensors")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous export")
    real_replace = os.replace

    def failing_replace(a, b):
        if str(b) == str(out):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(b))
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", failing_replace)
    rc = main(["export", "--weights", str(src), "--format", "torchscript", "-o", str(out), "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and code in err and str(out) in err
    assert out.read_bytes() == b"the previous export"  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.safetensors"]  # no temp file left


def test_allow_nonfinite_lets_a_user_load_a_diverged_model(tmp_path, capsys):
    from PIL import Image

    from resnetkit.weights import Preprocessing, save_weights

    model = resnetkit.create_model("resnet20", num_classes=2)
    with torch.no_grad():
        model.logits.bias[0] = float("inf")
    path = save_weights(model, tmp_path / "inf.safetensors", class_names=["a", "b"],
                        preprocessing=Preprocessing(size=(8, 8)))
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--weights", str(path)]) == 2
    assert "--allow-nonfinite" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "x.png"), "--weights", str(path), "--allow-nonfinite"]) == 0
