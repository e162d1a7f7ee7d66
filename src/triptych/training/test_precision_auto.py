"""precision: auto: the decision for every kind of machine (no timing), the per-machine memo,
and the measurement's child process."""

import json
from dataclasses import replace

import pytest

from triptych.errors import TriptychError
from triptych.training import precision_auto
from triptych.training.precision_auto import (
    BF16_MARGIN,
    MEMO_FILE,
    Machine,
    PrecisionChoice,
    decide,
    measure_in_child,
    resolve_precision,
    this_machine,
)

XEON = Machine("Intel Xeon", ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"), None, None, "2.21.0", "3.15.1")
EPYC_AVX2 = Machine("AMD EPYC 7B12", ("avx2",), None, None, "2.21.0", "3.15.1")


def gpu(capability):
    return replace(EPYC_AVX2, gpus=("NVIDIA X",), gpu_compute_capability=capability)


class Measure:
    """A stand-in for the measurement that counts its calls."""

    def __init__(self, result):
        self.result, self.calls = result, 0

    def __call__(self):
        self.calls += 1
        return self.result


@pytest.fixture(autouse=True)
def fresh_process_memo(monkeypatch):
    monkeypatch.setattr(precision_auto, "_CHOSEN", {})


@pytest.mark.parametrize("speedup, expected", [(1.6, "bf16"), (BF16_MARGIN, "bf16"), (1.05, "fp32"), (0.74, "fp32")])
def test_a_cpu_gets_bf16_only_when_measured_faster_by_the_margin(speedup, expected):
    precision, reason = decide(XEON, speedup)
    assert precision == expected
    assert f"{speedup:.2f}x" in reason and "amx_bf16" in reason  # the measurement and the flags, side by side


def test_the_measurement_decides_even_against_the_flags():
    assert decide(EPYC_AVX2, 1.3)[0] == "bf16"  # measured faster: the flags do not overrule it
    precision, reason = decide(XEON, 0.9)
    assert precision == "fp32" and "0.90x" in reason


def test_bf16_that_cannot_be_measured_means_fp32_and_says_why():
    precision, reason = decide(XEON, None, "the measurement process was killed by SIGSEGV")
    assert precision == "fp32" and "SIGSEGV" in reason


def test_a_cpu_without_a_measurement_is_refused():
    with pytest.raises(ValueError, match="measure"):
        decide(XEON, None)


@pytest.mark.parametrize(
    "capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((6, 1), "fp32"), (None, "fp32")]
)
def test_a_gpu_is_decided_by_its_compute_capability(capability, expected):
    precision, reason = decide(gpu(capability), None)
    assert precision == expected
    assert "NVIDIA X" in reason and "not measured" in reason


@pytest.mark.parametrize(
    "flags, isa, onednn_opts, native",
    [
        (("avx2", "avx512_bf16", "amx_bf16"), None, None, ["avx512_bf16", "amx_bf16"]),
        (("avx2", "avx512_bf16", "amx_bf16"), "AVX512_CORE_BF16", None, ["avx512_bf16"]),
        (("avx2", "avx512_bf16", "amx_bf16"), "avx2", None, []),
        (("avx2", "avx512_bf16"), "ALL", None, ["avx512_bf16"]),
        (("avx2", "avx512_bf16"), None, "0", []),
        (("avx2",), None, None, []),
    ],
)
def test_native_bf16_follows_flags_and_the_onednn_cap(flags, isa, onednn_opts, native):
    assert replace(XEON, cpu_flags=flags, onednn_max_cpu_isa=isa, onednn_opts=onednn_opts).native_bf16() == native


def test_the_machine_key_changes_with_the_onednn_cap_and_nothing_else_equal():
    assert XEON.key() == replace(XEON).key()
    assert replace(XEON, onednn_max_cpu_isa="AVX2").key() != XEON.key()
    assert replace(XEON, tensorflow="2.22.0").key() != XEON.key()


def test_this_machine_reads_the_onednn_cap_from_the_environment(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    machine = this_machine()
    assert machine.onednn_max_cpu_isa == "AVX2" and machine.native_bf16() == []
    assert set(machine.cpu_flags) <= set(precision_auto.CPU_FLAGS)


def test_explicit_precisions_are_used_as_asked_without_measuring(tmp_path):
    measure = Measure({"bf16_speedup": 2.0})
    for precision in ("fp32", "bf16", "fp16"):
        choice = resolve_precision(precision, cache=tmp_path, machine=XEON, measure=measure)
        assert (choice.precision, choice.requested) == (precision, precision)
    assert measure.calls == 0 and not (tmp_path / MEMO_FILE).exists()
    with pytest.raises(TriptychError, match="training.precision.*auto"):
        resolve_precision("fp8", cache=tmp_path, machine=XEON, measure=measure)


def test_auto_is_measured_once_per_machine_and_remembered(tmp_path, monkeypatch):
    measure = Measure({"bf16_speedup": 1.5})
    first = resolve_precision("auto", cache=tmp_path, machine=XEON, measure=measure)
    assert first == PrecisionChoice("bf16", "auto", first.reason, {"bf16_speedup": 1.5})
    assert "1.50x" in first.reason and "measured now" in first.reason
    assert resolve_precision("auto", cache=tmp_path, machine=XEON, measure=measure) is first  # same process
    assert resolve_precision("auto", cache=tmp_path / "other", machine=XEON, measure=measure) is first
    monkeypatch.setattr(precision_auto, "_CHOSEN", {})  # a new process: the file answers
    again = resolve_precision("auto", cache=tmp_path, machine=XEON, measure=measure)
    assert (again.precision, again.measured, measure.calls) == ("bf16", {"bf16_speedup": 1.5}, 1)
    assert "remembered in" in again.reason and "1.50x" in again.reason
    record = again.record()
    assert record["precision"] == "bf16" and json.loads(json.dumps(record)) == record  # manifest-ready


def test_another_machine_key_is_measured_on_its_own_and_both_are_kept(tmp_path):
    avx2_cap = replace(XEON, onednn_max_cpu_isa="AVX2")
    resolve_precision("auto", cache=tmp_path, machine=XEON, measure=Measure({"bf16_speedup": 1.5}))
    capped = resolve_precision("auto", cache=tmp_path, machine=avx2_cap, measure=Measure({"bf16_error": "SIGSEGV"}))
    assert capped.precision == "fp32" and "SIGSEGV" in capped.reason
    machines = json.loads((tmp_path / MEMO_FILE).read_text())["machines"]
    assert {key: entry["precision"] for key, entry in machines.items()} == {XEON.key(): "bf16", avx2_cap.key(): "fp32"}
    assert machines[avx2_cap.key()]["machine"]["onednn_max_cpu_isa"] == "AVX2"


def test_a_damaged_memo_is_measured_again_and_rewritten(tmp_path):
    (tmp_path / MEMO_FILE).write_text('{"version": "triptych-precision-auto-1", "machines": [')
    measure = Measure({"bf16_speedup": 0.8})
    assert resolve_precision("auto", cache=tmp_path, machine=XEON, measure=measure).precision == "fp32"
    assert measure.calls == 1
    assert json.loads((tmp_path / MEMO_FILE).read_text())["machines"][XEON.key()]["precision"] == "fp32"


def test_an_unwritable_cache_still_gives_a_choice(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    choice = resolve_precision("auto", cache=blocker, machine=XEON, measure=Measure({"bf16_speedup": 1.5}))
    assert choice.precision == "bf16"


def test_a_gpu_is_not_measured(tmp_path):
    measure = Measure({"bf16_speedup": 0.5})
    assert resolve_precision("auto", cache=tmp_path, machine=gpu((8, 6)), measure=measure).precision == "bf16"
    assert measure.calls == 0


def test_auto_uses_the_cache_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_CACHE", str(tmp_path))
    resolve_precision("auto", machine=XEON, measure=Measure({"bf16_speedup": 1.5}))
    assert (tmp_path / MEMO_FILE).is_file()


def test_the_child_process_reports_the_speedup_or_why_bf16_did_not_run():
    measured = measure_in_child(probe={"rounds": 1, "batch": 2, "image_size": 16, "width": 4})
    # bf16 either runs (a speed-up, whatever its value on a busy machine) or says why it cannot.
    if "bf16_error" not in measured:
        assert measured["bf16_speedup"] > 0 and [len(s) for s in measured["seconds"].values()] == [1, 1]
    else:
        assert measured["bf16_error"].startswith("the measurement")


@pytest.mark.parametrize(
    "returncode, stderr, expected",
    [
        (-11, "", "killed by SIGSEGV"),
        (1, "W tf warning\ntensorflow.errors.AbortedError: Graph execution error:\n  File x\n", "AbortedError"),
        (1, "", "exit status 1"),
    ],
)
def test_a_failed_child_is_described_in_one_line(returncode, stderr, expected):
    assert expected in precision_auto._child_failure(returncode, stderr)
