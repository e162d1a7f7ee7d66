"""Fault injection: SIGKILL training runs at random moments, resume them, check that nothing was
lost, repeated or half-written; then feed the whole bad-input corpus to the CLI.

    python benchmarks/faults.py [--quick] [--seed 0] [--kills N] [--determinism EPOCHS] [--work DIR] [--keep]

1. Two tiny configs on a generated image folder (3 classes, 32x32 PNGs), run through the CLI as
   subprocesses with TensorFlow op determinism on:
   - ``scratch``: ResNet-18 (CIFAR stem) from scratch, 3 epochs, crop + flip augmentation;
   - ``finetune``: DenseNet-121 at 32x32 from a local weights file (written here), two phases:
     2 head epochs on the frozen-feature cache, then 2 fine-tuning epochs (conv5_block16).
   Each config first runs once uninterrupted (the reference, and its run time T; ``--quick``
   skips the fine-tuning reference and takes T = 2.5x the scratch run).
2. Kill chains: start the run and SIGKILL it at a random moment (seeded), alternating two kinds:
   "in training" (when the row of a random epoch appears in history.csv, plus a random 0-1.5
   epoch-times: the checkpoint writes and the next epoch) and "any time" (uniform in [0.3 s, T],
   stratified over slices so that such kills spread over start-up, the image check, training
   and evaluation). After each kill, check that every output on disk is whole (a ``done``
   manifest only with complete metrics, predictions and model; every JSON/CSV parses); then
   ``--resume``, possibly killed again, until the kill quota is spent and a last ``--resume``
   finishes. Then: ``history.csv`` holds epochs 0..N-1 exactly once with the phases in order,
   metrics exist and are sane, no temporary file and no backup is left, and the final metrics
   are compared with the reference. Also: ``triptych report`` on a killed run succeeds and gives
   no results row to an unfinished experiment.
3. The bad-input corpus of tests/test_bad_inputs.py (bad images, bad configs, wrong weights,
   predict with mismatched classes, unwritable output, full disk, --skip-bad), through the CLI.

The last line printed is one JSON object:
{"kills": N, "resumed": N, "lost_epochs": 0, "repeated_epochs": 0, "bad_inputs": M, "clean_errors": M, ...}
``--quick``: 3 kills (2 in ``scratch``, 1 in ``finetune``), about 5 minutes on a busy 2-core
machine; the default is 20 kills (12 + 8).

Determinism of a resumed run (``--determinism 6``: ResNet-18 on a CIFAR-10 mirror subset, 250
training and 200 test images, 6 epochs, crop + flip, op determinism on; measured on 2 CPU cores):
- Two uninterrupted runs are bit-identical (difference 0 in every metric and every epoch's loss).
- A run killed before its first epoch backup, or after training (during evaluation), resumes to
  exactly the same result: it retrains from the same start, or only re-evaluates.
- A run killed in the middle of training resumes from the last epoch backup (weights, optimizer
  and learning-rate schedule restored exactly), but tf.data restarts its shuffle and augmentation
  sequences from the seed, so the remaining epochs see another order of the same images. The
  result then differs as a run with another data order would: test accuracy by 1.5-4.5 points
  (3-9 of 200 images, killed in epoch 5, 3, 1), the training loss of an epoch by up to 1.2 (this
  subset trains noisily). Two-phase runs behave the same, and a resumed phase also restarts the
  dropout masks' random state, which Keras keeps out of weight files and backups (a kill in the
  first fine-tuning epoch: 0.004 in training loss, 2e-6 in val_loss). Exact equality would need
  every epoch's shuffle and augmentation seeded from (seed, epoch), i.e. the trainer telling the
  pipeline its epoch, and the dropout state saved; not done.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the corpus builds a few Keras models in this process
ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
# Op determinism on, then the ordinary CLI entry point.
BOOT = (
    "import sys, tensorflow as tf; tf.config.experimental.enable_op_determinism(); "
    "from triptych.cli.main import main; sys.exit(main(sys.argv[1:]))"
)
CLASSES = ("red", "green", "blue")


def log(message: str) -> None:
    print(message, flush=True)


def environment(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        "TRIPTYCH_CACHE": str(work / "feature-cache"),  # keep the user's cache out of it
    }


# --------------------------------------------------------------------------- inputs


def make_dataset(root: Path, per_class: int = 10, size: int = 32, seed: int = 0) -> Path:
    """Class-coloured noisy PNGs (a model can learn them), unique content per file."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.full((size, size, 3), 60.0)
            base[..., label] += 120
            pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def make_densenet_weights(path: Path, env: dict[str, str]) -> Path:
    """A DenseNet-121 backbone weights file (random values; the phases do not care)."""
    code = (
        "import sys, keras; keras.utils.set_random_seed(0); "
        "keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))"
        ".save_weights(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, capture_output=True)
    return path


def write_configs(work: Path, data: Path, weights: Path) -> dict[str, dict]:
    common_data = {
        "dataset": "folder",
        "path": str(data),
        "image_size": 32,
        "batch_size": 6,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "duplicates": "allow",
    }
    configs = {
        "scratch": {
            "seed": 0,
            "experiments": [{
                "name": "scratch",
                "model": {"name": "resnet18", "options": {"stem": "cifar"}},
                "data": {**common_data, "augment": {"crop_padding": 4, "flip": True}},
                "training": {"epochs": 3, "learning_rate": 0.02, "warmup_epochs": 1},
            }],
        },
        "finetune": {
            "seed": 0,
            "experiments": [{
                "name": "finetune",
                "model": {"name": "densenet121", "weights": str(weights), "options": {"dropout": 0.1}},
                "data": {**common_data, "augment": {"flip": True}},
                "training": {
                    "epochs": 2,
                    "optimizer": "adam",
                    "learning_rate": 1e-3,
                    "weight_decay": 0.0,
                    "fine_tune": {"epochs": 2, "learning_rate": 1e-4, "unfreeze_blocks": ["conv5_block16"],
                                  "early_stopping_patience": None},
                },
            }],
        },
    }
    out = {}
    for name, config in configs.items():
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        training = config["experiments"][0]["training"]
        expected = [("head" if "fine_tune" in training else "train", training["epochs"])]
        if "fine_tune" in training:
            expected.append(("fine-tune", training["fine_tune"]["epochs"]))
        out[name] = {"path": path, "experiment": name, "phases": expected}
    return out


# --------------------------------------------------------------------------- running and killing


def start(config: Path, out: Path, env: dict[str, str], resume: bool, stdout) -> subprocess.Popen:
    command = [sys.executable, "-c", BOOT, "run", str(config), "--out", str(out), "--no-report"]
    if resume:
        command.append("--resume")
    return subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)


