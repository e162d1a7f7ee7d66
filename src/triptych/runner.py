"""Run experiments end to end: data -> model -> training -> predictions -> metrics -> report.

This is the Python API behind ``triptych run``; a notebook user calls :func:`run_config`
(or :func:`run_experiment` for one experiment) and gets the same run directories.

One experiment, top to bottom (:func:`run_experiment`):

1. start (or, resuming, continue) the run record, ``manifest.json``;
2. :func:`prepare_data` -> :class:`PreparedData`: the splits, after screening the image files
   and the near-duplicate check, and ``split.csv``;
3. :func:`build_model` -> :class:`BuiltModel`: the model with the first usable weights;
4. :func:`plan_budget` -> :class:`~triptych.rundir.BudgetInfo` (``training.time_budget`` only): the
   epochs that fit, from a measured warm-up (or as decided before, when resuming);
   :func:`train` -> :class:`TrainResult`: every phase not done yet, each recorded when it ends;
5. :func:`evaluate` -> :class:`Evaluation`: ``model.keras``, ``predictions.csv``, ``metrics.json``;
6. :func:`write_extras`: ``profile.json`` and Grad-CAM overlays.

The runner is the one writer of the run record (:class:`triptych.rundir.RunRecord`): the steps
return values and the runner records them. Importing this module loads TensorFlow.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import psutil

from triptych import tracking
from triptych.budget import BudgetClock, describe, parse_budget
from triptych.config import Config, ExperimentConfig, to_yaml
from triptych.data.leakage import guard_cross_split_duplicates
from triptych.data.pipeline import Augment, make_dataset
from triptych.data.preprocessing import get_preprocessor
from triptych.data.sources import BadImagesError, fingerprint, load_cifar10, load_folder, screen_images
from triptych.data.splits import Splits, make_splits, split_table
from triptych.diagrams import draw
from triptych.errors import InvalidArgumentError, TriptychError
from triptych.evaluation import evaluate_run
from triptych.inference.gradcam import gradcam_for_run
from triptych.inference.tta import predict_with_tta
from triptych.io import (
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    remove_stale_temp_files,
    storage_error,
)
from triptych.isolation import ExperimentProcesses
from triptych.models import ModelSpec, build, get_spec, weights_origin
from triptych.models.forward import forward_function
from triptych.models.fused_batchnorm import AUTO as FUSED_AUTO
from triptych.models.fused_batchnorm import resolve_fused_bn, standard_layers_copy
from triptych.models.profile import profile_keras_model
from triptych.preflight import (
    ONE_NETWORK_FAMILIES,
    expand,
    frozen_base_phase,
    check_budget,
    prepare_output_dir,
    runs_in_one_process,
    validate_experiments,
    weight_candidates,
)
from triptych.provenance import git_sha, package_versions, peak_rss_mb, utc_now
from triptych.repeats import expand_repeats
from triptych.reporting import FigureCache, build_report
from triptych.rundir import (
    PREDICTED_FROM_IMAGES,
    PREDICTED_FROM_TRUNK_CACHE,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_RUNNING,
    BadImageInfo,
    BudgetInfo,
    DataInfo,
    FeatureCacheInfo,
    PrecisionInfo,
    RecipeInfo,
    RunDir,
    RunRecord,
    SplitFingerprints,
    TrunkCacheInfo,
    experiment_dirs,
)
from triptych.training.budget_plan import plan_epochs, with_chosen_epochs
from triptych.training.callbacks import best_checkpoint_epoch, load_model_weights, read_history_rows
from triptych.training.distribute import (
    chief_values,
    get_strategy,
    init_strategies,
    is_chief,
    set_threads,
    training_scope,
    worker_output_dir,
)
from triptych.training.phases import PhaseData, plan_phases, run_phase, trunk_test_probabilities
from triptych.training.precision import PRECISIONS
from triptych.training.precision_auto import resolve_precision
from triptych.training.trainer import balanced_class_weights

Log = Callable[[str], None]

__all__ = ["RunOptions", "run_config", "run_experiment", "run_experiment_here"]


@dataclass(frozen=True)
class RunOptions:
    resume: bool = False  # continue unfinished experiments in ``out``, skip finished ones
    overwrite: bool = False  # delete an existing ``out`` first
    report: bool = True  # write ``out/report.html`` (and the architecture diagrams)
    # Each experiment in its own process (triptych.isolation): its own peak memory and TensorFlow state.
    isolate: bool = True
    threads: int | None = None  # TensorFlow intra-op threads in each experiment; None: TensorFlow's choice
    track: str | None = None  # overrides config.tracking ("none" | "mlflow")
    # Wall time for the whole config ('10m', seconds): shared out over the experiments as they run,
    # each one's share becoming its training.time_budget. None: config.time_budget, if any.
    budget: str | float | None = None


def run_config(
    config: Config, out: str | Path, options: RunOptions = RunOptions(), log: Log = print,
    processes: ExperimentProcesses | None = None,
) -> list[RunDir]:
    """Run every experiment of ``config`` into ``out/<experiment>/`` (a repeated one into
    ``out/<experiment>@s<seed>/``, see :mod:`triptych.repeats`) and write ``out/report.html``.

    ``processes``: the experiments' processes (``options.isolate``), for a caller that started the first
    one early (the CLI does, before it imports TensorFlow); by default run_config starts its own."""
    validate_experiments(config)  # a mistake in any experiment stops the run before the first trains
    if options.threads is not None and options.threads < 1:
        raise InvalidArgumentError(f"threads must be at least 1, got {options.threads}")
    clock = budget_clock(config, options)
    strategies = [exp.training.strategy for exp in config.experiments]
    if runs_in_one_process(config):
        options = replace(options, isolate=False)
    if not options.isolate:
        set_threads(options.threads)
        init_strategies(strategies)  # before TensorFlow runs anything (the multi-worker strategy needs that)
    out = worker_output_dir(out, strategies)  # multi-worker: the chief writes OUT, worker i OUT.worker-i
    prepare_output_dir(out, resume=options.resume, overwrite=options.overwrite)
    done_before = {run.name for run in experiment_dirs(out) if run.is_done()}
    kind = options.track or config.tracking
    with tracking.start(config, out, kind=kind if is_chief() else "none") as tracker, \
            (processes or ExperimentProcesses(options.threads)) as processes, \
            ReportWork(config, out, log, enabled=options.report and options.isolate) as report_work:
        runs = []
        planned = expand_repeats(config)
        # Experiments that will need a process (a resumed run skips those done before).
        to_run = [i for i, (exp, _) in enumerate(planned) if not (options.resume and exp.name in done_before)]
        for index, (exp, seed) in enumerate(planned):
            exp = with_budget_share(exp, out, clock, [e for e, _ in planned[index:]])
            runs.append(_run_one(exp, out, seed, options, log, processes, next_one=any(i > index for i in to_run)))
            if exp.name not in done_before:
                tracker.log_experiment(runs[-1].root)
            report_work.after(runs[-1], last_but_one=index == len(planned) - 2)
        report = None
        if options.report:
            figures = report_work.finish()
            report = build_report([run.root for run in runs], out / "report.html", title=config.title, figures=figures)
            log(f"report: {report}")
        tracker.close(report=report)
    return runs


class ReportWork:
    """The report's drawing, done by this process while the experiments' own processes run: each
    finished run's figures, and the architecture diagrams while the last experiment starts (its data
    checks and traces are single-threaded, so a second core is free). Measured on 2 cores: ~2.8 s of
    figures a run and ~4 s of diagrams, otherwise paid after the last experiment. In-process runs
    (``isolate=False``) have no free core: everything is then drawn at the end, as before."""

    def __init__(self, config: Config, out: Path, log: Log, *, enabled: bool):
        self.config, self.out, self.log = config, out, log
        self.figures = FigureCache()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triptych-report") if enabled else None
        self._diagrams: Future | None = None
        self._pending: list[Future] = []

    def __enter__(self) -> ReportWork:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def after(self, run: RunDir, *, last_but_one: bool) -> None:
        """``run`` has ended: draw its figures (and, before the last experiment, the diagrams) in the background."""
        if self._pool is None:
            return
        self._pending.append(self._pool.submit(self.figures.add_run, run.root))
        if last_but_one:
            self._diagrams = self._pool.submit(draw_diagrams, self.config, self.out, self.log)

    def finish(self) -> FigureCache:
        """Wait for the background drawing; draw the diagrams now if they were not. The figures drawn."""
        for future in self._pending:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - build_report draws that run's figures again and says what failed
                pass
        if self._diagrams is None:
            draw_diagrams(self.config, self.out, self.log)
        else:
            self._diagrams.result()  # draw_diagrams reports its own failures as warnings
        return self.figures


# What a config's budget keeps back for the report and the diagrams after the last experiment.
REPORT_RESERVE_S, REPORT_RESERVE_PER_EXPERIMENT_S = 3.0, 2.0


def budget_clock(config: Config, options: RunOptions) -> BudgetClock | None:
    """The config's budget (``options.budget``, else ``config.time_budget``), checked, with the report's
    reserve; None without one."""
    total = check_budget(config, options.budget)
    if total is None:
        return None
    reserve = REPORT_RESERVE_S + REPORT_RESERVE_PER_EXPERIMENT_S * len(config.experiments) if options.report else 0.0
    return BudgetClock(total, reserve_s=reserve)


def with_budget_share(
    exp: ExperimentConfig, out: Path, clock: BudgetClock | None, remaining: list[ExperimentConfig]
) -> ExperimentConfig:
    """``exp`` (the first of ``remaining``) with its share of the config's budget as
    ``training.time_budget`` (:func:`triptych.budget.next_share`: its own time_budget, or an equal share
    of what is left), or (resuming) the share it was given before, so that its config stays the same."""
    if clock is None:
        return exp
    run = RunDir(out / exp.name)
    decided = run.read_record().budget if run.manifest.exists() else None
    own = [parse_budget(e.training.time_budget) for e in remaining]
    share = decided.seconds if decided is not None else clock.share(own)
    return exp.model_copy(update={"training": exp.training.model_copy(update={"time_budget": share})})


def _run_one(
    exp: ExperimentConfig, out: Path, seed: int, options: RunOptions, log: Log, processes: ExperimentProcesses,
    *, next_one: bool,
) -> RunDir:
    """``exp`` in this process or (isolate) in its own; ``next_one``: another experiment's process follows."""
    if not options.isolate:
        return run_experiment(exp, out, seed=seed, resume=options.resume, log=log)
    if options.resume and RunDir(out / exp.name).is_done():
        log(f"[{exp.name}] already done, skipped")  # no process started just to say so
        return RunDir(out / exp.name)
    return RunDir(processes.run(exp, out, seed=seed, resume=options.resume, next_one=next_one))


