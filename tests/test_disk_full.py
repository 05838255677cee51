"""A disk that fills up while a run writes: one line naming the file, and a run folder exactly as its last good
checkpoint left it (or, before the first checkpoint, no folder at all). Both through the CLI in a subprocess,
on real limits rather than mocks: a 2 MB tmpfs (root: a private mount namespace), and a file size limit
(RLIMIT_FSIZE) that stops torch.save part-way through the checkpoint, the write that takes the most room."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
TRAIN = [sys.executable, "-m", "resnetkit", "train", "--model", "resnet20", "--data", "digits", "--batch-size", "64",
         "--threads", "1", "--amp", "none", "--no-channels-last", "--set", "schedule.steps=4"]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and err and err[-1].startswith("resnetkit: error:"), r.stderr
    return err[-1]


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare -m to mount a private tmpfs")
def test_a_run_on_a_2mb_tmpfs_is_one_line_and_leaves_nothing(tmp_path):
    """resnet20's checkpoint (weights and momentum, about 2.2 MB) cannot fit: the new run fails at its first
    checkpoint, says so in one line naming the file, and removes everything it wrote."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=2m none {mnt} && cd {tmp_path} && "
              f"{' '.join(TRAIN)} --out {mnt}/run; rc=$?; ls -A {mnt} > {tmp_path}/left.txt; exit $rc")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    line = _one_line(r)
    assert f"{mnt}/run/checkpoint.pt: cannot write the checkpoint" in line and "ENOSPC" in line, line
    assert "files were removed" in line
    assert (tmp_path / "left.txt").read_text().split() == []  # not even the run folder or a temp file


def _file_size_limit(n: int):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return limit


def test_a_disk_that_fills_at_the_checkpoint_keeps_the_last_good_one(tmp_path):
    """A run stopped at step 2, resumed with room for every file but the checkpoint: torch.save stops
    part-way, the command says which file in one line, and the folder is byte for byte as before; with room
    again the run goes on and finishes."""
    r = subprocess.run([*TRAIN, "--out", "run", "--set", "schedule.max_steps=2"], cwd=tmp_path, capture_output=True,
                       text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    before = _tree(tmp_path)
    biggest_other = max(p.stat().st_size for p in run.iterdir() if p.name != "checkpoint.pt")
    limit = (biggest_other + (run / "checkpoint.pt").stat().st_size) // 2  # room for all but the checkpoint
    assert biggest_other < limit < (run / "checkpoint.pt").stat().st_size
    resume = [sys.executable, "-m", "resnetkit", "train", "--out", "run", "--resume", "--set", "schedule.max_steps=4"]
    r = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300,
                       preexec_fn=_file_size_limit(limit))
    line = _one_line(r)
    assert "run/checkpoint.pt: cannot write the checkpoint" in line and "EFBIG" in line, line
    assert "checkpoint at step 2" in line and "resume" in line
    assert _tree(tmp_path) == before  # metrics row, curves and weights undone; no temp file left
    r = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4] and (run / "model.safetensors").is_file()
