"""Shipped training recipes: each resolves and validates (`train --recipe NAME --dry-run`), the documented
override order, `resnetkit recipes`, and that the TOML files are package data."""

import json
from pathlib import Path

import pytest

from resnetkit._helpers import tomllib
from resnetkit.cli import main
from resnetkit.train.recipes import list_recipes

RECIPES = ["finetune", "imagenet-resnet50-classic", "imagenet-resnet50-modern"]


def dry_run(capsys, *argv) -> dict:
    assert main(["train", *argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_resolves(name, capsys):
    cfg = dry_run(capsys, "--recipe", name)
    assert cfg["task"] == "classification" and cfg["optim"]["lr"] > 0
    assert list_recipes()[name]


def test_recipe_figures_and_override_order(tmp_path, capsys):
    modern = dry_run(capsys, "--recipe", "imagenet-resnet50-modern")
    assert modern["optim"]["lr"] == pytest.approx(0.5) and modern["data"]["batch_size"] == 1024  # 0.5 at 1024
    assert (modern["data"]["train_crop"], modern["data"]["eval_resize"], modern["data"]["eval_crop"]) == (176, 232, 224)
    assert modern["schedule"]["epochs"] == 600 and modern["optim"]["label_smoothing"] == 0.1
    # lr_per_256 follows the batch size; an explicit lr given later wins over it
    assert dry_run(capsys, "--recipe", "imagenet-resnet50-modern", "--batch-size", "256")["optim"]["lr"] == 0.125
    explicit = dry_run(capsys, "--recipe", "imagenet-resnet50-modern", "--lr", "0.2")["optim"]
    assert explicit["lr"] == 0.2 and explicit["lr_per_256"] == 0
    # recipe <- --config <- flags <- --set
    conf = tmp_path / "c.toml"
    conf.write_text("[optim]\nweight_decay = 0.01\nlr = 0.001\n[schedule]\nepochs = 3\n")
    cfg = dry_run(capsys, "--recipe", "finetune", "--config", str(conf), "--epochs", "4", "--set", "optim.lr=0.002")
    assert cfg["optim"]["name"] == "adamw" and cfg["optim"]["weight_decay"] == 0.01
    assert cfg["schedule"]["epochs"] == 4 and cfg["optim"]["lr"] == 0.002
    classic = dry_run(capsys, "--recipe", "imagenet-resnet50-classic")
    assert classic["optim"]["lr"] == pytest.approx(0.1) and classic["schedule"]["name"] == "step"


def test_recipes_command_and_unknown_recipe(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == RECIPES and all(len(ln.split()) > 3 for ln in lines)
    assert main(["train", "--recipe", "imagenet-resnet50-moden", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean imagenet-resnet50-modern" in err


def test_recipes_are_package_data():
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["resnetkit"]
    shipped = {p.relative_to(root / "src" / "resnetkit") for p in (root / "src" / "resnetkit").rglob("*.toml")}
    assert shipped and all(any(p.match(pat) for pat in patterns) for p in shipped)
