"""`make demo` keeps working: the demo command starts the sites, the CDN stand-in and the
gateway, and a visitor's id crosses from the shop to the checkout domain."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from .conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_config(tmp_path: Path) -> Path:
    """config/demo.yaml with the gateway and its admin on port 0 (chosen as they bind) and the
    demo's own servers, the sites and the CDN stand-in, on free ports. Those cannot be 0: the
    config names them in upstream URLs."""
    text = (REPO / "config" / "demo.yaml").read_text()
    ports = {"8080": "0", "9901": "0"} | {p: str(_free_port()) for p in ("8001", "8002", "8003")}
    # In one pass, so that a port put in cannot be taken for one still to replace.
    text = re.sub(r"\b(8080|9901|8001|8002|8003)\b", lambda m: ports[m.group(1)], text)
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return path


_BANNER = re.compile(r"http://www\.shop\.localhost:(\d+)/")


def _read_until_banner(proc: subprocess.Popen[str], lines: list[str]) -> int | None:
    """The gateway's port from the demo's banner, or None if the demo exits first."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if found := _BANNER.search(line):
            return int(found.group(1))
    return None


async def _start_demo(tmp_path: Path, attempts: int = 5) -> tuple[subprocess.Popen[str], int, str]:
    """The running demo, its gateway's port and its output so far. The ports picked for its
    own servers were free when picked but are not held, so another process may bind one first:
    a demo that fails on a taken port is started again on new ones."""
    for attempt in range(1, attempts + 1):
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--config", str(_demo_config(tmp_path))],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ.copy(),
        )
        lines: list[str] = []
        try:
            port = await asyncio.wait_for(asyncio.to_thread(_read_until_banner, proc, lines), 30)
        except TimeoutError:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no demo banner within 30 s:\n{''.join(lines)}") from None
        if port is not None:
            return proc, port, "".join(lines)
        proc.wait()
        out = "".join(lines)
        if attempt == attempts or "address already in use" not in out.lower():
            raise AssertionError(f"the demo exited with {proc.returncode}:\n{out}")
    raise AssertionError("unreachable")


async def test_demo_carries_the_id_across_domains(tmp_path: Path) -> None:
    proc, port, started = await _start_demo(tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        jar = aiohttp.DummyCookieJar()
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            shop = {"Host": f"www.shop.localhost:{port}"}
            async with session.get(base + "/", headers=shop) as resp:
                page = await resp.text()
                cookie = resp.headers["Set-Cookie"]
            minted = re.match(r"ajs_anonymous_id=([0-9a-f-]{36});", cookie)
            assert minted, cookie
            visitor = minted.group(1)
            assert "Domain=shop.localhost" in cookie
            link = re.search(r'id="to-checkout" href="([^"]+)"', page)
            assert link is not None
            href = link.group(1).replace("&amp;", "&")
            assert href.endswith(f"ajs_aid={visitor}")
            assert "<script>(function(w,d,c){" in page  # the bootstrap
            checkout = {"Host": f"checkout.pay.localhost:{port}"}
            path = href.split(f":{port}", 1)[1]
            async with session.get(base + path, headers=checkout, allow_redirects=False) as resp:
                assert resp.status == 302
                assert resp.headers["Location"] == "/cart?item=teapot&qty=1"
                assert f"ajs_anonymous_id={visitor};" in resp.headers["Set-Cookie"]
                assert "Domain=pay.localhost" in resp.headers["Set-Cookie"]
            headers = {**checkout, "Cookie": f"ajs_anonymous_id={visitor}"}
            async with session.get(base + "/cart?item=teapot&qty=1", headers=headers) as resp:
                assert f'<code id="server-id">{visitor}</code>' in await resp.text()
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)
    out = started + rest
    assert proc.returncode == 0, out
    assert "Demo running. Open in a browser" in out
