"""Every bad input a user can give, through the CLI as a user runs it.

Each case must end in one clear line (the last stderr line starts with ``triptych <cmd>: error:``),
exit code 2, no traceback and nothing half-written; or, for bad image files where the user allowed
it (``--skip-bad``), the run trains on the good files and lists the bad ones in the manifest.
Odd but valid images (alpha, CMYK, greyscale, 1x1, unicode and spaces in names) must train.

The corpus is generated here (no binary fixtures); ``benchmarks/faults.py`` feeds the same
corpus to the CLI (it imports ``CASES`` and ``run_case`` from this file).
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

SRC = Path(__file__).resolve().parent.parent / "src"


class Skip(Exception):
    """This case cannot be built on this machine (e.g. root can write anywhere)."""


# --------------------------------------------------------------------------- image files


def _pixels(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3)).repeat(size // 4, 0).repeat(size // 4, 1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def write_image(path: Path, seed: int, mode: str = "RGB", size: int = 32, fmt: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(_pixels(seed, max(size, 4))[:size, :size])
    if mode == "RGBA":
        alpha = Image.fromarray(np.linspace(0, 255, size * size).reshape(size, size).astype(np.uint8))
        image = image.convert("RGBA")
        image.putalpha(alpha)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


def write_truncated_jpeg(path: Path, seed: int = 1) -> Path:
    write_image(path, seed, fmt="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def write_bomb_png(path: Path, side: int = 50_000) -> Path:
    """A tiny PNG whose header claims ``side`` x ``side`` RGB pixels (7.5 GB decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )
    return path


def write_symlink_loop(path: Path) -> Path:
    """``x.jpg -> x.jpg.2 -> x.jpg``: stat() fails with ELOOP."""
    other = path.with_name(path.name + ".2")
    os.symlink(other.name, path)
    os.symlink(path.name, other)
    return path


# Bad files: each must be named in the error (or skipped with --skip-bad), with this reason.
BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated.jpg": (write_truncated_jpeg, "truncated"),
    "zero bytes.jpg": (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
    "text.jpg": (lambda p: (p.write_text("this is not a picture\n"), p)[1], "not an image"),
    "bomb.png": (write_bomb_png, "decompression bomb"),
    "loop.jpg": (write_symlink_loop, "cannot read: symbolic link loop"),
}

# Odd but valid files: all must train (converted to RGB).
VALID_ODD = {
    "alpha.png": dict(mode="RGBA"),
    "cmyk.jpg": dict(mode="CMYK", fmt="JPEG"),
    "grey.jpg": dict(mode="L", fmt="JPEG"),
    "grey 16-bit.png": dict(mode="I;16"),
    "one pixel.png": dict(size=1),
    "café au lait ☕ №1.jpg": dict(fmt="JPEG"),
}


def image_folder(root: Path, classes=("chats égarés", "dogs & owls"), per_class: int = 4, odd: bool = False) -> Path:
    """``per_class`` plain images per class (unique content); with ``odd``, the VALID_ODD files too."""
    seed = 100
    for label, name in enumerate(classes):
        for i in range(per_class):
            seed += 1
            write_image(root / name / f"{i:02d} plain image.png", seed)
        if odd:
            for filename, options in VALID_ODD.items():
                seed += 1
                write_image(root / name / filename, seed, **options)
    return root


