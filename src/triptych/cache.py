"""The one cache folder: ``$TRIPTYCH_CACHE``, default ``~/.cache/triptych``.

Everything triptych remembers between runs on this machine lives under it: file digests
(:mod:`triptych.data.digests`), the perceptual hashes of the split guard
(:mod:`triptych.data.leakage`), the precision that ``precision: auto`` measured
(:mod:`triptych.training.precision_auto`) and the frozen-feature cache
(:mod:`triptych.training.feature_cache`: in ``features/`` below the default folder, but in
``$TRIPTYCH_CACHE`` itself when that is set).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TRIPTYCH_CACHE"


def cache_dir() -> Path:
    """``$TRIPTYCH_CACHE`` if set (``~`` expanded), else ``~/.cache/triptych``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "triptych").expanduser()