def run_until(process: subprocess.Popen, should_kill=None) -> bool:
    """Wait for ``process``; SIGKILL its process group once ``should_kill(seconds since start)``
    says so. Returns True if it was killed."""
    started = time.perf_counter()
    while process.poll() is None:
        if should_kill is not None and should_kill(time.perf_counter() - started):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    return False


def history_rows(run: Path) -> int:
    try:
        with open(run / "history.csv", encoding="utf-8") as handle:
            return max(0, sum(1 for line in handle if line.strip()) - 1)
    except OSError:
        return 0


def snapshot(run: Path) -> str:
    """Where a killed run stood: manifest status and the epochs in its history."""
    status = "no manifest"
    try:
        status = json.loads((run / "manifest.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        pass
    rows = 0
    if (run / "history.csv").exists():
        import pandas as pd

        rows = len(pd.read_csv(run / "history.csv"))
    return f"{status}, {rows} epoch(s) in history"


def whole_outputs(run: Path) -> list[str]:
    """Problems with the files on disk after a kill (none expected): every JSON and CSV parses,
    and a 'done' manifest comes with complete metrics, predictions and model."""
    import pandas as pd

    problems = []
    if not run.is_dir():
        return problems
    for path in run.rglob("*"):
        if path.name.startswith(".") or not path.is_file():
            continue  # temporary files of atomic writes: a SIGKILL may leave them; resume removes them
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".csv":
                pd.read_csv(path)
            elif path.suffix == ".keras":
                with zipfile.ZipFile(path) as archive:
                    if archive.testzip() is not None:
                        problems.append(f"{path}: corrupt archive")
        except Exception as err:  # noqa: BLE001 - anything unreadable is a finding
            problems.append(f"{path}: {err.__class__.__name__}: {err}")
    manifest = run / "manifest.json"
    if manifest.exists():
        try:
            status = json.loads(manifest.read_text())["status"]
        except (ValueError, KeyError):
            status = None
        if status == "done":
            for name in ("metrics.json", "predictions.csv", "model.keras", "history.csv", "split.csv"):
                if not (run / name).is_file():
                    problems.append(f"{run}: status done but {name} missing")
    return problems


def temp_files(root: Path) -> list[str]:
    import re

    pattern = re.compile(r"^\.(.+)\.[a-z0-9_]{8}(\.[^/]*)?$")
    return [str(p) for p in root.rglob(".*") if pattern.match(p.name) and p.is_file()]


def history_check(run: Path, phases: list[tuple[str, int]]) -> dict:
    """Lost and repeated epochs, and whether the phases come in order."""
    import pandas as pd

    frame = pd.read_csv(run / "history.csv")
    epochs = frame["epoch"].astype(int).tolist()
    total = sum(n for _, n in phases)
    expected_phases = [name for name, n in phases for _ in range(n)]
    got_phases = frame["phase"].tolist() if "phase" in frame else ["train"] * len(frame)
    return {
        "lost": len(set(range(total)) - set(epochs)),
        "repeated": len(epochs) - len(set(epochs)),
        "extra": len(set(epochs) - set(range(total))),
        "in_order": epochs == sorted(epochs) and got_phases == expected_phases,
    }


def final_metrics(run: Path) -> dict:
    import pandas as pd

    metrics = json.loads((run / "metrics.json").read_text())
    history = pd.read_csv(run / "history.csv")
    return {
        "accuracy": float(metrics["accuracy"]),
        "macro_f1": float(metrics.get("macro_f1", float("nan"))),
        "val_loss": float(history["val_loss"].iloc[-1]),
        "loss": history["loss"].astype(float).tolist(),
    }


def sane(metrics: dict) -> bool:
    return 0.0 <= metrics["accuracy"] <= 1.0 and all(math.isfinite(v) for v in metrics["loss"]) and math.isfinite(
        metrics["val_loss"]
    )


def reference_run(name: str, config: dict, work: Path, env: dict[str, str]) -> tuple[float, float, dict]:
    """The uninterrupted run: (seconds, mean epoch seconds, final metrics)."""
    import pandas as pd

    out = work / f"{name}-reference"
    started = time.perf_counter()
    with open(work / f"{name}-reference.log", "wb") as stdout:
        process = start(config["path"], out, env, resume=False, stdout=stdout)
        run_until(process)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"reference run {name} failed; see {work / (name + '-reference.log')}")
    run = out / config["experiment"]
    epoch_seconds = float(pd.read_csv(run / "history.csv")["epoch_seconds"].median())
    return seconds, epoch_seconds, final_metrics(run)


def report_lists_unfinished(out: Path, env: dict[str, str]) -> bool:
    """`triptych report` on a killed run: it succeeds, names every experiment, and gives a row of
    results (comparison.json) only to those whose manifest says done."""
    result = subprocess.run(
        [sys.executable, "-m", "triptych", "report", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        return False
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    html = (out / "report.html").read_text(encoding="utf-8")
    for run in out.iterdir():
        if not (run / "manifest.json").exists():
            continue
        done = json.loads((run / "manifest.json").read_text()).get("status") == "done"
        if run.name not in html or done != any(row["experiment"] == run.name for row in rows):
            return False
    return True


def kill_chains(name: str, config: dict, quota: int, seconds: float, epoch_seconds: float, work: Path,
                env: dict[str, str], rng: random.Random, reference: dict | None, checks: dict) -> dict:
    """Kill runs of ``config`` ``quota`` times (in one or more chains), resume each to the end.

    Kills alternate between two kinds of random moment: "in training" (the end of a random epoch
    k, when history.csv gets its row, then a random 0..1.5 epoch-times more: the checkpoint
    writes and the next epoch) and "any time" (uniform in [0.3 s, T], stratified: the i-th such
    kill falls in the i-th of equal slices, so they spread over start-up, the image check,
    training and evaluation).
    """
    stats = {"kills": 0, "resumed": 0, "lost": 0, "repeated": 0, "extra": 0, "chains": 0, "failures": [],
             "deltas": [], "kill_points": []}
    total_epochs = sum(n for _, n in config["phases"])
    anytime = (quota + 1) // 2 if quota > 1 else 0
    order = list(range(anytime))
    rng.shuffle(order)
    kinds = []  # ("training", None) or ("anytime", slice index)
    for i in range(quota):
        kinds.append(("training", None) if i % 2 == 0 or quota == 1 else ("anytime", order.pop()))
    chain = 0
    while stats["kills"] < quota and chain < 3 * quota:
        chain += 1
        out = work / f"{name}-chain{chain}"
        run = out / config["experiment"]
        resume = False
        killed_here = 0
        logfile = open(work / f"{name}-chain{chain}.log", "ab")
        while True:
            trigger, described = None, "to the end"
            if stats["kills"] < quota:
                kind, index = kinds[stats["kills"]]
                rows = history_rows(run)
                if kind == "training" and rows < total_epochs - 1:
                    target = rng.randint(max(1, rows + 1), total_epochs - 1)
                    extra = rng.uniform(0.0, 1.5 * epoch_seconds)
                    seen = {}

                    def trigger(elapsed, target=target, extra=extra, seen=seen):
                        if "at" not in seen and history_rows(run) >= target:
                            seen["at"] = elapsed
                        return "at" in seen and elapsed >= seen["at"] + extra

                    described = f"{extra:.1f}s after epoch {target - 1} ended"
                else:
                    lo = 0.3 + (seconds - 0.3) * (index or 0) / max(anytime, 1)
                    hi = 0.3 + (seconds - 0.3) * ((index or 0) + 1) / max(anytime, 1)
                    delay = rng.uniform(lo, hi)
                    trigger = lambda elapsed, delay=delay: elapsed >= delay  # noqa: E731
                    described = f"after {delay:.1f}s"
            process = start(config["path"], out, env, resume=resume, stdout=logfile)
            started = time.perf_counter()
            killed = run_until(process, trigger)
            if resume:
                stats["resumed"] += 1
            if not killed:
                if trigger is not None and not resume:
                    seconds = min(seconds, 0.95 * (time.perf_counter() - started))  # faster than the reference
                break
            stats["kills"] += 1
            killed_here += 1
            point = snapshot(run)
            stats["kill_points"].append(f"{time.perf_counter() - started:.1f}s ({described}): {point}")
            log(f"  [{name}] kill {stats['kills']}/{quota} {described} ({point})")
            stats["failures"].extend(whole_outputs(run))
            if not checks.get("report_checked") and (run / "manifest.json").exists() and "done" not in point:
                checks["report_checked"] = True
                if not report_lists_unfinished(out, env):
                    stats["failures"].append(f"{out}: triptych report presented an unfinished run as finished")
            resume = True
        logfile.close()
        stats["chains"] += 1
        if process.returncode != 0:
            stats["failures"].append(f"{out}: the last --resume exited {process.returncode}; see {logfile.name}")
            continue
        if killed_here == 0:
            continue  # finished before the kill: nothing to check beyond a plain run
        history = history_check(run, config["phases"])
        for key in ("lost", "repeated", "extra"):
            stats[key] += history[key]
        if not history["in_order"]:
            stats["failures"].append(f"{run}: epochs or phases out of order")
        leftovers = temp_files(out)
        if leftovers:
            stats["failures"].append(f"{run}: temporary files left: {leftovers}")
        if (run / "checkpoints" / "backup").exists():
            stats["failures"].append(f"{run}: backup not removed")
        metrics = final_metrics(run)
        if not sane(metrics):
            stats["failures"].append(f"{run}: metrics not sane: {metrics}")
        if reference is not None:
            stats["deltas"].append(delta(metrics, reference))
    return stats


def delta(metrics: dict, reference: dict) -> dict:
    """Absolute differences: test accuracy, final val_loss, and the largest per-epoch training loss."""
    n = min(len(metrics["loss"]), len(reference["loss"]))
    return {
        "accuracy": abs(metrics["accuracy"] - reference["accuracy"]),
        "val_loss": abs(metrics["val_loss"] - reference["val_loss"]),
        "loss": max(abs(a - b) for a, b in zip(metrics["loss"][:n], reference["loss"][:n])) if n else 0.0,
    }


# --------------------------------------------------------------------------- bad inputs


def corpus(work: Path, parallel: int) -> dict:
    spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "tests" / "test_bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs"] = module
    spec.loader.exec_module(module)
    cases = [*module.PER_FILE_CASES, *module.CASES]
    results = {"bad_inputs": 0, "clean_errors": 0, "skipped": 0, "unclean": []}

    def one(index_case):
        index, case = index_case
        root = work / "corpus" / f"case{index:02d}"
        try:
            args = module.prepare_case(case, root)
        except module.Skip as why:
            return case, "skipped", str(why)
        result = module.triptych(*args, fsize=case.fsize)
        try:
            module.verify_case(case, root, args, result)
        except AssertionError as err:
            return case, "unclean", str(err).splitlines()[0][:300]
        return case, "clean", ""

    # Cases that build Keras models in this process first, one at a time; then the CLI runs.
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for case, outcome, detail in pool.map(one, enumerate(cases)):
            if outcome == "skipped":
                results["skipped"] += 1
                log(f"  [corpus] skipped: {case.name} ({detail})")
                continue
            results["bad_inputs"] += 1
            if outcome == "clean":
                results["clean_errors"] += 1
            else:
                results["unclean"].append(f"{case.name}: {detail}")
            log(f"  [corpus] {'ok  ' if outcome == 'clean' else 'FAIL'} {case.name}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


# --------------------------------------------------------------------------- determinism


def measure_resume_determinism(work: Path, env: dict[str, str], epochs: int, kill_after: list[int]) -> dict:
    """Kill a ResNet-18 run right after the backup of its k-th epoch is written (epoch k is then
    in flight), resume it, and compare its final metrics with an uninterrupted run, for each k;
    also rerun the uninterrupted run once (op determinism: expect no difference at all)."""
    config = yaml.safe_load((work / "scratch.yaml").read_text())
    mirror = Path(os.environ.get("TRIPTYCH_MIRROR") or ROOT.parent / "shared" / "datasets")
    if (mirror / "cifar10" / "train").is_dir():  # a task hard enough that the runs do not all converge
        env = {**env, "TRIPTYCH_MIRROR": str(mirror)}
        config["experiments"][0]["data"] = {
            "dataset": "cifar10", "image_size": 32, "train_per_class": 25, "test_per_class": 20,
            "val_fraction": 0.2, "batch_size": 25, "augment": {"crop_padding": 4, "flip": True},
        }
    else:
        data = make_dataset(work / "images-determinism", per_class=40, seed=1)
        config["experiments"][0]["data"].update(path=str(data), batch_size=16)
    config["experiments"][0]["training"].update(epochs=epochs, learning_rate=0.05, warmup_epochs=1)
    path = work / "determinism.yaml"
    path.write_text(yaml.safe_dump(config))
    results = {}
    with open(work / "determinism.log", "ab") as stdout:
        for label in ("reference", "rerun"):
            process = start(path, work / f"det-{label}", env, resume=False, stdout=stdout)
            run_until(process, None)
        reference = final_metrics(work / "det-reference" / "scratch")
        results["uninterrupted rerun"] = delta(final_metrics(work / "det-rerun" / "scratch"), reference)
        for k in kill_after:
            out = work / f"det-kill{k}"
            backup = out / "scratch" / "checkpoints" / "backup" / "train" / "training_metadata.json"
            process = start(path, out, env, resume=False, stdout=stdout)
            while process.poll() is None:
                try:
                    if json.loads(backup.read_text())["epoch"] >= k:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.05)
            process = start(path, out, env, resume=True, stdout=stdout)
            run_until(process, None)
            results[f"killed in epoch {k}"] = delta(final_metrics(out / "scratch"), reference)
    results["reference"] = {"accuracy": reference["accuracy"], "val_loss": reference["val_loss"],
                            "loss": reference["loss"][-1]}
    return {name: {key: round(value, 6) for key, value in d.items()} for name, d in results.items()}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 kills (2 scratch, 1 fine-tune): a few minutes")
    parser.add_argument("--kills", type=int, help="total kills (default: 3 with --quick, else 20)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--parallel", type=int, default=3, help="bad-input CLI runs at a time")
    parser.add_argument("--no-corpus", action="store_true", help="skip the bad-input corpus")
    parser.add_argument(
        "--determinism", type=int, metavar="EPOCHS", default=0,
        help="also measure how far a killed-and-resumed scratch run of EPOCHS epochs ends from an uninterrupted "
        "one, killed in epochs 1, EPOCHS//2 and EPOCHS-1 (and an uninterrupted rerun)",
    )
    args = parser.parse_args()

    kills = args.kills if args.kills is not None else (3 if args.quick else 20)
    quotas = {"scratch": kills - max(1, round(kills * 0.4)), "finetune": max(1, round(kills * 0.4))}
    if kills < 2:
        quotas = {"scratch": 0, "finetune": kills}
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="triptych-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    env = environment(work)
    started = time.perf_counter()
    log(f"faults: working in {work}; kills {quotas}")
    data = make_dataset(work / "images")
    weights = make_densenet_weights(work / "densenet121_notop.weights.h5", env)
    configs = write_configs(work, data, weights)

    summary = {"kills": 0, "resumed": 0, "lost_epochs": 0, "repeated_epochs": 0, "extra_epochs": 0}
    failures: list[str] = []
    determinism = {}
    kill_points = []
    checks: dict = {}
    references: dict[str, float] = {}
    for name, config in configs.items():
        if not quotas.get(name):
            continue
        if args.quick and name == "finetune" and "scratch" in references:
            # Saves a minute: no uninterrupted reference; the two-phase run takes ~2.5x the scratch run.
            seconds, epoch_seconds, reference = 2.5 * references["scratch"], 2.0, None
            log(f"[{name}] no reference run (--quick)")
        else:
            seconds, epoch_seconds, reference = reference_run(name, config, work, env)
            references[name] = seconds
            log(f"[{name}] reference run: {seconds:.0f}s ({epoch_seconds:.1f}s an epoch), accuracy "
                f"{reference['accuracy']:.3f}, final val_loss {reference['val_loss']:.4f}")
        stats = kill_chains(name, config, quotas[name], seconds, epoch_seconds, work, env, rng, reference, checks)
        summary["kills"] += stats["kills"]
        summary["resumed"] += stats["resumed"]
        summary["lost_epochs"] += stats["lost"]
        summary["repeated_epochs"] += stats["repeated"]
        summary["extra_epochs"] += stats["extra"]
        failures.extend(stats["failures"])
        kill_points.extend(f"{name} {p}" for p in stats["kill_points"])
        if stats["deltas"]:
            determinism[name] = {
                key: round(max(d[key] for d in stats["deltas"]), 6) for key in ("accuracy", "val_loss", "loss")
            }
            determinism[name]["resumed_runs"] = len(stats["deltas"])
        log(f"[{name}] {stats['kills']} kill(s) in {stats['chains']} chain(s); max |difference| from the "
            f"uninterrupted run: {determinism.get(name)}")

    if args.determinism:
        ks = sorted({1, args.determinism // 2, args.determinism - 1} - {0})
        resume_determinism = measure_resume_determinism(work, env, args.determinism, ks)
        log(f"resume determinism ({args.determinism} epochs): {json.dumps(resume_determinism)}")
        determinism["resume_vs_uninterrupted"] = resume_determinism

    bad = {"bad_inputs": 0, "clean_errors": 0, "skipped": 0, "unclean": []}
    if not args.no_corpus:
        log("bad-input corpus:")
        bad = corpus(work, args.parallel)
    summary.update(
        bad_inputs=bad["bad_inputs"],
        clean_errors=bad["clean_errors"],
        corpus_skipped=bad["skipped"],
        report_checked=bool(checks.get("report_checked")),
        failures=failures + bad["unclean"],
        max_diff_vs_uninterrupted=determinism,
        kill_points=kill_points,
        seconds=round(time.perf_counter() - started, 1),
        work=str(work) if args.keep or args.work else None,
    )
    if not (args.keep or args.work):
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
