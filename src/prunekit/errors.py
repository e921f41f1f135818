"""Exception types for user-facing errors.

Every error a user can cause (bad path, corrupt file, wrong shape, unknown name, bad ratio)
raises a subclass of :class:`PrunekitError` whose message names the problem and the fix.
The CLI prints these as one line and exits with status 1 (usage errors exit with 2).
"""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PrunekitError, ValueError):
    """A bad argument, ratio, name or recipe key."""


class DataError(PrunekitError, OSError):
    """A dataset file is missing, corrupt or laid out differently than expected."""


class CheckpointError(PrunekitError, ValueError):
    """A checkpoint cannot be read or does not match the model."""


class UnsupportedError(PrunekitError, NotImplementedError):
    """An operation or layer type that prunekit cannot handle correctly."""


def close_matches(name: str, candidates: list[str], n: int = 5) -> str:
    """Return a short 'did you mean' hint listing the candidates closest to ``name``.

    >>> close_matches("layer1.0.conv", ["layer1.0.conv1", "layer2.0.conv1"])
    "did you mean: 'layer1.0.conv1', 'layer2.0.conv1'?"
    """
    import difflib

    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if not matches:
        return f"known names include: {', '.join(repr(c) for c in candidates[:n])}"
    return "did you mean: " + ", ".join(repr(m) for m in matches) + "?"
