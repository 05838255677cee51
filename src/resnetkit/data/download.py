"""Fetching dataset files: download with a checksum, and tar extraction that stays inside its folder."""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import urllib.request
from pathlib import Path

from resnetkit.errors import UserError

log = logging.getLogger(__name__)


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | Path, md5: str, timeout_s: float = 60.0) -> Path:
    """Download `url` to `dest` (via a temp file in the same folder) and check its md5.

    Raises OSError (including urllib.error.URLError) when the network is unreachable, so callers can
    turn that into advice; raises UserError when the bytes arrive but the checksum is wrong.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s", url, dest)
    req = urllib.request.Request(url, headers={"User-Agent": "resnetkit"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r, open(tmp, "wb") as f:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            f.write(chunk)
    got = file_md5(tmp)
    if got != md5:
        tmp.unlink()
        raise UserError(f"{url}: md5 {got} does not match the expected {md5}; the download is corrupt, "
                        "try again or fetch the file by hand")
    os.replace(tmp, dest)
    return dest


def safe_extract_tar(archive: str | Path, target: str | Path) -> None:
    """Extract a tar archive into `target`, refusing members that would land outside it.

    Absolute paths, `..` components, links and device files are all refused before anything is
    written (CVE-2007-4559 style path traversal).
    """
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            dest = (target / m.name).resolve()
            if not (m.isfile() or m.isdir()):
                raise UserError(f"{archive}: refusing member {m.name!r} (links and devices are not allowed)")
            if dest != target and target not in dest.parents:
                raise UserError(f"{archive}: refusing member {m.name!r}, it would be written outside {target}")
        tar.extractall(target, members=members, filter="data")

