"""Where a run came from: package versions, the git commit of the code, peak memory, the time.

Stdlib only (nothing here imports TensorFlow); the runner records these in the run record.
"""

from __future__ import annotations

import datetime as dt
import platform
import resource
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from triptych import __version__

PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn")


def package_versions() -> dict[str, str]:
    """Python, triptych and the installed versions of the packages that decide the numbers."""
    versions = {"python": platform.python_version(), "triptych": __version__}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def git_sha(repo: str | Path | None = None) -> str | None:
    """The commit of the code in ``repo`` (default: triptych's own checkout), with ``-dirty`` when
    tracked files differ from it; None outside a git checkout or without git."""
    cwd = Path(repo) if repo is not None else Path(__file__).parent
    sha = _git(cwd, "rev-parse", "HEAD")
    if not sha:
        return None
    changes = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return f"{sha}-dirty" if changes else sha


def _git(cwd: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def utc_now() -> str:
    """The current time as ISO 8601 UTC to the second, as the run record stores it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