def run_experiment_here(
    exp: ExperimentConfig, out: Path, *, seed: int, resume: bool, threads: int | None, sent: float | None = None
) -> RunDir:
    """One experiment in this (fresh) process, as :mod:`triptych.isolation`'s child runs it; ``sent``
    (``time.time()``) is when the parent handed it over."""
    set_threads(threads)
    init_strategies([exp.training.strategy])  # before TensorFlow runs anything
    # A time budget counts this process's start-up too, unless it started ahead, while the previous
    # experiment ran (that time is the previous one's): then it counts from the hand-over.
    started = max(psutil.Process().create_time(), sent or 0.0)
    return run_experiment(exp, out, seed=seed, resume=resume, log=lambda line: print(line, flush=True), started=started)


def run_experiment(
    exp: ExperimentConfig, out: Path, *, seed: int, resume: bool = False, log: Log = print, started: float | None = None
) -> RunDir:
    """Train and evaluate one experiment; a finished one is skipped when resuming.

    ``started`` (``time.time()``, default: now) is where ``training.time_budget`` starts counting.
    """
    started = time.time() if started is None else started
    run = RunDir(Path(out) / exp.name)
    previous = run.read_record() if resume else None
    if previous is not None and previous.status == STATUS_DONE:
        log(f"[{exp.name}] already done, skipped")
        return run
    if resume:
        remove_stale_temp_files(run.root)  # a SIGKILL skips the clean-up of an atomic write
    write_config(run, exp, resume)
    record = start_record(exp, seed, previous)
    run.write_record(record)
    try:
        exp, record.precision = resolved_precision(exp, record.precision)
        exp, record.precision = agreed_auto_choices(exp, record.precision)
        run.write_record(record)
        log(f"[{exp.name}] precision {record.precision.precision}: {record.precision.reason}")
        with training_scope(exp.training):  # tf.distribute strategy and mixed-precision policy
            train_and_evaluate(run, record, exp, seed, log, started)
    except BaseException as err:
        record_failure(run, record, err)
        message = storage_error(err, run.root) if isinstance(err, OSError) else None
        if message:  # a full disk or a read-only folder is the user's to fix: one line, not a traceback
            raise TriptychError(message) from err
        raise
    record.status, record.finished, record.peak_rss_mb = STATUS_DONE, utc_now(), peak_rss_mb()
    run.write_record(record)
    log(f"[{exp.name}] done: {run.root}")
    return run


