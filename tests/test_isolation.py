"""Each experiment runs in its own process: peak memory, TensorFlow state and threads are its own."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime

import pytest

from conftest import write_image_folder

from triptych import isolation
from triptych.config import parse_config
from triptych.errors import TriptychError
from triptych.isolation import ExperimentCrashed
from triptych.runner import RunOptions, run_config


def _experiment(name: str, model: dict, size: int, per_class: int, batch: int) -> dict:
    return {
        "name": name,
        "model": model,
        "data": {"dataset": "cifar10", "image_size": size, "train_per_class": per_class, "test_per_class": 4,
                 "val_fraction": 0.25, "batch_size": batch},
        "training": {"epochs": 1, "learning_rate": 0.01},
    }


@pytest.mark.slow
def test_peak_memory_is_per_experiment_not_inherited(cifar_mirror, tmp_path, monkeypatch):
    """A big experiment first, a tiny one second: in one process the second would report at least
    the first's peak (ru_maxrss only grows); in its own process it reports its own, smaller one."""
    monkeypatch.setenv("TRIPTYCH_MIRROR", str(cifar_mirror))
    config = parse_config({"seed": 0, "experiments": [
        _experiment("big", {"name": "resnet50", "options": {"stem": "imagenet"}}, 128, 8, 24),
        _experiment("tiny", {"name": "resnet18", "options": {"stem": "cifar"}}, 16, 4, 8),
    ]})
    started = _record_process_starts(monkeypatch)
    runs = run_config(config, tmp_path / "out", RunOptions(), log=lambda line: None)
    peaks = {run.name: json.loads(run.manifest.read_text())["peak_rss_mb"] for run in runs}
    assert peaks["tiny"] < peaks["big"] - 100, peaks
    # The second experiment's process started while the first ran (its imports overlapped it), and no other.
    big_finished, tiny_finished = (datetime.fromisoformat(json.loads(run.manifest.read_text())["finished"]).timestamp()
                                   for run in runs)
    assert len(started) == 2 and started[1][0] < big_finished
    assert all(process.returncode == 0 for _, process in started)
    # The report's diagrams were drawn while the last experiment ran, and the report has them.
    diagrams = sorted((tmp_path / "out" / "diagrams").glob("*.svg"))
    assert [d.name for d in diagrams] == ["resnet18.svg", "resnet50.svg"]
    assert all(d.stat().st_mtime < tiny_finished + 1 for d in diagrams)  # the record keeps whole seconds
    assert "resnet18" in (tmp_path / "out" / "report.html").read_text()


def _record_process_starts(monkeypatch) -> list[tuple[float, subprocess.Popen]]:
    """(time, process) for each experiment process the parent starts."""
    started = []
    real = isolation._start_child

    def recorded():
        started.append((time.time(), real()))
        return started[-1][1]

    monkeypatch.setattr(isolation, "_start_child", recorded)
    return started


@pytest.mark.slow
def test_a_failed_experiment_leaves_no_waiting_process_behind(tmp_path, monkeypatch):
    """The next experiment's process, started ahead, is stopped when the run ends without it."""
    folder = write_image_folder(tmp_path / "images", ["a", "b"], 12, size=16)
    (folder / "a" / "0003.png").write_bytes(b"not an image at all")
    experiment = {
        "model": {"name": "resnet18", "options": {"stem": "cifar"}},
        "data": {"dataset": "folder", "path": str(folder), "image_size": 16, "batch_size": 4, "val_fraction": 0.25},
        "training": {"epochs": 1},
    }
    config = parse_config({"seed": 0, "experiments": [{"name": "first", **experiment}, {"name": "second", **experiment}]})
    started = _record_process_starts(monkeypatch)
    with pytest.raises(TriptychError, match="0003.png"), isolation.ExperimentProcesses() as processes:
        processes.start_next()  # as the CLI does before it imports TensorFlow: the first experiment runs in it
        run_config(config, tmp_path / "out", RunOptions(report=False), log=lambda line: None, processes=processes)
    assert len(started) == 2
    # The first ran (and stopped on the bad image: a user error); the second, never used, was killed.
    assert [process.poll() for _, process in started] == [isolation.EXIT_USER_ERROR, -9]
    assert not (tmp_path / "out" / "second").exists()


@pytest.mark.slow
def test_a_user_error_inside_the_child_comes_back_as_one_exception_naming_it(tmp_path):
    """A broken image is found by the child (while screening its split), not by the parent's validation."""
    folder = write_image_folder(tmp_path / "images", ["a", "b"], 12, size=16)
    (folder / "a" / "0003.png").write_bytes(b"not an image at all")
    config = parse_config({"seed": 0, "experiments": [{
        "name": "broken",
        "model": {"name": "resnet18", "options": {"stem": "cifar"}},
        "data": {"dataset": "folder", "path": str(folder), "image_size": 16, "batch_size": 4, "val_fraction": 0.25},
        "training": {"epochs": 1},
    }]})
    with pytest.raises(TriptychError, match="0003.png") as caught:
        run_config(config, tmp_path / "out", RunOptions(report=False), log=lambda line: None)
    assert not isinstance(caught.value, ExperimentCrashed)
    assert "\n" not in str(caught.value)
