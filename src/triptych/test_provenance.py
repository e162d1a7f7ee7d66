import shutil
import subprocess

import pytest

from triptych.provenance import git_sha, package_versions, peak_rss_mb, utc_now


def git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_sha_is_marked_dirty_when_tracked_files_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # never find a checkout above tmp_path
    assert git_sha(tmp_path) is None  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    clean = git_sha(tmp_path)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "notes.txt").write_text("untracked files do not change the code\n")
    assert git_sha(tmp_path) == clean
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_sha(tmp_path) == f"{clean}-dirty"


def test_versions_memory_and_time_are_recorded():
    assert {"python", "triptych", "numpy"} <= set(package_versions())
    assert peak_rss_mb() > 0
    assert utc_now().endswith("+00:00")