def resolved_precision(exp: ExperimentConfig, recorded: PrecisionInfo | None) -> tuple[ExperimentConfig, PrecisionInfo]:
    """``training.precision: auto`` made concrete (measured once per machine, remembered); a
    resumed run keeps the precision it started with. config.yaml keeps what the user wrote."""
    if recorded is None or recorded.requested != exp.training.precision:
        recorded = PrecisionInfo(**resolve_precision(exp.training.precision).record())
    training = exp.training.model_copy(update={"precision": recorded.precision})
    return exp.model_copy(update={"training": training}), recorded


def agreed_auto_choices(exp: ExperimentConfig, precision: PrecisionInfo) -> tuple[ExperimentConfig, PrecisionInfo]:
    """Under ``strategy: multiworker``, the chief's ``auto`` choices (precision, fused BatchNorm) on
    every worker. Each process measures its own machine, and two workers of one cluster measured
    differently (bf16 1.25x on one, 1.09x on the other): mixed choices mix precisions in the shared
    gradients, or build different graphs whose collectives no longer match."""
    if exp.training.strategy != "multiworker":
        return exp, precision
    names = list(PRECISIONS)
    fusable = "fused_bn" in get_spec(exp.model.name).options
    fused = resolve_fused_bn(exp.model.options.get("fused_bn", FUSED_AUTO)).fused if fusable else False
    chief_precision, chief_fused = chief_values(get_strategy("multiworker"), [names.index(precision.precision), int(fused)])
    if names[chief_precision] != precision.precision:
        reason = f"the chief's choice (this worker measured {precision.precision}: {precision.reason})"
        precision = precision.model_copy(update={"precision": names[chief_precision], "reason": reason})
        exp = exp.model_copy(update={"training": exp.training.model_copy(update={"precision": precision.precision})})
    if fusable:
        options = {**exp.model.options, "fused_bn": bool(chief_fused)}
        exp = exp.model_copy(update={"model": exp.model.model_copy(update={"options": options})})
    return exp, precision


