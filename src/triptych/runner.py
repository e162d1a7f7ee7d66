"""Run experiments end to end: data -> model -> training -> predictions -> metrics -> report.

This is the Python API behind ``triptych run``; a notebook user calls :func:`run_config`
(or :func:`run_experiment` for one experiment) and gets the same run directories.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
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
from triptych.io import atomic_write_json, atomic_write_text, atomic_write_with
from triptych.rundir import STATUS_DONE, STATUS_FAILED, STATUS_RUNNING, RunDir, experiment_dirs

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    resume: bool = False
    overwrite: bool = False
    report: bool = True


def run_config(config: Config, out: str | Path, options: RunOptions = RunOptions(), log: Log = print) -> list[RunDir]:
    """Run every experiment of ``config`` into ``out/<experiment>/`` and write ``out/report.html``."""
    from triptych.training.distribute import init_strategies, worker_output_dir

    validate_experiments(config)
    strategies = [exp.training.strategy for exp in config.experiments]
    init_strategies(strategies)  # before TensorFlow runs anything (the multi-worker strategy needs that)
    out = worker_output_dir(out, strategies)  # multi-worker: the chief writes OUT, worker i OUT.worker-i
    prepare_output_dir(out, options)
    runs = [run_experiment(exp, out, seed=config.seed, resume=options.resume, log=log) for exp in config.experiments]
    if options.report:
        from triptych.reporting import build_report

        draw_diagrams(config, out, log)
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
        if exp.data.dataset == "folder" and not exp.data.fallback and not expand(exp.data.path).is_dir():
            raise TriptychError(f"experiment {exp.name}: data.path {exp.data.path} is not a directory")
        candidates = weight_candidates(exp.model.weights)
        if len(candidates) == 1 and candidates[0] not in (None, *spec.pretrained) and not expand(candidates[0]).is_file():
            raise TriptychError(f"experiment {exp.name}: weights file {candidates[0]} not found")
        if exp.training.fine_tune and spec.family == "resnet":
            raise TriptychError(f"experiment {exp.name}: fine_tune needs a pretrained backbone (xception, densenet121)")


def expand(path: str) -> Path:
    """Config paths may use $VARS (e.g. $TRIPTYCH_MIRROR/wikiart) and ~."""
    return Path(os.path.expandvars(path)).expanduser()


def weight_candidates(weights: str | list | None) -> list[str | None]:
    items = weights if isinstance(weights, list) else [weights]
    return [None if item in (None, "random", "null") else item for item in items]


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
    if resume:
        remove_stale_temp_files(run.root)
    _write_config(run, exp, resume)
    run.update_manifest(status=STATUS_RUNNING, started=_now(), reason=None)
    try:
        from triptych.training.distribute import training_scope

        with training_scope(exp.training):  # tf.distribute strategy and mixed-precision policy
            _train_and_evaluate(run, exp, seed, log)
    except BaseException as err:
        reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{err.__class__.__name__}: {err}"
        try:
            run.update_manifest(
                status=STATUS_FAILED, reason=reason.splitlines()[0][:500], finished=_now(), peak_rss_mb=peak_rss_mb()
            )
        except OSError:
            pass  # a full disk cannot take the manifest either; the error itself says what happened
        raise
    run.update_manifest(status=STATUS_DONE, finished=_now(), peak_rss_mb=peak_rss_mb())
    log(f"[{exp.name}] done: {run.root}")
    return run


# The temporary name of an atomic write (triptych.io.atomic_path): .NAME.XXXXXXXX[.suffix]
_TEMP_FILE = re.compile(r"^\.(.+)\.[a-z0-9_]{8}(\.[^/]*)?$")


def remove_stale_temp_files(root: Path) -> int:
    """Delete the temporary files that a killed run left behind in its directory (a SIGKILL
    skips the clean-up of an atomic write); returns how many."""
    removed = 0
    for path in Path(root).rglob(".*"):
        if _TEMP_FILE.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _write_config(run: RunDir, exp: ExperimentConfig, resume: bool) -> None:
    text = to_yaml(exp)
    # An experiment that never trained (e.g. it stopped on bad images) may resume with a changed config.
    trained = run.history.exists() or run.backup_dir.exists()
    if resume and trained and run.config.exists() and run.config.read_text(encoding="utf-8") != text:
        raise TriptychError(
            f"{run.config} was written by a different config than the one given; "
            "resume with the same config, or pass --overwrite to start again"
        )
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, text)


def _train_and_evaluate(run: RunDir, exp: ExperimentConfig, seed: int, log: Log) -> None:
    import keras

    from triptych.data.sources import fingerprint, screen_images
    from triptych.data.splits import make_splits, split_table
    from triptych.evaluation import evaluate_run
    from triptych.models import get_spec
    from triptych.training.phases import train_phases

    keras.utils.set_random_seed(seed)
    # Our datasets are shuffled by tf.data; Keras warns that its own shuffle flag is ignored.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    spec = get_spec(exp.model.name)
    source, data_note = load_source(exp, log)
    # Only the files this run uses are checked; bad ones stop the run here, or are left out (skip_bad).
    splits, bad_images = screen_images(
        source,
        lambda src: make_splits(
            src,
            seed=seed,
            val_fraction=exp.data.val_fraction,
            test_fraction=exp.data.test_fraction,
            train_per_class=exp.data.train_per_class,
            test_per_class=exp.data.test_per_class,
        ),
        skip_bad=exp.data.skip_bad,
        on_bad=lambda bad: run.update_manifest(bad_images=[b.as_dict() for b in bad]),
    )
    if bad_images:
        log(f"[{exp.name}] left out {len(bad_images)} unusable image file(s), listed in manifest.json "
            f"(first: {bad_images[0].path}: {bad_images[0].reason})")
    splits = check_cross_split_duplicates(splits, exp, source.name, log)
    atomic_write_with(run.split, lambda tmp: pd.DataFrame(split_table(splits)).to_csv(tmp, index=False))
    size = exp.data.image_size or spec.default_input_shape[0]
    shape = (size, size, 3)
    model, weights, weights_note = build_with_weights(exp, len(splits.class_names), shape, log)
    frozen = exp.training.freeze_base if exp.training.freeze_base != "auto" else bool(weights) and spec.family != "resnet"
    origin = weights_origin_text(weights)
    run.update_manifest(
        experiment=exp.name,
        model=exp.model.name,
        family=spec.family,
        weights=origin,
        weights_note=weights_note,
        expected_pretrained=spec.family != "resnet",
        frozen_base_phase=frozen,
        seed=seed,
        image_size=size,
        class_names=list(splits.class_names),
        data={
            "origin": source.origin,
            "note": data_note,
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
        f"[{exp.name}] {exp.model.name} ({model.count_params():,} params, weights: {origin}) on "
        f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images at {size}x{size}"
    )
    data = phase_data(exp, spec, splits, size, seed)
    best_epoch = train_phases(
        model,
        exp,
        run,
        data,
        frozen_base=frozen,
        weights_origin=origin,
        rebuild=lambda: build_model(exp, len(splits.class_names), shape, weights=None),
        on_elapsed=lambda seconds: _add_train_seconds(run, seconds),
        log=log,
    )
    if run.best_weights.exists():
        from triptych.training.callbacks import load_model_weights

        load_model_weights(model, run.best_weights)
    save_for_inference(model, run.model)
    started = time.perf_counter()
    probabilities = model.predict(data.make("test", False), verbose=0)
    run.update_manifest(best_epoch=best_epoch, predict_seconds=round(time.perf_counter() - started, 3))
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
    write_extras(run, model, log)
    shutil.rmtree(run.backup_dir, ignore_errors=True)


def write_extras(run: RunDir, model, log: Log) -> None:
    """Model card numbers (profile.json) and Grad-CAM of the most confident mistakes.

    The experiment's results are already saved: a failure here is reported, not fatal.
    """
    from triptych.inference.gradcam import gradcam_for_run
    from triptych.models.profile import profile_keras_model

    try:
        profile = profile_keras_model(model, measure=True)
        profile["image_size"] = profile["input_shape"][0]
        atomic_write_json(run.root / "profile.json", profile)
    except Exception as err:  # noqa: BLE001 - measuring must not lose a finished training
        log(f"[{run.name}] warning: could not measure the model ({err.__class__.__name__}: {err})")
    try:
        gradcam_for_run(run.root, n=4)
    except Exception as err:  # noqa: BLE001
        log(f"[{run.name}] warning: no Grad-CAM ({err.__class__.__name__}: {err})")


def draw_diagrams(config: Config, out: Path, log: Log) -> None:
    """Each architecture's key idea, drawn from the model as configured, into OUT/diagrams/."""
    from triptych.diagrams import draw
    from triptych.models import get_spec

    drawn = set()
    for exp in config.experiments:
        if exp.model.name in drawn:
            continue
        drawn.add(exp.model.name)
        size = exp.data.image_size or get_spec(exp.model.name).default_input_shape[0]
        try:
            draw(exp.model.name, out / "diagrams" / f"{exp.model.name}.svg", input_shape=(size, size, 3), **exp.model.options)
        except Exception as err:  # noqa: BLE001 - a missing 'dot' binary must not cost the report
            log(f"warning: no diagram for {exp.model.name} ({err.__class__.__name__}: {err})")


