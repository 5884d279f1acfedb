"""Content-keyed cache of decoded uint8 arrays, so 60,000 JPEGs are decoded once, not every run."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

CACHE_FORMAT = "rocketserve-decoded-v2"


def default_cache_dir() -> Path:
    """$ROCKETSERVE_CACHE, else $XDG_CACHE_HOME/rocketserve, else ~/.cache/rocketserve."""
    explicit = os.environ.get("ROCKETSERVE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rocketserve"


def content_key(
    root: Path, files: Iterable[Path], extra: str = "", cache_dir: Path | None = None
) -> str:
    """sha256 over the sorted relative paths and bytes of ``files`` (plus ``extra``).

    The bytes, not sizes and mtimes: a copy of the data set elsewhere, or the same files laid out
    anew with fresh mtimes, reuses the decoded arrays, and an edit that keeps a file's size does
    not. Hashing CIFAR-10's 60,000 JPEGs (55 MB) takes a few seconds, so the key is remembered
    under ``<cache_dir>/keys/`` by the files' paths, sizes and mtimes: while none of those change
    (the make and rsync rule), a later load only stats the files.
    """
    files = sorted(files)
    stat_digest = hashlib.sha256(f"{CACHE_FORMAT}\n{root.resolve()}\n{extra}\n".encode())
    for path in files:
        st = path.stat()
        stat_digest.update(
            f"{path.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode()
        )
    index = (cache_dir if cache_dir is not None else default_cache_dir()) / "keys"
    remembered = index / stat_digest.hexdigest()[:32]
    try:
        key = remembered.read_text().strip()
        if len(key) == 64 and all(c in "0123456789abcdef" for c in key):
            return key
    except OSError:
        pass
    digest = hashlib.sha256(f"{CACHE_FORMAT}\n{extra}\n".encode())
    for path in files:
        content = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\t{len(content)}\n".encode())
        digest.update(content)
    key = digest.hexdigest()
    try:
        index.mkdir(parents=True, exist_ok=True)
        tmp = remembered.with_name(f"{remembered.name}.{os.getpid()}.tmp")
        tmp.write_text(key + "\n")
        tmp.replace(remembered)
    except OSError:
        pass  # a read-only cache hashes every time: slower, still right
    return key


def cached_arrays(
    cache_dir: Path | None, stem: str, key: str, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Load ``<cache_dir>/<stem>-<key>.npz`` or build the arrays and store them atomically."""
    directory = cache_dir if cache_dir is not None else default_cache_dir()
    path = directory / f"{stem}-{key[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a torn or foreign file: rebuild it
    arrays = build()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache is a slow cache, not an error
    return arrays
