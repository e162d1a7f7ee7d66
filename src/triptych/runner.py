"""Run experiments end to end: data -> model -> training -> predictions -> metrics -> report.

This is the Python API behind ``triptych run``; a notebook user calls :func:`run_config`
(or :func:`run_experiment` for one experiment) and gets the same run directories.
"""

from __future__ import annotations

import datetime as dt
import platform
import resource
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from triptych import __version__
from triptych.config import Config, ExperimentConfig, to_yaml
from triptych.errors import TriptychError
from triptych.io import atomic_write_text, atomic_write_with
from triptych.rundir import STATUS_DONE, STATUS_FAILED, STATUS_RUNNING, RunDir, experiment_dirs

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    resume: bool = False
    overwrite: bool = False
    report: bool = True


def run_config(config: Config, out: str | Path, options: RunOptions = RunOptions(), log: Log = print) -> list[RunDir]:
    """Run every experiment of ``config`` into ``out/<experiment>/`` and write ``out/report.html``."""
    out = Path(out)
    validate_experiments(config)
    prepare_output_dir(out, options)
    runs = [run_experiment(exp, out, seed=config.seed, resume=options.resume, log=log) for exp in config.experiments]
    if options.report:
        from triptych.reporting import build_report

        report = build_report([run.root for run in runs], out / "report.html", title=config.title)
        log(f"report: {report}")
    return runs


def validate_experiments(config: Config) -> None:
    """Catch mistakes in any experiment before the first one spends an hour training."""
    from triptych.models import get_spec

    for exp in config.experiments:
        spec = get_spec(exp.model.name)
        unknown = sorted(set(exp.model.options) - set(spec.options))
        if unknown:
            raise TriptychError(
                f"experiment {exp.name}: unknown model option(s) {', '.join(unknown)} for {spec.name}; "
                f"valid: {', '.join(spec.options) or 'none'}"
            )
        if exp.data.dataset == "folder" and not Path(exp.data.path).expanduser().is_dir():
            raise TriptychError(f"experiment {exp.name}: data.path {exp.data.path} is not a directory")
        weights = exp.model.weights
        if weights and weights not in spec.pretrained and not Path(weights).expanduser().is_file():
            raise TriptychError(f"experiment {exp.name}: weights file {weights} not found")