def phase_data(exp: ExperimentConfig, spec, splits, size: int, seed: int):
    """Dataset factories for the training phases (train/val/test, plain or augmented)."""
    from triptych.data.sources import fingerprint
    from triptych.data.pipeline import Augment, make_dataset
    from triptych.data.preprocessing import get_preprocessor
    from triptych.training.phases import PhaseData

    augment = Augment(exp.data.augment.crop_padding, exp.data.augment.flip)
    preprocess = get_preprocessor(spec.preprocessing)

    def make(split: str, training: bool, seed: int = seed):
        return make_dataset(
            getattr(splits, split),
            len(splits.class_names),
            size,
            exp.data.batch_size,
            preprocess,
            training=training,
            seed=seed,
            augment=augment,
            cache=exp.data.cache,
        )

    return PhaseData(
        make=make,
        num_train=len(splits.train),
        batch_size=exp.data.batch_size,
        fingerprint="/".join(fingerprint(getattr(splits, k)) for k in ("train", "val")),
        preprocessing=spec.preprocessing,
        augment=str(augment),
        image_size=size,
        seed=seed,
    )


def build_model(exp: ExperimentConfig, num_classes: int, shape, weights: str | None):
    from triptych.models import build

    return build(exp.model.name, num_classes, shape, weights=weights, **exp.model.options)


