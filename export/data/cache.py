"""Content-keyed cache of decoded uint8 arrays, so 60,000 JPEGs are decoded once, not every run."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

CACHE_FORMAT = "rocketserve-decoded-v1"


def default_cache_dir() -> Path:
    """$ROCKETSERVE_CACHE, else $XDG_CACHE_HOME/rocketserve, else ~/.cache/rocketserve."""
    explicit = os.environ.get("ROCKETSERVE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rocketserve"


def content_key(root: Path, files: Iterable[Path], extra: str = "") -> str:
    """sha256 over the sorted relative paths, sizes and mtimes of ``files`` (plus ``extra``)."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}\n{extra}\n".encode())
    for path in sorted(files):
        st = path.stat()
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


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
