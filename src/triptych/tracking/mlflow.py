"""MLflow tracking: one parent run per config, one nested run per experiment.

Each experiment run gets, read from its run directory: the resolved config as params
(``training.epochs``, ...), history.csv as per-epoch metrics (``step`` = epoch), the test
metrics of metrics.json with their 95% confidence intervals (``test_accuracy``,
``test_accuracy_ci95_low``, ...), tags for the model, its family and where its weights came
from, and every file of the run directory (plots, model.keras, TensorBoard logs, ...) as
artifacts. The parent run holds the config and the comparison report.

The store is ``MLFLOW_TRACKING_URI`` when set, else a SQLite store in ``OUT/mlruns/``
(``mlflow ui --backend-store-uri sqlite:///OUT/mlruns/mlflow.db``). mlflow is imported here
only, and only when tracking is asked for: ``pip install triptych[mlflow]``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml

from triptych.config import Config, to_yaml
from triptych.tracking.base import Tracker, Warn

STORE_DIR = "mlruns"
# Not artifacts: the epoch backup (deleted when a run finishes) and the best-epoch weights,
# which model.keras already holds.
SKIPPED_DIRS = {"checkpoints"}
_METRICS_PER_CALL = 1000  # MLflow's limits for one log_batch call
_PARAMS_PER_CALL = 100


def tracking_uri(out: Path) -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite store under the output directory."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(out / STORE_DIR / 'mlflow.db').resolve()}"


def start_mlflow(config: Config, out: Path, warn: Warn) -> Tracker:
    """The parent run for ``config``, or a do-nothing tracker (and one warning) if that fails."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        warn("tracking: mlflow is not installed (pip install 'triptych[mlflow]'); this run is not tracked")
        return Tracker()
    try:
        return MlflowTracker(MlflowClient(tracking_uri=_prepare_store(out)), config, out, warn)
    except Exception as err:  # noqa: BLE001 - a tracking server must never stop training
        warn(f"tracking: MLflow failed ({_one_line(err)}); this run is not tracked")
        return Tracker()


def _prepare_store(out: Path) -> str:
    uri = tracking_uri(out)
    if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
        (out / STORE_DIR).mkdir(parents=True, exist_ok=True)
    # MLflow and alembic log every schema migration of a new store at INFO level.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return uri


