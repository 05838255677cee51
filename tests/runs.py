"""Training runs as subprocesses, started together: a small run's time is mostly its start-up (importing torch,
torchvision and resnetkit: seconds per process on two cores), so runs that do not depend on one another
overlap it instead of paying it in turn. Every run uses one thread (run.threads=1), so two runs fill two cores.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path


def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `args` in the background. Its stderr goes to a file (`finish` returns it): a pipe nobody reads
    while another run is awaited could fill up and stall it."""
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
    p.log = log
    return p


def stderr_of(p: subprocess.Popen) -> str:
    p.log.seek(0)
    return p.log.read()


def finish(*runs: subprocess.Popen, timeout_s: float = 300) -> list[str]:
    """Wait for runs made by `start`, assert that each exited 0; their stderr."""
    for p in runs:
        p.wait(timeout=timeout_s)
        assert p.returncode == 0, stderr_of(p)
    return [stderr_of(p) for p in runs]


def stop_at_first_checkpoint(*runs: tuple[subprocess.Popen, Path, int]) -> list[tuple[int, str]]:
    """(run, its run folder, a signal) each: send each run its signal as soon as its first checkpoint.pt
    appears (written by rename: complete when it exists), all watched at once; (exit code, stderr) each."""
    pending, deadline = list(runs), time.monotonic() + 240
    while pending:
        for r in list(pending):
            p, run_dir, sig = r
            if (run_dir / "checkpoint.pt").exists():
                p.send_signal(sig)
                pending.remove(r)
            else:
                assert p.poll() is None, stderr_of(p)
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    return [(p.wait(timeout=120), stderr_of(p)) for p, _, _ in runs]
