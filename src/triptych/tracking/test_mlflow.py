"""MLflow tracking against a real local MLflow store, read back through MlflowClient (no mocks)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import write_image_folder
from triptych import tracking
from triptych.config import parse_config
from triptych.tracking.mlflow import tracking_uri


def _config(folder: Path | None = None, **top):
    data = {"dataset": "folder", "path": str(folder or "/nowhere"), "image_size": 16, "batch_size": 8}
    experiment = {"name": "tiny", "model": {"name": "resnet18", "options": {"stem": "cifar"}}, "data": data,
                  "training": {"epochs": 1}}
    return parse_config({"title": "tracking test", "tracking": "mlflow", "experiments": [experiment], **top})


@pytest.mark.slow
def test_a_finished_run_is_logged_and_reads_back(tmp_path, monkeypatch):
    from triptych.runner import RunOptions, run_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = write_image_folder(tmp_path / "images", ["cats", "dogs"], 12, size=16)
    config = _config(folder)
    out = tmp_path / "out"
    lines: list[str] = []
    [run] = run_config(config, out, RunOptions(), log=lines.append)  # tracking: mlflow in the config
    assert not [line for line in lines if "warning" in line]
    assert tracking_uri(out).startswith("sqlite:///") and (out / "mlruns" / "mlflow.db").is_file()

    client = MlflowClient(tracking_uri=tracking_uri(out))
    experiment = client.get_experiment_by_name("tracking test")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"out", "tiny"}
    parent, child = runs["out"], runs["tiny"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert (parent.info.status, child.info.status) == ("FINISHED", "FINISHED")
    manifest = json.loads(run.manifest.read_text())
    assert child.data.tags["triptych.family"] == "resnet" == manifest["family"]
    assert child.data.tags["triptych.weights"] == manifest["weights"] == "random"
    params = child.data.params
    assert (params["model.name"], params["training.epochs"], params["data.image_size"]) == ("resnet18", "1", "16")
    assert params["model.options"] == '{"stem": "cifar"}' and params["seed"] == "0"

    with open(run.history, newline="") as handle:
        history = list(csv.DictReader(handle))
    losses = client.get_metric_history(child.info.run_id, "loss")
    assert [(m.step, m.value) for m in losses] == [(int(r["epoch"]), pytest.approx(float(r["loss"]))) for r in history]
    metrics = json.loads(run.metrics.read_text())
    logged = child.data.metrics
    assert logged["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert (logged["test_accuracy_ci95_low"], logged["test_accuracy_ci95_high"]) == pytest.approx(metrics["accuracy_ci95"])
    assert logged["test_macro_f1_ci95_high"] == pytest.approx(metrics["macro_f1_ci95"][1])
    assert logged["test_recall_dogs"] == pytest.approx(metrics["per_class"]["dogs"]["recall"])

    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"config.yaml", "manifest.json", "history.csv", "metrics.json", "model.keras", "plots"} <= artifacts
    assert "checkpoints" not in artifacts
    plots = {Path(a.path).name for a in client.list_artifacts(child.info.run_id, "plots")}
    drawn = tmp_path / "out" / "report_plots" / run.name  # where the report drew this experiment's figures
    assert {p.name for p in drawn.glob("*.png")} <= plots and "loss.png" in plots
    assert {"config.yaml", "report.html"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    local = client.download_artifacts(child.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == metrics


def test_missing_mlflow_is_one_warning_and_no_tracking(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without the extra looks like
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    warnings: list[str] = []
    with tracking.start(_config(), tmp_path, warn=warnings.append) as tracker:
        tracker.log_experiment(tmp_path / "anything")
    assert len(warnings) == 1 and "mlflow is not installed (pip install 'triptych[mlflow]')" in warnings[0]
    assert not (tmp_path / "mlruns").exists()


def test_a_failing_store_is_one_warning_for_the_whole_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    warnings: list[str] = []
    with tracking.start(_config(), tmp_path, warn=warnings.append) as tracker:
        tracker.log_experiment(tmp_path / "not_a_run_dir")  # no config.yaml (e.g. deleted while running): raises
        tracker.log_experiment(tmp_path / "not_a_run_dir_either")  # tracking gave up: not even tried
    assert len(warnings) == 1 and warnings[0].startswith("tracking: MLflow failed (")
    assert f"the results are in {tmp_path}" in warnings[0]
    client = MlflowClient(tracking_uri=tracking_uri(tmp_path))
    [parent] = client.search_runs([client.get_experiment_by_name("tracking test").experiment_id])  # no empty child
    assert parent.info.status == "FAILED"  # tracking is incomplete, and the store says so


def test_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tracking must be one of none, mlflow, not 'wandb'"):
        tracking.start(_config(), tmp_path, kind="wandb")
    assert type(tracking.start(_config(), tmp_path, kind="none")) is tracking.Tracker