def build_with_weights(exp: ExperimentConfig, num_classes: int, shape, log: Log):
    """Try each weights candidate in order; returns (model, weights used, note on what failed)."""
    candidates = weight_candidates(exp.model.weights)
    failures = []
    for candidate in candidates:
        weights = candidate if candidate in (None, "imagenet") else str(expand(candidate))
        if weights not in (None, "imagenet") and not Path(weights).is_file():
            failures.append(f"{candidate}: not found")
            continue
        try:
            model = build_model(exp, num_classes, shape, weights)
        except TriptychError as err:
            if candidate is candidates[-1]:
                raise
            failures.append(f"{candidate}: {err}")
            continue
        note = "; ".join(failures) or None
        if note:
            log(f"[{exp.name}] weights fallback to {weights or 'random'} ({note})")
        return model, weights, note
    raise TriptychError(f"experiment {exp.name}: no usable weights: {'; '.join(failures)}")


def weights_origin_text(weights: str | None) -> str:
    from triptych.models import weights_origin

    return weights_origin(weights)


def check_cross_split_duplicates(splits, exp: ExperimentConfig, dataset: str, log: Log):
    """Near-duplicate images across train/val/test inflate test accuracy: refuse or drop them."""
    if exp.data.dataset != "folder" or exp.data.duplicates == "allow":
        return splits
    from triptych.data.audit import cross_split_duplicates

    paths = {name: list(getattr(splits, name).ids) for name in ("train", "val", "test")}
    pairs = cross_split_duplicates(paths)
    if not pairs:
        return splits
    if exp.data.duplicates == "refuse":
        first = pairs[0]
        raise TriptychError(
            f"{len(pairs)} near-duplicate image pair(s) cross the train/val/test splits of {dataset} "
            f"(e.g. {first[0]} ~ {first[1]}); set data.duplicates: drop (removes them from val/test) or allow"
        )
    return drop_duplicates(splits, pairs, log, exp.name)


def drop_duplicates(splits, pairs, log: Log, name: str):
    """Remove from val and test every image that nearly duplicates an image of an earlier split."""
    from dataclasses import replace

    order = {"train": 0, "val": 1, "test": 2}
    where = {}
    for split in order:
        for path in getattr(splits, split).ids:
            where[str(path)] = split
    drop = set()
    for a, b, *_ in pairs:
        later = max((a, b), key=lambda p: order[where.get(str(p), "train")])
        if where.get(str(later)) != "train":
            drop.add(str(later))
    kept = {}
    for split in ("val", "test"):
        examples = getattr(splits, split)
        keep = np.array([str(p) not in drop for p in examples.ids])
        kept[split] = examples.take(np.flatnonzero(keep))
    log(f"[{name}] dropped {len(drop)} near-duplicate image(s) from val/test")
    return replace(splits, **kept)


def save_for_inference(model, path: Path) -> None:
    """Save the model without its optimizer, so that ``model.keras`` loads with plain Keras
    (safe mode, no triptych import needed) wherever it is shipped."""
    import keras

    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    atomic_write_with(path, lambda tmp: inference.save(str(tmp)))


def load_source(exp: ExperimentConfig, log: Log = print):
    """The experiment's dataset, or its declared fallback (with a note saying so)."""
    from triptych.data.sources import load_cifar10, load_folder

    if exp.data.dataset == "cifar10":
        return load_cifar10(), None
    folder = expand(exp.data.path)
    if folder.is_dir() or not exp.data.fallback:
        return load_folder(folder), None
    note = f"{exp.data.path} not found: fell back to {exp.data.fallback}"
    log(f"[{exp.name}] {note}")
    return load_cifar10(), note


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
