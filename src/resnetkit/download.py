"""Fetching files (datasets, pretrained weights): a cache folder, downloads checked against a hash, and
tar extraction that stays inside its folder.

Every network error becomes a one-line DownloadError (an OSError) naming the URL and the path where the
file can be put by hand; callers may catch it to add their own advice. A file whose hash does not match
is never kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from resnetkit._helpers import atomic_write, expansion_limit
from resnetkit.errors import CheckpointError, DownloadError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def cache_dir() -> Path:
    """`$RESNETKIT_CACHE`, else `~/.cache/resnetkit` (`$XDG_CACHE_HOME/resnetkit` when that is set)."""
    env = os.environ.get("RESNETKIT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resnetkit"


def file_hashes(path: str | os.PathLike) -> dict[str, str]:
    """{'sha256': ..., 'md5': ...} of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def check_hashes(path: str | os.PathLike, *, sha256: str | None = None, sha256_prefix: str | None = None,
                 md5: str | None = None, label: str | None = None) -> dict[str, str]:
    """The file's hashes; a CheckpointError (naming `label`, default the path) when one of the given
    expectations fails. With none given, the sha256 is logged so that the first download can be pinned."""
    got = file_hashes(path)
    checks = [("sha256", sha256, got["sha256"] == (sha256 or "").lower()),
              ("sha256 prefix", sha256_prefix, got["sha256"].startswith((sha256_prefix or "").lower())),
              ("md5", md5, got["md5"] == (md5 or "").lower())]
    for what, expected, ok in checks:
        if expected and not ok:
            actual = got["md5"] if what == "md5" else got["sha256"]
            raise CheckpointError(f"{label or path}: {what} {actual} does not match the published {expected}; the "
                                  "file is corrupt or not the one expected (delete a cached copy to fetch it again)")
    if not (sha256 or sha256_prefix or md5):
        log.warning("%s: no published checksum to check against; its sha256 is %s", label or path, got["sha256"])
    return got


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, sha256_prefix: str | None = None,
             md5: str | None = None, timeout_s: float = 60.0,
             opener: Callable = urllib.request.urlopen) -> Path:
    """`url` -> `dest` through a temp file in the same folder, renamed only once its hash checks out.

    An existing `dest` is checked and reused. Offline or HTTP errors raise a DownloadError that says where to
    put the file by hand. `opener` is urllib's `urlopen` (tests pass their own).
    """
    dest = Path(dest)
    if dest.is_file():
        check_hashes(dest, sha256=sha256, sha256_prefix=sha256_prefix, md5=md5)
        return dest
    log.info("downloading %s -> %s", url, dest)
    with atomic_write(dest, suffix=".part") as tmp:  # renamed into place only once the hash checks out
        with open(tmp, "wb") as f:
            req = urllib.request.Request(url, headers={"User-Agent": "resnetkit"})
            try:
                with opener(req, timeout=timeout_s) as r:
                    shutil.copyfileobj(r, f, CHUNK)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                reason = getattr(e, "reason", None) or e
                raise DownloadError(f"cannot download {url} ({reason}); without network, fetch it elsewhere and put "
                                    f"it at {dest}") from None
        check_hashes(tmp, sha256=sha256, sha256_prefix=sha256_prefix, md5=md5, label=url)
    return dest


MAX_MEMBERS = 10_000


def safe_extract_tar(archive: str | os.PathLike, target: str | os.PathLike, *, max_bytes: int | None = None,
                     max_members: int = MAX_MEMBERS) -> Path:
    """Extract a tar archive (any compression) into `target`, refusing what could escape it or flood the
    disk.

    Every member is checked before anything is written: absolute names, `..` components, symlinks,
    hard links and device files are refused with a CheckpointError, and so are archives of more than
    `max_members` members or whose members add up to more than `max_bytes` (default: 4x the archive's
    size plus 64 MiB; the headers declare the sizes, so nothing is extracted to find out). Extraction
    goes to a temp folder beside `target`, renamed into place at the end, so a failure leaves no
    half-extracted `target`.
    """
    limit = expansion_limit(archive, max_bytes) if Path(archive).is_file() else 0
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")).resolve()
    try:
        try:
            tar = tarfile.open(archive)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise CheckpointError(f"{archive}: not a readable tar archive ({type(e).__name__}: {e})") from None
        with tar:
            try:
                members = tar.getmembers()
            except (tarfile.TarError, OSError, EOFError) as e:  # truncated
                raise CheckpointError(f"{archive}: not a readable tar archive ({type(e).__name__}: {e})") from None
            total = sum(m.size for m in members if m.isfile())
            if len(members) > max_members or total > limit:
                raise CheckpointError(f"{archive}: refused: {len(members)} members of {total:,} bytes in all, over "
                                      f"the limit of {max_members:,} members and {limit:,} bytes (pass max_bytes= "
                                      "for a larger archive)")
            for m in members:
                dest = (tmp / m.name).resolve()
                if not (m.isfile() or m.isdir()):
                    raise CheckpointError(f"{archive}: refusing member {m.name!r} (links and devices are not allowed)")
                if os.path.isabs(m.name) or (dest != tmp and tmp not in dest.parents):
                    raise CheckpointError(f"{archive}: refusing member {m.name!r}, it would be written outside "
                                          f"{target}")
            try:
                tar.extractall(tmp, members=members, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:  # truncated archive
                raise CheckpointError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from None
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