def write_config(run: RunDir, exp: ExperimentConfig, resume: bool) -> None:
    text = to_yaml(exp)
    # An experiment that never trained (e.g. it stopped on bad images) may resume with a changed config.
    trained = run.history.exists() or run.backup_dir.exists()
    if resume and trained and run.config.exists() and run.config.read_text(encoding="utf-8") != text:
        raise InvalidArgumentError(
            f"{run.config} was written by a different config than the one given; "
            "resume with the same config, or pass overwrite=True to start again"
        )
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, text)


def start_record(exp: ExperimentConfig, seed: int, previous: RunRecord | None) -> RunRecord:
    """A new run record, or the previous session's (phases done, ...) for a resumed run."""
    session = {
        "status": STATUS_RUNNING,
        "reason": None,
        "started": utc_now(),
        "finished": None,
        "experiment": exp.name,
        "model": exp.model.name,
        "family": get_spec(exp.model.name).family,
        "seed": seed,
        "versions": package_versions(),
        "git_sha": git_sha(),
    }
    return RunRecord(**session) if previous is None else previous.model_copy(update=session)


def record_failure(run: RunDir, record: RunRecord, err: BaseException) -> None:
    reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{err.__class__.__name__}: {err}"
    record.status, record.reason = STATUS_FAILED, reason.splitlines()[0][:500]
    record.finished, record.peak_rss_mb = utc_now(), peak_rss_mb()
    if isinstance(err, BadImagesError):  # the files that stopped the run, for the user to fix
        record.bad_images = [BadImageInfo(path=b.path, reason=b.reason) for b in err.bad]
    try:
        run.write_record(record)
    except OSError:
        pass  # a full disk cannot take the record either; the error itself says what happened


