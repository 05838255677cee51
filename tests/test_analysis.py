"""The error analysis of `resnetkit eval` against scikit-learn's definitions, and ECE on cases worked by hand."""

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support

from resnetkit.train.analysis import Analysis, class_report


def test_class_report_matches_scikit_learn():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 5, 400)
    pred = np.where(rng.rand(400) < 0.6, y, rng.randint(0, 4, 400))  # class 4 is never predicted
    cm = np.zeros((5, 5), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    r = class_report(cm, list("abcde"))
    p, rec, f, s = precision_recall_fscore_support(y, pred, labels=range(5), zero_division=0)
    got = r["per_class"]
    assert np.allclose([got[n]["precision"] for n in "abcde"], p) and np.allclose([got[n]["recall"] for n in "abcde"],
                                                                                   rec)
    assert np.allclose([got[n]["f1"] for n in "abcde"], f) and [got[n]["support"] for n in "abcde"] == list(s)
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert r["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_ece_and_the_most_confident_mistakes():
    """Ten images at confidence 0.9 (nine right) are calibrated: ECE 0; all at 0.9 and all right: ECE 0.1."""
    logit = float(np.log(0.9 / 0.1))  # two classes: softmax([l, 0]) = (0.9, 0.1)
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2)
    a = Analysis(worst=3)
    y = torch.tensor([0] * 9 + [1])
    a.add(images, torch.tensor([[logit, 0.0]] * 10), y)
    cal = a.calibration()
    assert cal["ece"] == pytest.approx(0, abs=1e-6) and sum(b["n"] for b in cal["bins"]) == 10
    full = [b for b in cal["bins"] if b["n"]]
    assert len(full) == 1 and full[0]["accuracy"] == pytest.approx(0.9) and full[0]["confidence"] == pytest.approx(0.9)
    (conf, im, t, p), = a.mistakes()
    assert (t, p) == (1, 0) and conf == pytest.approx(0.9) and int(im[0, 0, 0]) == 9
    b = Analysis()
    b.add(images, torch.tensor([[logit, 0.0]] * 10), torch.zeros(10, dtype=torch.long))
    assert b.calibration()["ece"] == pytest.approx(0.1) and b.mistakes() == []


def test_temperature_is_the_nll_minimiser():
    from resnetkit.train.calibrate import fit_temperature

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (2000,), generator=g)
    true_logits = torch.randn(2000, 5, generator=g) + 3 * torch.nn.functional.one_hot(y, 5)
    labels = torch.distributions.Categorical(logits=true_logits).sample()  # drawn from softmax(true_logits)
    t = fit_temperature(3 * true_logits, labels)  # three times overconfident
    assert t == pytest.approx(3, rel=0.1)
    nll = lambda s: float(torch.nn.functional.cross_entropy(3 * true_logits / s, labels))  # noqa: E731
    assert nll(t) <= min(nll(1.0), nll(t * 1.05), nll(t / 1.05)) + 1e-9


def test_eval_calibrate_through_the_cli(tmp_path, capsys):
    """A digits run with a hold-out; eval --calibrate fits T there, writes model_calibrated.safetensors whose
    predictions are the original's with probabilities softmax(logits / T), and reports ECE before and after."""
    import json

    from resnetkit.cli import main
    from resnetkit.weights import load, read_card

    run = tmp_path / "r"
    assert main(["train", "--data", "digits", "--model", "resnet20", "--epochs", "3", "--lr", "0.2",
                 "--threads", "1", "--set", "data.holdout=300", "--out", str(run)]) == 0
    assert main(["eval", "--weights", str(run / "model.safetensors"), "--data", "digits", "--calibrate",
                 "--backend", "eager", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "temperature" in out and "fitted on the last 300 training images of digits" in out
    card = read_card(tmp_path / "ev" / "model_calibrated.safetensors")
    t, fit = card.extra["temperature"], card.extra["calibration"]
    assert t > 0 and fit["nll_after"] <= fit["nll_before"] and fit["n"] == 300
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["calibration"]["temperature"] == t and "test_ece_uncalibrated" in result
    a, b = load(run / "model.safetensors"), load(tmp_path / "ev" / "model_calibrated.safetensors")
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(b(x), a(x) / t, atol=1e-5)
    assert main(["eval", "--weights", str(run / "model.safetensors"), "--data", "digits", "--calibrate-on",
                 "digits", "--out", str(tmp_path / "ev2")]) == 2
    assert "add --calibrate" in capsys.readouterr().err
