"""Reports and metrics must work without TensorFlow: none of their modules may import it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]
CHECK = (
    "import triptych.reporting, triptych.evaluation, triptych.cli.report; import sys; "
    "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
)


def test_reporting_and_evaluation_do_not_import_tensorflow():
    # The required check, plus every non-test module of both packages (including the lazily
    # imported statsmodels parts), in one fresh interpreter: this test process may already
    # hold TensorFlow from other tests.
    modules = sorted(
        ".".join(p.relative_to(SRC).with_suffix("").parts)
        for package in ("evaluation", "reporting")
        for p in (SRC / "triptych" / package).glob("*.py")
        if not p.name.startswith("test_")
    )
    lazy = "import statsmodels.stats.contingency_tables, statsmodels.stats.multitest"
    code = CHECK.replace("import sys;", "; ".join(f"import {m}" for m in modules) + f"; {lazy}; import sys;")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