def train_and_evaluate(
    run: RunDir, record: RunRecord, exp: ExperimentConfig, seed: int, log: Log, started: float
) -> None:
    """Steps 2-6 of the experiment; the record is saved after each step that adds to it."""
    keras.utils.set_random_seed(seed)
    # Our datasets are shuffled by tf.data; Keras warns that its own shuffle flag is ignored.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    spec = get_spec(exp.model.name)

    data = prepare_data(exp, seed, log)
    record.bad_images, record.data = data.bad_images, data.info
    record.class_names = list(data.splits.class_names)
    run.write_record(record)
    atomic_write_with(run.split, lambda tmp: pd.DataFrame(split_table(data.splits)).to_csv(tmp, index=False))

    built = build_model(exp, spec, len(data.splits.class_names), log)
    record.weights, record.weights_note = built.weights_origin, built.weights_note
    record.expected_pretrained = spec.family not in ONE_NETWORK_FAMILIES
    record.frozen_base_phase, record.image_size = built.frozen_base, built.image_size
    record.preprocessing = built.preprocessing
    run.write_record(record)
    log(
        f"[{exp.name}] {exp.model.name} ({built.model.count_params():,} params, weights: {built.weights_origin}) on "
        f"{len(data.splits.train)} train / {len(data.splits.val)} val / {len(data.splits.test)} test images "
        f"at {built.image_size}x{built.image_size}"
    )

    inputs = phase_data(exp, data.splits, built, seed)
    record.budget = plan_budget(exp, built, inputs, data.splits, record.budget, started, log)
    run.write_record(record)
    exp = with_chosen_epochs(exp, record.budget)  # the configured epochs are upper limits
    record.recipe = recipe_info(exp, data.splits, inputs.augment)
    result = train(run, record, exp, built, inputs, log)
    record.best_epoch, record.train_seconds = result.best_epoch, result.train_seconds
    run.write_record(record)

    evaluation = evaluate(run, exp, built, inputs, data.splits, result)
    record.predict_seconds, record.predicted_from = evaluation.predict_seconds, evaluation.predicted_from
    run.write_record(record)
    write_extras(run, built.model, log)
    shutil.rmtree(run.backup_dir, ignore_errors=True)


# --- step 2: data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    splits: Splits
    info: DataInfo
    bad_images: list[BadImageInfo]  # left out (data.skip_bad)


