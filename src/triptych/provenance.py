"""Where a run came from: package versions, the git commit of the code, peak memory, the time.

Stdlib only (nothing here imports TensorFlow); the runner records these in the run record.
"""

from __future__ import annotations

import datetime as dt
import platform
import resource
import sys
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
    """Peak resident memory of this process so far, in MiB.

    On Linux this is ``VmHWM`` of /proc/self/status, the high-water mark of this program's own
    memory: ``ru_maxrss`` would not do for an experiment process, because Linux carries the
    parent's resident size at fork into the child's ``ru_maxrss`` across exec (a child started by a
    3 GB parent reports at least 3 GB). Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def utc_now() -> str:
    """The current time as ISO 8601 UTC to the second, as the run record stores it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
