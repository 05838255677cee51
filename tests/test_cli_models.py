"""`resnetkit models` and `resnetkit summary` through the CLI."""

import fnmatch
import subprocess
import sys

import pytest

from resnetkit.cli import main
from resnetkit.models import list_models


def test_models_lists_every_name_with_params_and_macs(capsys):
    # Six models (each is built to count its MACs), of two families: ImageNet's resnet50 and CIFAR's resnet1202.
    pattern = "resnet[51][02]*"
    assert main(["models", pattern]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:]] == fnmatch.filter(list_models(), pattern)
    assert "resnet50 " in out and "25,557,032" in out and "4.09G" in out
    assert "resnet1202" in out and "19,421,274" in out


def test_summary_end_points_at_output_stride_16(capsys):
    assert main(["summary", "resnet_v2_101", "--input", "513", "--output-stride", "16",
                 "--no-global-pool", "--num-classes", "21"]) == 0
    out = capsys.readouterr().out
    assert "resnet_v2_101/block1/unit_1/bottleneck_v2/conv1" in out
    assert "resnet_v2_101/block4  " in out and "2048x33x33" in out
    assert "resnet_v2_101/logits" in out and "21x33x33" in out


@pytest.mark.parametrize("argv,message", [
    (["summary", "resnet_v2_5"], "unknown model 'resnet_v2_5': did you mean resnet_v2_50"),
    (["summary", "resnet50", "--output-stride", "6"], "output_stride must be a multiple of 4"),
    (["summary", "resnet50", "--output-stride", "64"], "cannot be reached"),
    (["summary", "resnet50", "--input", "4"], "too small"),
    (["models", "nothing*"], "no model matches"),
])
def test_bad_input_is_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "resnetkit", "summary", "resnet20", "--input", "28", "--in-chans", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "resnet20/block3" in r.stdout and "params 269,434" in r.stdout