def prepare_data(exp: ExperimentConfig, seed: int, log: Log) -> PreparedData:
    """The experiment's splits: only the files it uses are checked; bad ones stop the run here,
    or are left out (skip_bad); near-duplicates across splits are refused, dropped or allowed."""
    source, note = load_source(exp, log)
    split = partial(
        make_splits,
        seed=seed if exp.data.split_seed is None else exp.data.split_seed,  # repeats may fix the split
        val_fraction=exp.data.val_fraction,
        test_fraction=exp.data.test_fraction,
        train_per_class=exp.data.train_per_class,
        test_per_class=exp.data.test_per_class,
    )
    splits, bad = screen_images(source, split, skip_bad=exp.data.skip_bad)
    if bad:
        log(f"[{exp.name}] left out {len(bad)} unusable image file(s), listed in manifest.json "
            f"(first: {bad[0].path}: {bad[0].reason})")
    policy = exp.data.duplicates if exp.data.dataset == "folder" else "allow"
    pool = _train_pool(source, splits, bad)
    splits, dropped = guard_cross_split_duplicates(splits, policy, source.name, train_pool=pool)
    if dropped:
        log(f"[{exp.name}] dropped {dropped} near-duplicate image(s) from val/test")
    fingerprints = SplitFingerprints(**{k: fingerprint(getattr(splits, k)) for k in ("train", "val", "test")})
    info = DataInfo(origin=source.origin, note=note, train=len(splits.train), val=len(splits.val),
                    test=len(splits.test), fingerprint=fingerprints)
    return PreparedData(splits, info, [BadImageInfo(path=b.path, reason=b.reason) for b in bad])


def load_source(exp: ExperimentConfig, log: Log = print):
    """The experiment's dataset, or its declared fallback (with a note saying so)."""
    if exp.data.dataset == "cifar10":
        return load_cifar10(), None
    folder = expand(exp.data.path)
    if folder.is_dir() or not exp.data.fallback:
        return load_folder(folder), None
    note = f"{exp.data.path} not found: fell back to {exp.data.fallback}"
    log(f"[{exp.name}] {note}")
    return load_cifar10(), note


# --- step 3: the model ----------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltModel:
    model: keras.Model
    weights_origin: str  # "random", "imagenet (keras.applications)", "local file ... (sha256 ...)"
    weights_note: str | None  # why earlier weights candidates were not used
    image_size: int
    frozen_base: bool  # phase 1 trains the head on a frozen backbone
    preprocessing: str  # the input scaling its weights expect (e.g. "caffe" for ImageNet resnet50)


def build_model(exp: ExperimentConfig, spec: ModelSpec, num_classes: int, log: Log) -> BuiltModel:
    """The model with the first usable candidate of ``model.weights``, tried in order."""
    size = exp.data.image_size or spec.default_input_shape[0]
    candidates = weight_candidates(exp.model.weights)
    failures = []
    for candidate in candidates:
        weights = candidate if candidate in (None, "imagenet") else str(expand(candidate))
        if weights not in (None, "imagenet") and not Path(weights).is_file():
            failures.append(f"{candidate}: not found")
            continue
        try:
            model = build(exp.model.name, num_classes, (size, size, 3), weights=weights, **exp.model.options)
        except TriptychError as err:
            if candidate is candidates[-1]:
                raise
            failures.append(f"{candidate}: {err}")
            continue
        note = "; ".join(failures) or None
        if note:
            log(f"[{exp.name}] weights fallback to {weights or 'random'} ({note})")
        return BuiltModel(
            model,
            weights_origin(weights, spec, (size, size, 3)),
            note,
            size,
            frozen_base_phase(exp, spec, weights),
            spec.preprocessing_for(weights),
        )
    raise TriptychError(f"experiment {exp.name}: no usable weights: {'; '.join(failures)}")


def phase_data(exp: ExperimentConfig, splits: Splits, built: BuiltModel, seed: int) -> PhaseData:
    """Dataset factories for training and prediction (train/val/test, plain or augmented)."""
    augment = Augment.from_config(exp.data.augment)
    preprocess = get_preprocessor(built.preprocessing)
    size = built.image_size

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
        num_val=len(splits.val),
        batch_size=exp.data.batch_size,
        fingerprint="/".join(fingerprint(getattr(splits, k)) for k in ("train", "val")),
        preprocessing=built.preprocessing,
        augment=str(augment),
        image_size=size,
        seed=seed,
        class_weight=class_weights(exp, splits),
    )


