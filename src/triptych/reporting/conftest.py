"""One set of synthetic runs and one full report, shared by the report and browser tests.

Rendering every figure of a report takes seconds; building it once per session keeps the
reporting tests fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.synthetic_runs import write_synthetic_diagrams, write_synthetic_run

# experiment -> (model, skill); both finished, with profile.json, gradcam/ and diagrams.
MODELS = {"resnet50_scratch": ("resnet50", 1.0), "xception_ft": ("xception", 2.2)}
FAILED = ("crashed", "resnet18", "CUDA out of memory")
RUNNING = ("busy", "resnet34")
WEIGHTS_NOTE = "imagenet: could not download ImageNet weights for xception (URLError: offline)"


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_synthetic_run(root, "resnet50_scratch", model="resnet50", skill=1.0, seed=1, extras=True,
                        record={"weights": "random", "expected_pretrained": False})
    # no metrics.json (the report computes it) and random weights where pretrained ones were expected
    write_synthetic_run(root, "xception_ft", model="xception", skill=2.2, seed=2, evaluate=False, extras=True,
                        record={"weights": "random", "expected_pretrained": True, "weights_note": WEIGHTS_NOTE})
    write_synthetic_run(root, FAILED[0], model=FAILED[1], status="failed", record={"reason": FAILED[2]})
    write_synthetic_run(root, RUNNING[0], model=RUNNING[1], status="running")
    write_synthetic_diagrams(root, [model for model, _ in MODELS.values()])
    return root


@pytest.fixture(scope="session")
def report_path(out_dir) -> Path:
    from triptych.reporting import build_report

    path = build_report([out_dir], out_dir / "report.html", title="Art style classifiers")
    assert path == out_dir / "report.html"
    return path
