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

from .conftest import REPO, spawn_gateway

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


def started_line(tmp_path: Path, **env: str) -> dict[str, object]:
    """The "started" line of ``gateway serve`` run with ``env`` added to this environment."""
    config = tmp_path / "gateway.yaml"
    config.write_text("sites:\n  - host: www.example.com\n    upstream: http://127.0.0.1:9\n")
    gp = spawn_gateway(config, env=env)
    try:
        (line,) = gp.events("started")
        return line
    finally:
        gp.stop()


def test_started_line_names_the_html_rewriter(tmp_path: Path) -> None:
    line = started_line(tmp_path)
    assert line["html_rewriter"] == gateway.html.IMPLEMENTATION
    assert ("html_rewriter_note" in line) is (gateway.html.IMPLEMENTATION == "python")


def test_started_line_says_why_it_runs_the_pure_python_scanner(tmp_path: Path) -> None:
    line = started_line(tmp_path, GATEWAY_NO_EXTENSIONS="1")
    assert line["html_rewriter"] == "python"
    assert "pure-Python scanner" in str(line["html_rewriter_note"])
    assert "GATEWAY_NO_EXTENSIONS is set" in str(line["html_rewriter_note"])
    # An extension that was never built (no compiler at install time): a sitecustomize
    # makes its import fail before the gateway starts.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.modules['gateway.html._speedups'] = None\n"
    )
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    line = started_line(tmp_path, GATEWAY_NO_EXTENSIONS="", PYTHONPATH=path)
    assert line["html_rewriter"] == "python"
    assert "the compiled scanner cannot be imported" in str(line["html_rewriter_note"])