def tiny_config(root: Path, folder: Path | str, name: str = "tiny", **overrides) -> Path:
    """resnet18 (CIFAR stem) at 32x32, one epoch, batch 4: the smallest real run."""
    experiment = {
        "name": name,
        "model": {"name": "resnet18", "options": {"stem": "cifar"}},
        "data": {
            "dataset": "folder",
            "path": str(folder),
            "image_size": 32,
            "batch_size": 4,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
            "duplicates": "allow",
        },
        "training": {"epochs": 1, "learning_rate": 0.01, "weight_decay": 0.0},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            experiment[section][leaf] = value
        else:
            experiment[section] = value
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"seed": 0, "experiments": [experiment]}, allow_unicode=True), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One bad input. ``setup(root)`` builds it and returns the CLI arguments; ``expect`` is a
    piece of the last stderr line; ``check(root, result)`` adds assertions for a successful run."""

    name: str
    setup: Callable[[Path], list[str]]
    expect: str | None = None  # None: the command must succeed
    fsize: int | None = None  # RLIMIT_FSIZE of the command (a full disk)
    check: Callable[[Path, subprocess.CompletedProcess], None] | None = None
    trains: bool = False  # the case trains a model (slow)


def _run_with_bad_file(filename: str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        folder = image_folder(root / "images")
        BAD_FILES[filename][0](folder / "dogs & owls" / filename)
        return ["run", str(tiny_config(root, folder)), "--out", str(root / "out")]

    return setup


def _folder_case(build: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        folder = root / "images"
        build(folder)
        return ["run", str(tiny_config(root, folder)), "--out", str(root / "out")]

    return setup


def _empty_class(folder: Path) -> None:
    image_folder(folder)
    (folder / "empty class").mkdir()


def _single_class(folder: Path) -> None:
    image_folder(folder, classes=("only",))


def _class_folder_loop(folder: Path) -> None:
    image_folder(folder)
    os.symlink("..", folder / "loop")  # images/loop -> images/.. (contains images/)


def _raw_config(raw) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        path = root / "bad.yaml"
        path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw), encoding="utf-8")
        return ["run", str(path), "--out", str(root / "out")]

    return setup


def _tiny_keras_model(outputs: int, name: str):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax")(x), name=name)


def _wrong_architecture_weights(root: Path) -> list[str]:
    folder = image_folder(root / "images")
    weights = root / "other_model.weights.h5"
    _tiny_keras_model(2, "not_a_resnet").save_weights(str(weights))
    config = tiny_config(root, folder, model={"name": "resnet18", "weights": str(weights), "options": {"stem": "cifar"}})
    return ["run", str(config), "--out", str(root / "out")]


def _predict_class_mismatch(root: Path) -> list[str]:
    run = root / "run"
    run.mkdir()
    _tiny_keras_model(3, "resnet18").save(str(run / "model.keras"))
    manifest = {"model": "resnet18", "class_names": ["cats", "dogs"], "image_size": 32, "status": "done"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    image = write_image(root / "cat.png", 1)
    return ["predict", str(run), str(image), "--format", "json"]


def _predict_only_bad_images(root: Path) -> list[str]:
    run = root / "run"
    run.mkdir()
    _tiny_keras_model(2, "resnet18").save(str(run / "model.keras"))
    manifest = {"model": "resnet18", "class_names": ["cats", "dogs"], "image_size": 32, "status": "done"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return ["predict", str(run), str(write_bomb_png(root / "bomb.png")), str(write_truncated_jpeg(root / "cut.jpg"))]


def _unwritable_output(root: Path) -> list[str]:
    folder = image_folder(root / "images")
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        (locked / "probe").write_text("")
    except OSError:
        out = locked / "out"  # an ordinary user cannot write here
    else:  # root writes anywhere: use a read-only file system instead
        (locked / "probe").unlink()
        locked.chmod(0o755)
        out = Path("/sys/triptych-test-output")
        try:
            out.mkdir()
        except OSError:
            pass
        else:
            out.rmdir()
            raise Skip("no unwritable directory on this machine (root, and /sys is writable)")
    return ["run", str(tiny_config(root, folder)), "--out", str(out)]


def _full_disk(root: Path) -> list[str]:
    folder = image_folder(root / "images")
    return ["run", str(tiny_config(root, folder)), "--out", str(root / "out")]


def _phases_config(model: dict, training: dict) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        folder = image_folder(root / "images")
        config = tiny_config(root, folder, model=model, training={"epochs": 1, **training})
        return ["run", str(config), "--out", str(root / "out")]

    return setup


def _bad_and_odd_files(root: Path) -> list[str]:
    folder = image_folder(root / "images", odd=True)
    for filename, (write, _) in BAD_FILES.items():
        write(folder / "chats égarés" / filename)
    return ["run", str(tiny_config(root, folder)), "--out", str(root / "out")]


def _check_stop_then_skip_bad(root: Path, result: subprocess.CompletedProcess) -> None:
    """The run stopped before training, naming the first bad file, counting them and suggesting
    --skip-bad; then the suggested command trains on the good files (the odd ones included)."""
    last = result.stderr.strip().splitlines()[-1]
    assert "--resume --skip-bad" in last and f"triptych audit {root / 'images'} lists them all" in last, last
    run = root / "out" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "failed" and len(manifest["bad_images"]) == len(BAD_FILES)
    assert sorted(os.listdir(run)) == ["config.yaml", "manifest.json"]  # stopped before training

    again = triptych("run", str(root / "tiny.yaml"), "--out", str(root / "out"), "--resume", "--skip-bad")
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "done", manifest.get("reason")
    listed = {Path(b["path"]).name: b["reason"] for b in manifest["bad_images"]}
    assert set(listed) == set(BAD_FILES), listed  # every bad file, and none of the odd but valid ones
    for filename, (_, reason) in BAD_FILES.items():
        assert reason in listed[filename], (filename, listed[filename])
    split = (run / "split.csv").read_text(encoding="utf-8")
    for filename in VALID_ODD:
        assert filename in split, filename
    assert not any(name in split for name in BAD_FILES)
    assert (run / "metrics.json").is_file() and (run / "predictions.csv").is_file()
    assert f"left out {len(BAD_FILES)} unusable image file(s)" in again.stdout


# One run per bad file (benchmarks/faults.py feeds these too); the tests cover every bad file
# with the one run below that holds them all, to keep the file fast.
PER_FILE_CASES: list[Case] = [
    Case(f"bad image: {name}", _run_with_bad_file(name), f"{name}: {reason}") for name, (_, reason) in BAD_FILES.items()
]

CASES: list[Case] = [
    Case("bad images: the run stops naming the first; --resume --skip-bad trains on the rest", _bad_and_odd_files,
         f"{len(BAD_FILES)} of the {2 * (4 + len(VALID_ODD)) + len(BAD_FILES)} image files this run uses cannot be "
         "used; first: ", check=_check_stop_then_skip_bad, trains=True),
    Case("empty class folder", _folder_case(_empty_class), "class folder holds no images"),
    Case("single-class dataset", _folder_case(_single_class), "a classifier needs at least 2"),
    Case("class folder links back to the dataset", _folder_case(_class_folder_loop), "symbolic link loop"),
    Case("config: unknown key", _raw_config({"experiments": [{"name": "x", "trainig": {"epochs": 1}}]}), "unknown key 'experiments[0].trainig'"),
    Case("config: wrong type", _raw_config({"experiments": [{"name": "x", "training": {"epochs": "ten"}}]}), "training.epochs"),
    Case("config: negative epochs", _raw_config({"experiments": [{"name": "x", "training": {"epochs": -3}}]}), "greater than or equal to 1"),
    Case("config: not YAML", _raw_config("experiments: [name: x\n  - {"), "not valid YAML"),
    Case("config: missing file", lambda root: ["run", str(root / "nope.yaml"), "--out", str(root / "out")], "nope.yaml not found"),
    Case("config: missing data folder", lambda root: ["run", str(tiny_config(root, root / "no such folder")), "--out", str(root / "out")], "is not a directory"),
    Case("weights of the wrong architecture", _wrong_architecture_weights, "does not fit"),
    Case("config: freeze_base on a ResNet", _phases_config({"name": "resnet18", "options": {"stem": "cifar"}}, {"freeze_base": True}),
         "experiment tiny: training.freeze_base: true needs a separate backbone"),
    Case("config: fine_tune with freeze_base false", _phases_config(
        {"name": "xception"}, {"freeze_base": False, "fine_tune": {"epochs": 1, "unfreeze_blocks": ["block14"]}}),
         "experiment tiny: training.fine_tune follows a frozen-backbone phase"),
    Case("predict: class names do not match the model", _predict_class_mismatch, "lists 2 class names but model.keras has 3 outputs"),
    Case("predict: only unreadable images", _predict_only_bad_images, "none of the 2 image(s) could be read"),
    Case("unwritable output directory", _unwritable_output, "cannot write to output directory"),
    Case("full disk (file size limit)", _full_disk, "File too large", fsize=256 * 1024, trains=True),
]


# --------------------------------------------------------------------------- running a case


def triptych(*args: str, fsize: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "triptych", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=limit_file_size if fsize else None,
    )


def leftovers(root: Path) -> list[str]:
    """Temporary files of atomic writes (``.NAME.XXXXXXXX.suffix``) left anywhere under ``root``."""
    from triptych.io import final_name

    return [str(p) for p in root.rglob(".*") if final_name(p.name) is not None and p.is_file()]


def run_case(case: Case, root: Path) -> subprocess.CompletedProcess:
    """Build the case under ``root``, run the CLI, assert the behaviour (AssertionError if not)."""
    args = prepare_case(case, root)
    result = triptych(*args, fsize=case.fsize)
    verify_case(case, root, args, result)
    return result


def prepare_case(case: Case, root: Path) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    return case.setup(root)


def verify_case(case: Case, root: Path, args: list[str], result: subprocess.CompletedProcess) -> None:
    stderr = result.stderr.strip()
    assert "Traceback" not in stderr, stderr[-3000:]
    if case.expect is None:
        assert result.returncode == 0, stderr[-3000:]
    else:
        last = stderr.splitlines()[-1] if stderr else ""
        assert result.returncode == 2, (result.returncode, stderr[-2000:])
        assert last.startswith(f"triptych {args[0]}: error: "), last
        assert case.expect in last, last
    for manifest in (root / "out").glob("*/manifest.json") if (root / "out").is_dir() else []:
        status = json.loads(manifest.read_text(encoding="utf-8"))
        if case.expect is not None:
            assert status["status"] == "failed" and status["reason"], status
    assert not leftovers(root), leftovers(root)
    if case.check is not None:
        case.check(root, result)
        assert not leftovers(root), leftovers(root)


# --------------------------------------------------------------------------- tests

import pytest  # noqa: E402 - the part above is also imported by benchmarks/faults.py

PARALLEL = 3  # CLI processes at a time: most cases spend their few seconds importing TensorFlow


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Every case built here, then run as CLI subprocesses a few at a time; each test waits
    for its own case (so the whole file costs about a third of running them one by one)."""
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path_factory.mktemp("bad_inputs")
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    futures = {}
    # The cases that train first: they are the longest.
    for index, case in sorted(enumerate(CASES), key=lambda item: not item[1].trains):
        root = base / f"case{index:02d}"
        try:
            args = prepare_case(case, root)
        except Skip as why:
            futures[case.name] = (root, None, str(why))
            continue
        futures[case.name] = (root, args, pool.submit(triptych, *args, fsize=case.fsize))
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, launched) -> None:
    root, args, future = launched[case.name]
    if args is None:
        pytest.skip(future)
    verify_case(case, root, args, future.result())