class MlflowTracker(Tracker):
    """A parent run for one config; :meth:`log_experiment` adds a nested run per experiment."""

    def __init__(self, client, config: Config, out: Path, warn: Warn) -> None:
        self.client, self.out, self.warn = client, out, warn
        self.experiment_id = _experiment_id(client, config.title, out)
        parent = client.create_run(self.experiment_id, run_name=out.resolve().name, tags={"triptych.out": str(out.resolve())})
        self.parent_id = parent.info.run_id
        _log_params(client, self.parent_id, {"seed": config.seed, "experiments": len(config.experiments)})
        client.log_text(self.parent_id, to_yaml(config), "config.yaml")
        self.broken = self.closed = False
        self.children: dict[str, str] = {}  # experiment name -> its nested run's id

    def log_experiment(self, run_dir: str | Path) -> None:
        if not self.broken:
            run_dir = Path(run_dir)
            run_id = self._guard(log_run_dir, self.client, self.experiment_id, self.parent_id, run_dir)
            if run_id:
                self.children[run_dir.name] = run_id

    def close(self, report: str | Path | None = None, failed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if report is not None and Path(report).is_file() and not self.broken:
            self._guard(self.client.log_artifact, self.parent_id, str(report))
            self._guard(self._log_report_plots, Path(report))
        if not self.broken:
            self._guard(self.client.set_terminated, self.parent_id, "FAILED" if failed else "FINISHED")
        else:
            try:  # tracking broke earlier and said so once: mark the parent run incomplete if the store still answers
                self.client.set_terminated(self.parent_id, "FAILED")
            except Exception:  # noqa: BLE001, S110
                pass

    def _log_report_plots(self, report: Path) -> None:
        """The report draws each experiment's figures into ``<report>_plots/<experiment>/``
        (run directories stay as training left them): attach them to the experiments' runs."""
        plots = report.with_name(report.stem + "_plots")
        for name, run_id in self.children.items():
            if (plots / name).is_dir():
                self.client.log_artifacts(run_id, str(plots / name), "plots")

    def _guard(self, call, *args):
        try:
            return call(*args)
        except Exception as err:  # noqa: BLE001 - one warning, then stop trying; the run dirs keep everything
            self.broken = True
            self.warn(f"tracking: MLflow failed ({_one_line(err)}); the results are in {self.out}, no longer tracked")


def _experiment_id(client, name: str, out: Path) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (out / STORE_DIR / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def log_run_dir(client, experiment_id: str, parent_id: str, run_dir: Path) -> str:
    """Log one finished experiment directory as a run nested under ``parent_id``; its run id."""
    from mlflow.entities import Metric

    # Everything is read before the MLflow run is created, so an unreadable run directory leaves no empty run.
    manifest = _read_json(run_dir / "manifest.json")
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in _history_metrics(run_dir / "history.csv")]
    metrics += [Metric(key, value, now, 0) for key, value in _test_metrics(_read_json(run_dir / "metrics.json"))]
    tags = {
        "mlflow.parentRunId": parent_id,
        "triptych.model": str(manifest.get("model", "")),
        "triptych.family": str(manifest.get("family", "")),
        "triptych.weights": str(manifest.get("weights", "")),
        "triptych.status": str(manifest.get("status", "")),
        "triptych.run_dir": str(run_dir.resolve()),
    }
    run_id = client.create_run(experiment_id, run_name=run_dir.name, tags=tags).info.run_id
    _log_params(client, run_id, {**_flatten(config), "seed": manifest.get("seed")})
    for start in range(0, len(metrics), _METRICS_PER_CALL):
        client.log_batch(run_id, metrics=metrics[start:start + _METRICS_PER_CALL])
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if path.is_file() and relative.parts[0] not in SKIPPED_DIRS:
            folder = relative.parent.as_posix()
            client.log_artifact(run_id, str(path), None if folder == "." else folder)
    client.set_terminated(run_id, "FINISHED" if manifest.get("status") == "done" else "FAILED")
    return run_id


def _history_metrics(path: Path) -> list[tuple[str, float, int]]:
    """Every numeric column of history.csv, per epoch."""
    if not path.is_file():
        return []
    out = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            step = int(row["epoch"])
            for key, text in row.items():
                value = _number(text)
                if key != "epoch" and value is not None:
                    out.append((key, value, step))
    return out


def _test_metrics(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    """Headline test metrics with their CIs, top-k, per-class precision/recall/F1, size and time."""
    out = []
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc", "ece"):
        if _number(metrics.get(key)) is not None:
            out.append((f"test_{key}", float(metrics[key])))
        interval = metrics.get(f"{key}_ci95")
        if isinstance(interval, list) and len(interval) == 2 and None not in interval:
            out += [(f"test_{key}_ci95_low", float(interval[0])), (f"test_{key}_ci95_high", float(interval[1]))]
    for k, value in (metrics.get("top_k_accuracy") or {}).items():
        if _number(value) is not None:
            out.append((f"test_top_{k}_accuracy", float(value)))
    for name, scores in (metrics.get("per_class") or {}).items():
        for score in ("precision", "recall", "f1"):
            if _number(scores.get(score)) is not None:
                out.append((f"test_{score}_{_safe(name)}", float(scores[score])))
    for key in ("params", "trainable_params", "train_seconds", "n_test"):
        if _number(metrics.get(key)) is not None:
            out.append((key, float(metrics[key])))
    return out


def _log_params(client, run_id: str, values: dict[str, Any]) -> None:
    from mlflow.entities import Param

    params = [Param(key, _flow(value)) for key, value in values.items()]
    for start in range(0, len(params), _PARAMS_PER_CALL):
        client.log_batch(run_id, params=params[start:start + _PARAMS_PER_CALL])


def _flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"epochs": 3}}`` -> ``{"training.epochs": 3}``; lists and ``options`` stay whole."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value and key != "options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _flow(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _safe(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_-. /``."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _one_line(err: BaseException) -> str:
    return f"{err.__class__.__name__}: {' '.join(str(err).split())}"[:300]