def prepare_output_dir(out: Path, options: RunOptions) -> None:
    """Refuse to mix runs: an existing directory needs --resume or --overwrite."""
    if options.resume and options.overwrite:
        raise TriptychError("--resume and --overwrite contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise TriptychError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if options.overwrite:
            if not experiment_dirs(out) and not (out / "report.html").exists():
                raise TriptychError(f"{out} is not a triptych run directory; refusing to delete it with --overwrite")
            shutil.rmtree(out)
        elif not options.resume:
            raise TriptychError(f"output directory {out} already exists; pass --resume to continue it or --overwrite to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise TriptychError(f"cannot write to output directory {out}: {err.strerror or err}") from None


def run_experiment(exp: ExperimentConfig, out: Path, *, seed: int, resume: bool = False, log: Log = print) -> RunDir:
    """Train and evaluate one experiment; a finished one is skipped when resuming."""
    run = RunDir(Path(out) / exp.name)
    if resume and run.is_done():
        log(f"[{exp.name}] already done, skipped")
        return run
    _write_config(run, exp, resume)
    run.update_manifest(status=STATUS_RUNNING, started=_now(), reason=None)
    try:
        _train_and_evaluate(run, exp, seed, log)
    except BaseException as err:
        reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{err.__class__.__name__}: {err}"
        run.update_manifest(status=STATUS_FAILED, reason=reason.splitlines()[0][:500], finished=_now())
        raise
    run.update_manifest(status=STATUS_DONE, finished=_now(), peak_rss_mb=peak_rss_mb())
    log(f"[{exp.name}] done: {run.root}")
    return run


def _write_config(run: RunDir, exp: ExperimentConfig, resume: bool) -> None:
    text = to_yaml(exp)
    if resume and run.config.exists() and run.config.read_text(encoding="utf-8") != text:
        raise TriptychError(
            f"{run.config} was written by a different config than the one given; "
            "resume with the same config, or pass --overwrite to start again"
        )
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, text)


def _train_and_evaluate(run: RunDir, exp: ExperimentConfig, seed: int, log: Log) -> None:
    import keras

    from triptych.data import fingerprint, make_splits, split_table
    from triptych.data.pipeline import Augment, make_dataset
    from triptych.data.preprocessing import get_preprocessor
    from triptych.evaluation import evaluate_run
    from triptych.models import build, get_spec, weights_origin
    from triptych.training import RunFiles, fit, steps_for

    keras.utils.set_random_seed(seed)
    # Our datasets are shuffled by tf.data; Keras warns that its own shuffle flag is ignored.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    spec = get_spec(exp.model.name)
    splits = make_splits(
        load_source(exp),
        seed=seed,
        val_fraction=exp.data.val_fraction,
        test_fraction=exp.data.test_fraction,
        train_per_class=exp.data.train_per_class,
        test_per_class=exp.data.test_per_class,
    )
    atomic_write_with(run.split, lambda tmp: pd.DataFrame(split_table(splits)).to_csv(tmp, index=False))
    size = exp.data.image_size or spec.default_input_shape[0]
    model = build(
        exp.model.name, len(splits.class_names), (size, size, 3), weights=exp.model.weights, **exp.model.options
    )
    run.update_manifest(
        experiment=exp.name,
        model=exp.model.name,
        weights=weights_origin(exp.model.weights),
        expected_pretrained=bool(spec.pretrained) and spec.family != "resnet",
        seed=seed,
        image_size=size,
        class_names=list(splits.class_names),
        data={
            "origin": exp.data.dataset if exp.data.dataset == "cifar10" else exp.data.path,
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
            "fingerprint": {k: fingerprint(getattr(splits, k)) for k in ("train", "val", "test")},
        },
        versions=package_versions(),
        git_sha=git_sha(),
        train_seconds=run.read_manifest().get("train_seconds", 0.0),
    )
    log(
        f"[{exp.name}] {exp.model.name} ({model.count_params():,} params) on {len(splits.train)} train / "
        f"{len(splits.val)} val / {len(splits.test)} test images at {size}x{size}"
    )
    preprocess = get_preprocessor(spec.preprocessing)
    num_classes = len(splits.class_names)

    def dataset(split: str, training: bool):
        return make_dataset(
            getattr(splits, split),
            num_classes,
            size,
            exp.data.batch_size,
            preprocess,
            training=training,
            seed=seed,
            augment=Augment(exp.data.augment.crop_padding, exp.data.augment.flip),
            cache=exp.data.cache,
        )

    files = RunFiles(run.history, run.best_weights, run.backup_dir, run.root / "tensorboard")
    best = fit(
        model,
        dataset("train", True),
        dataset("val", False),
        exp.training,
        files,
        steps_per_epoch=steps_for(len(splits.train), exp.data.batch_size),
        on_elapsed=lambda seconds: _add_train_seconds(run, seconds),
    )
    if run.best_weights.exists():
        model.load_weights(str(run.best_weights))
    save_for_inference(model, run.model)
    started = time.perf_counter()
    probabilities = model.predict(dataset("test", False), verbose=0)
    run.update_manifest(best_epoch=best.best_epoch(), predict_seconds=round(time.perf_counter() - started, 3))
    write_predictions(run, splits.test.ids, splits.test.labels, probabilities, splits.class_names)
    evaluate_run(
        run.root,
        extra={
            "model": exp.model.name,
            "params": int(model.count_params()),
            "trainable_params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
            "train_seconds": round(run.read_manifest().get("train_seconds", 0.0), 2),
        },
    )
    shutil.rmtree(run.backup_dir, ignore_errors=True)


def save_for_inference(model, path: Path) -> None:
    """Save the model without its optimizer, so that ``model.keras`` loads with plain Keras
    (safe mode, no triptych import needed) wherever it is shipped."""
    import keras

    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    atomic_write_with(path, lambda tmp: inference.save(str(tmp)))


def load_source(exp: ExperimentConfig):
    from triptych.data import load_cifar10, load_folder

    if exp.data.dataset == "cifar10":
        return load_cifar10()
    return load_folder(exp.data.path)


def write_predictions(
    run: RunDir, ids: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]
) -> None:
    names = np.asarray(class_names)
    frame = pd.DataFrame(
        {"path": ids, "y_true": names[labels], "y_pred": names[np.argmax(probabilities, axis=1)]}
    )
    for index, name in enumerate(class_names):
        frame[f"prob_{name}"] = probabilities[:, index].astype(np.float64)
    atomic_write_with(run.predictions, lambda tmp: frame.to_csv(tmp, index=False))


def _add_train_seconds(run: RunDir, seconds: float) -> None:
    total = float(run.read_manifest().get("train_seconds") or 0.0) + seconds
    run.update_manifest(train_seconds=round(total, 3))


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version(), "triptych": __version__}
    for package in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def git_sha() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
