"""The harness of the standing hostile-input suites (tests/test_hostile.py, tests/test_hostile_train.py):
run the CLI in process inside a sandbox and check every promise a refused input must keep."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from resnetkit.cli import main

# The materials folder of the module being run: each test points it at its module's fixture first.
MATERIALS: dict[str, Path] = {}


def mat(name: str) -> Path:
    return MATERIALS["root"] / name


def copy(name: str, work: Path, as_name: str | None = None) -> Path:
    dst = work / (as_name or Path(name).name)
    (shutil.copytree if mat(name).is_dir() else shutil.copy)(mat(name), dst)
    return dst


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def left_in(tmp: Path) -> list[Path]:
    # `import onnxruntime` writes its own 51-byte `.ses` marker into $TMPDIR, once; not ours to remove.
    return [p for p in tmp.iterdir() if p.name != ".ses"]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


def sandbox(materials: Path, tmp_path: Path, monkeypatch) -> tuple[Path, Path, Path]:
    """(work folder, made the current directory; temp folder, made $TMPDIR; canary path)."""
    MATERIALS["root"] = materials
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    return work, tmp, tmp_path / "canary"


def assert_refused(rc: int, err: str, expected_rc: int, needle: str, before: dict, work: Path, tmp: Path,
                   canary: Path) -> None:
    """The exit status, one `resnetkit: error:` line naming the problem, no traceback, no file changed or
    left behind, a clean temp folder, and no code run from a file."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == expected_rc, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("resnetkit: error:"), err
    assert needle in lines[0], lines[0]
    assert hashes(work) == before, "a file was changed or left behind"
    assert left_in(tmp) == [], "the temporary directory was not cleaned"
    assert not canary.exists(), "a file ran code"


def voc_copy(work: Path, split: str, mask=None, split_text: str | None = None) -> Path:
    """The materials' shapes set copied into `work`, with the first image of `split` given `mask` (an (H, W)
    array of palette indices) and/or the split file replaced by `split_text`."""
    root = copy("shapes", work)
    if mask is not None:
        m = Image.fromarray(np.asarray(mask).astype(np.uint8), "P")
        m.putpalette([0] * 768)
        name = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[0]
        m.save(root / "SegmentationClass" / f"{name}.png")
    if split_text is not None:
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(split_text)
    return root


class StopAt:
    """A Trainer hook that asks the run to stop (as SIGINT does) after optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, trainer):
        if trainer.step == self.step:
            trainer.request_stop()