def class_weights(exp: ExperimentConfig, splits: Splits) -> dict[int, float] | None:
    """``training.class_weight`` as ``{class index: weight}`` for ``model.fit``, from the training split."""
    if exp.training.class_weight != "balanced":
        return None
    return balanced_class_weights(splits.train.labels)


def recipe_info(exp: ExperimentConfig, splits: Splits, augment: str) -> RecipeInfo:
    """The optional recipe parts for the run record (``augment``: the pipeline's description)."""
    weights = class_weights(exp, splits)
    return RecipeInfo(
        augment=augment,
        ema_momentum=exp.training.ema_momentum if exp.training.ema else None,
        class_weights=None if weights is None else {splits.class_names[c]: w for c, w in weights.items()},
        tta=exp.data.tta,
    )


def _train_pool(source, splits: Splits, bad: list) -> list[str] | None:
    """The usable images train and val were drawn from (all but the test split); None for in-memory data."""
    if not source.train.is_files:
        return None
    left_out = {str(p) for p in splits.test.ids} | {str(b.path) for b in bad}
    return [str(p) for p in source.train.ids if str(p) not in left_out]


# --- step 4: training -----------------------------------------------------------------------


def plan_budget(
    exp: ExperimentConfig, built: BuiltModel, inputs: PhaseData, splits: Splits, decided: BudgetInfo | None,
    started: float, log: Log,
) -> BudgetInfo | None:
    """The epochs that fit ``training.time_budget`` (None without one): measured by a warm-up on
    this machine, or, resuming, the decision of the first session (never measured again)."""
    seconds = parse_budget(exp.training.time_budget)
    if seconds is None:
        return None
    if decided is not None and decided.seconds == seconds:
        log(f"[{exp.name}] {describe(decided)}, as decided when the run started")
        return decided
    phases = plan_phases(exp.training, built.frozen_base)
    decision = plan_epochs(exp, built.model, inputs, phases, budget_s=seconds, spent_s=time.time() - started,
                           num_val=len(splits.val), num_test=len(splits.test))
    log(f"[{exp.name}] {describe(decision)}")
    return decision



@dataclass(frozen=True)
class TrainResult:
    best_epoch: int | None  # on validation, over all phases
    phases_done: list[str]
    feature_cache: FeatureCacheInfo | None
    trunk_cache: TrunkCacheInfo | None
    train_seconds: float  # the epochs in history.csv (all sessions) plus the feature and trunk extraction


def train(run: RunDir, record: RunRecord, exp: ExperimentConfig, built: BuiltModel, inputs: PhaseData, log: Log) -> TrainResult:
    """Every phase the record does not list as done; each one is recorded as it ends, so a run
    killed in phase 2 resumes in phase 2."""
    if exp.training.fine_tune and not built.frozen_base:
        log(f"[{exp.name}] fine_tune skipped: the backbone was trained end to end (no pretrained weights)")
    for phase in plan_phases(exp.training, built.frozen_base):
        if phase in record.phases_done:
            continue
        outcome = run_phase(phase, built.model, exp, run, inputs, weights_origin=built.weights_origin, log=log)
        record.phases_done = [*record.phases_done, phase]
        record.feature_cache = outcome.feature_cache or record.feature_cache
        record.trunk_cache = outcome.trunk_cache or record.trunk_cache
        run.write_record(record)
    return TrainResult(
        best_epoch=best_checkpoint_epoch(run.best_weights),
        phases_done=record.phases_done,
        feature_cache=record.feature_cache,
        trunk_cache=record.trunk_cache,
        train_seconds=training_seconds(run, record.feature_cache, record.trunk_cache),
    )


def training_seconds(
    run: RunDir, feature_cache: FeatureCacheInfo | None, trunk_cache: TrunkCacheInfo | None = None
) -> float:
    """Wall time of the epochs in history.csv -- which survives a kill, unlike a timer -- plus
    the feature extraction of a cached head phase and the trunk extraction of a cached fine-tune."""
    epochs = sum(float(row.get("epoch_seconds") or 0.0) for row in read_history_rows(run.history))
    extraction = sum(cache.seconds for cache in (feature_cache, trunk_cache) if cache)
    return round(epochs + extraction, 3)


