"""The optional compiled scanner: how it is built and how the gateway picks a scanner.

A machine without a compiler must still install the package (setup.py turns a failed build
into a warning); GATEWAY_NO_EXTENSIONS or a missing extension selects the pure-Python
scanner, and gateway.html says which one runs and why.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.html

from .conftest import REPO

NO_EXTENSIONS_ENV = "GATEWAY_NO_EXTENSIONS"


def python(code: str, **environment: str) -> str:
    """Run ``code`` in a fresh interpreter (the selection happens at import); its stdout."""
    env = {key: value for key, value in os.environ.items() if key != NO_EXTENSIONS_ENV}
    env.update(environment)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_this_process_runs_what_the_environment_asks_for() -> None:
    built = importlib.util.find_spec("gateway.html._speedups") is not None
    if os.environ.get(NO_EXTENSIONS_ENV) or not built:
        assert gateway.html.IMPLEMENTATION == "python"
        assert gateway.html.PURE_PYTHON_REASON
    else:
        assert gateway.html.IMPLEMENTATION == "compiled"
        assert gateway.html.PURE_PYTHON_REASON is None


def test_no_extensions_variable_selects_the_pure_python_scanner() -> None:
    code = (
        "import gateway.html as h, gateway.html.rewriter as r, gateway.html._scan as s;"
        "print(h.IMPLEMENTATION, r.Scanner is s.Scanner, h.PURE_PYTHON_REASON)"
    )
    assert python(code, GATEWAY_NO_EXTENSIONS="1") == "python True GATEWAY_NO_EXTENSIONS is set"


def test_missing_extension_selects_the_pure_python_scanner_and_says_why() -> None:
    # None in sys.modules makes the import fail, as when the extension was never built.
    code = (
        "import sys; sys.modules['gateway.html._speedups'] = None;"
        "import gateway.html as h; print(h.IMPLEMENTATION); print(h.PURE_PYTHON_REASON)"
    )
    implementation, reason = python(code).splitlines()
    assert implementation == "python"
    assert reason.startswith("the compiled scanner cannot be imported: ")


def test_a_failed_build_is_a_warning_not_an_error(tmp_path: Path) -> None:
    """No compiler (CC=false): setup.py build_ext succeeds, says why, and builds nothing,
    so that `pip install` goes on and installs the pure-Python package."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment")
    shutil.copy(REPO / "setup.py", tmp_path)
    (tmp_path / "gateway" / "html").mkdir(parents=True)
    shutil.copy(REPO / "gateway" / "html" / "_speedups.c", tmp_path / "gateway" / "html")
    env = {key: value for key, value in os.environ.items() if key != NO_EXTENSIONS_ENV}
    env["CC"] = "false"
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", "out", "--build-temp", "tmp"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "the compiled HTML scanner (gateway/html/_speedups.c) could not be built" in done.stderr
    assert not list((tmp_path / "out").rglob("_speedups*"))
