"""``triptych predict / explain / export`` as a user runs them: real output, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from triptych.cli.main import main, with_flags


def triptych(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "triptych", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


def test_predict_json_skips_a_broken_image(tiny_run, tiny_images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = triptych("predict", tiny_run, tiny_images / "green", broken, "--format", "json", "--top-k", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    output = json.loads(result.stdout)
    assert len(output) == 4
    for item in output:
        assert set(item) == {"path", "top_k"} and item["top_k"][0]["label"] == "green"
        assert [set(t) for t in item["top_k"]] == [{"label", "probability"}] * 2
    assert f"triptych predict: skipped {broken}: cannot decode image" in result.stderr


def test_bad_inputs_are_one_line_with_exit_code_2(tiny_run, tiny_images, tmp_path):
    junk = tmp_path / "model.keras"
    junk.write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"nope")
    cases = [
        (("predict", junk, tiny_images), "model.keras: not a valid .keras file"),
        (("predict", tiny_run, tmp_path / "empty"), "no images in this folder"),
        (("export", tiny_run, "--format", "tflite", "--out", tmp_path / "empty"), "already exists; pass --overwrite"),
    ]
    for args, message in cases:
        result = triptych(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        last = error_line(result)
        assert last.startswith(f"triptych {args[0]}: error: ") and message in last, last


def test_export_prints_parity(tiny_run, tmp_path):
    result = triptych("export", tiny_run, "--format", "onnx", "--out", tmp_path / "tiny.onnx", "--samples", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parity: max |diff| = " in result.stdout and "top-1 agreement = 4/4 (100.0%)" in result.stdout
    assert (tmp_path / "tiny.onnx").is_file() and (tmp_path / "tiny.onnx.json").is_file()


# In-process from here on: the same main() as above, without paying for a TensorFlow import each time.


def test_explain_images_and_mistakes(tiny_run, tiny_images, tmp_path, capsys):
    assert main(["explain", str(tiny_run), str(tiny_images / "blue"), "--out", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").glob("*_gradcam.png"))) == 4
    assert "Grad-CAM of layer relu2, 4 overlay(s)" in capsys.readouterr().out
    assert main(["explain", str(tiny_run), "--mistakes", "1", "--out", str(tmp_path / "mistakes")]) == 0
    assert ", predicted " in capsys.readouterr().out and len(list((tmp_path / "mistakes").glob("01_*.png"))) == 1
    assert main(["explain", str(tiny_run), str(tiny_images / "blue")]) == 2
    assert capsys.readouterr().err.strip() == (
        "triptych explain: error: --out is required: the folder for the overlays of the images"
    )


def test_predict_all_images_unreadable_exits_2(tiny_run, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["predict", str(tiny_run), str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"triptych predict: skipped {tmp_path / 'bad.png'}: cannot decode image")
    assert err[-1].startswith("triptych predict: error: none of the 1 image(s) could be read")


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "RUN", "IMAGES", "--top-k", "0"], "triptych predict: error: --top-k must be at least 1, got 0"),
        (["predict", "RUN", "IMAGES", "--batch-size", "0"], "triptych predict: error: --batch-size must be at least 1, got 0"),
        (["explain", "RUN", "--mistakes", "0"], "triptych explain: error: --mistakes must be at least 1, got 0"),
        (["explain", "RUN", "IMAGES", "--out", "OUT", "--batch-size", "0"], "triptych explain: error: --batch-size must be at least 1, got 0"),
        (["explain", "RUN", "IMAGES", "--out", "OUT", "--class", "purple"],
         "triptych explain: error: --class must be one of the model's classes (blue, green, red), got 'purple'"),
        (["explain", "RUN", "--class", "red"], "triptych explain: error: --class needs IMAGE arguments"),
        (["explain", "RUN/model.keras"], "triptych explain: error: RUN/model.keras: not a run directory; to explain"),
        (["export", "RUN", "--format", "onnx", "--quantize", "int8", "--out", "OUT/m.onnx"],
         "triptych export: error: --quantize applies to --format tflite only, not onnx"),
        (["export", "RUN", "--format", "onnx", "--samples", "0", "--out", "OUT/m.onnx"],
         "triptych export: error: --samples must be at least 1, got 0"),
    ],
)
def test_library_errors_name_the_flags(tiny_run, tiny_images, tmp_path, capsys, args, message):
    """The API refuses these (naming its Python arguments); the CLI says which flag was wrong."""
    places = {"RUN": str(tiny_run), "IMAGES": str(tiny_images / "red"), "OUT": str(tmp_path)}
    args = [places.get(a, a).replace("RUN/", str(tiny_run) + "/") for a in args]
    message = message.replace("RUN/", str(tiny_run) + "/")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(message), err


@pytest.mark.parametrize("command", ["predict", "explain", "export"])
def test_help(command):
    result = triptych(command, "--help")
    assert result.returncode == 0 and "usage: triptych " + command in result.stdout


def test_flags_replace_argument_names_not_paths():
    flags = {"samples": "--samples", "overwrite": "--overwrite", "fmt": "--format"}
    assert with_flags("samples must be at least 1, got 0", flags) == "--samples must be at least 1, got 0"
    assert with_flags("samples already exists; pass overwrite=True to replace it", flags) == (
        "samples already exists; pass --overwrite to replace it"
    )
    assert with_flags("x/fmt=tflite: quantize applies to fmt=tflite only", flags) == (
        "x/fmt=tflite: quantize applies to --format tflite only"
    )


def test_a_closed_pipe_ends_the_command_quietly():
    """``triptych config --schema | head -1`` where the reader is gone before anything is written:
    no BrokenPipeError traceback, and the shell's exit status for a closed pipe."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "read, write = os.pipe(); os.close(read); os.dup2(write, 1)\n"
        "from triptych.cli.main import main\n"
        "sys.exit(main(['config', '--schema']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 141