# --- step 5: evaluation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    metrics: dict  # as written to metrics.json
    predict_seconds: float
    predicted_from: str  # PREDICTED_FROM_IMAGES or PREDICTED_FROM_TRUNK_CACHE


def evaluate(run: RunDir, exp: ExperimentConfig, built: BuiltModel, inputs: PhaseData, splits: Splits,
             result: TrainResult) -> Evaluation:
    """The best epoch's model saved, its test predictions, and their metrics."""
    model = built.model
    if run.best_weights.exists():
        load_model_weights(model, run.best_weights)
    save_for_inference(model, run.model)
    started = time.perf_counter()
    probabilities = None
    # Phase 2 trained the top on the trunk cache: its test images go through the same cache (kept for a
    # rerun). Test-time augmentation and tf.distribute's sharded predict need the images themselves.
    if result.trunk_cache is not None and exp.data.tta == "none" and exp.training.strategy == "default":
        probabilities = trunk_test_probabilities(model, exp, inputs, built.weights_origin,
                                                 test_fingerprint=fingerprint(splits.test), num_test=len(splits.test))
    predicted_from = PREDICTED_FROM_IMAGES if probabilities is None else PREDICTED_FROM_TRUNK_CACHE
    if probabilities is None:
        predict = partial(predict_probabilities, model, strategy=exp.training.strategy)
        probabilities = predict_with_tta(predict, inputs.make("test", False), exp.data.tta)
    predict_seconds = round(time.perf_counter() - started, 3)
    write_predictions(run, splits.test.ids, splits.test.labels, probabilities, splits.class_names)
    metrics = evaluate_run(
        run.root,
        extra={
            "model": exp.model.name,
            "params": int(model.count_params()),
            "trainable_params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
            "train_seconds": round(result.train_seconds, 2),
        },
    )
    return Evaluation(metrics, predict_seconds, predicted_from)


def predict_probabilities(model: keras.Model, dataset, strategy: str) -> np.ndarray:
    """Class probabilities for a dataset of (images, labels) batches, traced once for all batch
    sizes; under tf.distribute Keras's ``predict`` shards the work over the replicas instead."""
    if strategy != "default":
        return model.predict(dataset, verbose=0)
    forward = forward_function(model)
    return np.concatenate([forward(images).numpy() for images, *_ in dataset])


def save_for_inference(model: keras.Model, path: Path) -> None:
    """Save the model without its optimizer, so that ``model.keras`` loads with plain Keras
    (safe mode, no triptych import needed) wherever it is shipped."""
    inference = standard_layers_copy(keras.Model(model.inputs, model.outputs, name=model.name))
    atomic_write_with(path, lambda tmp: inference.save(str(tmp)))


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


# --- step 6: extras -------------------------------------------------------------------------


def write_extras(run: RunDir, model: keras.Model, log: Log) -> None:
    """Model card numbers (profile.json) and Grad-CAM of the most confident mistakes.

    The experiment's results are already saved: a failure here is reported, not fatal.
    """
    try:
        profile = profile_keras_model(model, measure=True)
        profile["image_size"] = profile["input_shape"][0]
        atomic_write_json(run.root / "profile.json", profile)
    except Exception as err:  # noqa: BLE001 - measuring must not lose a finished training
        log(f"[{run.name}] warning: could not measure the model ({err.__class__.__name__}: {err})")
    try:
        gradcam_for_run(run.root, n=4, model=model)  # the model just saved as model.keras
    except Exception as err:  # noqa: BLE001
        log(f"[{run.name}] warning: no Grad-CAM ({err.__class__.__name__}: {err})")


# --- after all experiments ------------------------------------------------------------------


def draw_diagrams(config: Config, out: Path, log: Log) -> None:
    """Each architecture's key idea, drawn from the model as configured, into OUT/diagrams/."""
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
