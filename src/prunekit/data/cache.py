"""Where decoded datasets are cached: ``$PRUNEKIT_CACHE`` or the user cache dir."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder (``$PRUNEKIT_CACHE``, else ``$XDG_CACHE_HOME/prunekit``, else ``~/.cache/prunekit``)."""
    env = os.environ.get("PRUNEKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunekit"


def source_key(path: Path) -> str:
    """A short key identifying a source file's version (resolved path, size, mtime)."""
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return hashlib.sha1(raw).hexdigest()[:16]
