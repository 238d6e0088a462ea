"""Runs the injected bootstrap script under node with the small DOM shim in tests/js/."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HARNESS = Path(__file__).parent / "js" / "harness.js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


def run_harness(
    script: str,
    page_url: str,
    steps: list[dict[str, Any]],
    *,
    history_state: Any = None,
    history_throws: bool = False,
) -> dict[str, Any]:
    """Run ``script`` (the script element's text) on a page at ``page_url``, then ``steps``;
    ``history_state`` is ``history.state`` to start with, ``history_throws`` makes
    ``history.replaceState`` throw (as in a sandboxed frame)."""
    assert NODE is not None
    spec = {
        "script": script,
        "pageUrl": page_url,
        "steps": steps,
        "historyState": history_state,
        "historyThrows": history_throws,
    }
    proc = subprocess.run(
        [NODE, str(HARNESS)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
