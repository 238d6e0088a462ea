"""Loopback throughput/latency benchmark: direct upstream vs the gateway vs nginx.

One run starts, all on 127.0.0.1 and all in a private temp dir:

* an nginx "upstream" serving three static payloads (2 KB HTML, ~100 KB real corpus page,
  1 MB binary) with ``sendfile``;
* the gateway (``python -m gateway serve --workers 1``) in front of that upstream;
* a second nginx as a plain reverse proxy in front of the same upstream (keepalive to it);
* with ``--identity``, a second gateway with an ``analytics`` block, fed a page whose most
  frequent absolute link host has been renamed to a configured cross-domain.

Each cell is one bounded ``wrk -t1 -c<conc> -d<dur> --latency`` run. The machine is small and
shared by the load generator, the proxy and the upstream, so absolute numbers are noisy: every
figure that matters is a ratio against a baseline measured in the same run.

Exit status is 0 whenever the measurement completed (missed targets are results, not errors),
non-zero only when something could not be set up. All child processes are stopped on exit,
including on Ctrl-C, SIGTERM and exceptions.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The corpus vendored with the tests (tests/corpus/README.md); GATEWAY_CORPUS points at another.
CORPUS = Path(
    os.environ.get("GATEWAY_CORPUS")
    or Path(__file__).resolve().parent.parent / "tests" / "corpus" / "pages"
)
HOST = "bench.test"
CROSS_HOST = "other.test"
ANON_ID = "1b671a64-40d5-491e-99b0-da01ff1f3341"
IDENTITY_COOKIE = f"ajs_anonymous_id={ANON_ID}"
LOOPBACK = "127.0.0.1"

TARGET_SMALL_VS_NGINX = 0.5
TARGET_SMALL_VS_AIOHTTP = 0.35
TARGET_STREAM_VS_DIRECT = 0.8
TARGET_IDENTITY_ADDED_MS = 0.5
TARGET_REWRITE_VS_SUB_FILTER = 0.5


class SetupError(Exception):
    """The benchmark could not be set up; the message says what to fix."""


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Payload:
    key: str  # short label used in tables
    filename: str  # path served by the upstream
    concurrency: int
    source: str  # where the bytes came from, for the report
    size: int


def _small_page(size: int = 2048) -> bytes:
    """A deterministic, well-formed HTML page of exactly ``size`` bytes."""
    head = (
        b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        b"<title>bench: small page</title></head>\n<body>\n<h1>Small page</h1>\n"
        b'<p><a href="/a">internal</a> <a href="https://example.org/x">external</a></p>\n'
    )
    tail = b"</body></html>\n"
    line = b"<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.</p>\n"
    body = bytearray(head)
    while len(body) + len(line) + len(tail) <= size:
        body += line
    pad = size - len(body) - len(tail) - len(b"<!---->\n")
    if pad >= 0:
        body += b"<!--" + b"x" * pad + b"-->\n"
    body += tail
    return bytes(body[:size]) if len(body) > size else bytes(body)


def _pick_corpus_page(target: int = 100 * 1024) -> Path:
    pages = sorted(p for p in CORPUS.glob("*.html") if p.is_file())
    if not pages:
        raise SetupError(f"no corpus pages found in {CORPUS}")
    return min(pages, key=lambda p: (abs(p.stat().st_size - target), p.name))


_LINK_HOST = re.compile(rb"""<a\b[^>]*?\bhref\s*=\s*["']?(?:https?:)?//([A-Za-z0-9.-]+)""", re.I)


def prepare_identity_page(page: bytes, new_host: str = CROSS_HOST) -> tuple[bytes, str, int]:
    """Rename the most frequent absolute ``<a href>`` host in ``page`` to ``new_host``.

    Returns the new bytes, the host that was replaced and how many occurrences changed. The
    replacement is a plain byte substitution of ``//host`` (followed by a URL delimiter), so it
    hits every absolute and scheme-relative reference to that host, links or not.
    """
    hosts = Counter(m.group(1).lower() for m in _LINK_HOST.finditer(page))
    if not hosts:
        raise SetupError("the 100 KB page has no absolute links to rewrite")
    old = hosts.most_common(1)[0][0]
    pattern = re.compile(rb"//" + re.escape(old) + rb"(?=[/\"'?#:\s>]|$)", re.I)
    out, count = pattern.subn(b"//" + new_host.encode(), page)
    return out, old.decode("ascii"), count


def write_payloads(root: Path) -> tuple[list[Payload], Payload, str]:
    """Write the static files; return (payloads, the identity-variant page, a note)."""
    www = root / "www"
    www.mkdir()
    small = _small_page()
    (www / "small.html").write_bytes(small)
    page_path = _pick_corpus_page()
    page = page_path.read_bytes()
    (www / "page.html").write_bytes(page)
    blob = random.Random(20240601).randbytes(1024 * 1024)
    (www / "blob.bin").write_bytes(blob)
    payloads = [
        Payload("2 KB html", "small.html", 32, "generated", len(small)),
        Payload("100 KB html", "page.html", 32, f"corpus {page_path.name}", len(page)),
        Payload("1 MB binary", "blob.bin", 8, "random bytes", len(blob)),
    ]
    ident, old_host, count = prepare_identity_page(page)
    (www / "page-identity.html").write_bytes(ident)
    ident_payload = Payload(
        "100 KB html + identity",
        "page-identity.html",
        # One connection: the target is the per-request cost of decoration + injection, and
        # at c=32 a CPU-bound proxy's p50 is mostly queueing (about 32x the service time).
        1,
        f"corpus {page_path.name}, {old_host} -> {CROSS_HOST}",
        len(ident),
    )
    note = f"identity page: {count} references to {old_host} renamed to {CROSS_HOST}"
    return payloads, ident_payload, note


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _child_setup() -> None:
    """Run in each child: own session (Ctrl-C reaches only us), die with the parent."""
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Every child we start, stopped in reverse order by ``stop_all``."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], stderr_path: Path, cwd: Path = REPO
    ) -> subprocess.Popen[bytes]:
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_child_setup,  # we start children from one thread only
                cwd=str(cwd),
            )
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()


def _tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    name: str,
    log: Path,
    host: str | None = None,
    timeout: float = 20.0,
) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{name} exited with status {proc.returncode}:\n{_tail(log)}")
        req = urllib.request.Request(url, headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    resp.read()
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            last = exc.code
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise SetupError(
        f"{name} not ready at {url} after {timeout:.0f}s (last: {last}):\n{_tail(log)}"
    )


def fetch(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --------------------------------------------------------------------------- nginx


_NGINX_COMMON = """\
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ text/html html; application/octet-stream bin; }}
    default_type application/octet-stream;
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{body}
}}
"""

_NGINX_UPSTREAM = """\
    sendfile on;
    tcp_nopush on;
    server {{
        listen {host}:{port} default_server;
        server_name _;
        root {www};
        location / {{ try_files $uri =404; }}
    }}
"""

_NGINX_PROXY = """\
    upstream origin {{
        server {host}:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen {host}:{port} default_server;
        server_name _;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
"""


# nginx rewriting the page as the gateway does: the proxy above plus ``sub_filter`` lines that
# make the same insertions (see sub_filters). ``$`` cannot be escaped in nginx strings, so it
# is written as the variable ``$dollar``; a replacement longer than nginx takes in one
# parameter (the bootstrap script) is held in ``geo`` variables, whose values are plain text.
_NGINX_SUB_FILTER = """\
    geo $dollar {{ default "$"; }}
{variables}
    upstream origin {{
        server {host}:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen {host}:{port} default_server;
        server_name _;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header Accept-Encoding "";
            sub_filter_once off;
{filters}
        }}
    }}
"""

# nginx compares a sub_filter string ignoring case, and takes one of at most 255 bytes.
_SUB_FILTER_MAX = 255
# nginx reads a config parameter of up to 4 KiB; longer text is split into variables.
_PARAMETER_MAX = 2048


def insertions(original: bytes, rewritten: bytes) -> list[tuple[int, bytes]]:
    """``rewritten`` as ``original`` with bytes added: ``(offset in original, bytes added
    there)``, in order. Raises SetupError when it is not (something was changed or removed)."""
    out: list[tuple[int, bytes]] = []
    i = j = 0
    while True:
        i, j = _common_run(original, i, rewritten, j)
        if i >= len(original):
            break
        # The added bytes end where the original's next bytes resume.
        resume = rewritten.find(original[i : i + 32], j)
        if resume <= j:
            raise SetupError(f"the rewritten page differs from the original at byte {i}")
        out.append((i, rewritten[j:resume]))
        j = resume
    if j < len(rewritten):
        out.append((len(original), rewritten[j:]))
    if apply_insertions(original, out) != rewritten:
        raise SetupError("the rewritten page is not the original with bytes added")
    return out


def _common_run(a: bytes, i: int, b: bytes, j: int) -> tuple[int, int]:
    """Advance ``i`` and ``j`` over the bytes ``a`` and ``b`` have in common from there."""
    step = 1 << 16
    while step:
        part = a[i : i + step]
        if len(part) == step and part == b[j : j + step]:
            i += step
            j += step
        else:
            step //= 2
    return i, j


def apply_insertions(original: bytes, added: Sequence[tuple[int, bytes]]) -> bytes:
    out, last = [], 0
    for at, text in added:
        out += [original[last:at], text]
        last = at
    out.append(original[last:])
    return b"".join(out)


def sub_filters(original: bytes, rewritten: bytes) -> list[tuple[bytes, bytes]]:
    """``(string, replacement)`` pairs with which nginx's ``sub_filter`` (every occurrence,
    case ignored, leftmost first) turns ``original`` into ``rewritten``.

    Each insertion is anchored on what precedes it, from the start of its attribute value or
    tag, and the byte that follows it (``"https://other.test/x"`` ->
    ``"https://other.test/x?ajs_aid=..."``), so that no string is the start of another (nginx
    would take the shorter); an anchor that also occurs where nothing is inserted (a
    ``<link href>`` to the same URL) is lengthened back to the start of its tag. Raises
    SetupError when no such list is found.
    """
    added = insertions(original, rewritten)
    starts = {at: _anchor_start(original, at, b"\"' <") for at, _ in added}

    def anchor(at: int) -> bytes:
        return original[max(starts[at], at - _SUB_FILTER_MAX + 1) : at]

    wanted = dict(added)
    for _ in range(4):
        pairs: dict[bytes, bytes] = {}
        # Where in its string each inserts, and what.
        inserts: dict[bytes, tuple[int, bytes]] = {}
        for at, text in added:
            before, after = anchor(at), original[at : at + 1]
            key = (before + after).lower()
            pairs.setdefault(key, before + text + after)
            inserts.setdefault(key, (len(before), text))
        strings = sorted(pairs)
        if any(b.startswith(a) for a, b in itertools.pairwise(strings)):
            raise SetupError("a sub_filter string would be the start of another")
        if _apply_sub_filters(original, pairs) == rewritten:
            return list(pairs.items())
        # The strings that insert somewhere the gateway did not, or something else there.
        wrong = set()
        for m in _sub_filter_regex(pairs).finditer(original):
            key = m.group(0).lower()
            offset, text = inserts[key]
            if wanted.get(m.start() + offset) != text:
                wrong.add(key)
        for at, _ in added:
            if (anchor(at) + original[at : at + 1]).lower() in wrong:
                starts[at] = _anchor_start(original, starts[at] - 1, b"<")
    raise SetupError("could not express the gateway's rewrite as sub_filter strings")


def _anchor_start(page: bytes, at: int, delimiters: bytes) -> int:
    return max(page.rfind(bytes([d]), 0, at) for d in delimiters) + 1


def _sub_filter_regex(pairs: dict[bytes, bytes]) -> re.Pattern[bytes]:
    alternatives = sorted(pairs, key=len, reverse=True)
    return re.compile(b"|".join(re.escape(a) for a in alternatives), re.I)


def _apply_sub_filters(page: bytes, pairs: dict[bytes, bytes]) -> bytes:
    return _sub_filter_regex(pairs).sub(lambda m: pairs[m.group(0).lower()], page)


def _nginx_string(value: bytes, variables: bool = True) -> str:
    """``value`` as a single-quoted nginx string (bytes kept as Latin-1 characters); where
    ``variables`` are read, each ``$`` as ``${dollar}``."""
    text = value.decode("latin-1")
    for old, new in (("\\", "\\\\"), ("'", "\\'"), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        text = text.replace(old, new)
    return "'" + (text.replace("$", "${dollar}") if variables else text) + "'"


def sub_filter_config(pairs: Sequence[tuple[bytes, bytes]]) -> tuple[str, str]:
    """The ``geo`` variables (http level) and ``sub_filter`` lines (location) for ``pairs``."""
    variables: list[str] = []
    lines: list[str] = []
    for string, replacement in pairs:
        if len(replacement) <= _PARAMETER_MAX:
            value = _nginx_string(replacement)
        else:
            names = []
            for at in range(0, len(replacement), _PARAMETER_MAX):
                name = f"sub_part_{len(variables)}"
                part = _nginx_string(replacement[at : at + _PARAMETER_MAX], variables=False)
                variables.append(f"    geo ${name} {{ default {part}; }}")
                names.append(f"${{{name}}}")
            value = "'" + "".join(names) + "'"
        lines.append(f"            sub_filter {_nginx_string(string)} {value};")
    return "\n".join(variables), "\n".join(lines)


def start_nginx(
    procs: Processes, nginx: str, tmp: Path, name: str, body: str
) -> subprocess.Popen[bytes]:
    tmp.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_bytes(_NGINX_COMMON.format(tmp=tmp, body=body).encode("latin-1"))
    log = tmp / "stderr.log"
    check = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.returncode != 0:
        raise SetupError(f"nginx rejected the {name} config:\n{check.stderr}")
    return procs.start(
        name, [nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)], log
    )


# --------------------------------------------------------------------------- gateway


def gateway_config(upstream_port: int, identity: bool) -> str:
    text = (
        "sites:\n"
        f"  - host: {HOST}\n"
        f"    upstream: http://{LOOPBACK}:{upstream_port}\n"
        "cross_domains:\n"
        f"  - {CROSS_HOST}\n"
    )
    if identity:
        text += 'analytics:\n  write_key: benchkey\n  cdn_url: "http://127.0.0.1:9"\n'
    else:
        # Pass-through: a visitor without an id is not given one, so nothing is rewritten.
        text += "identity:\n  mint: false\n"
    return text


def _python() -> Path:
    python = REPO / ".venv" / "bin" / "python"
    return python if python.exists() else Path(sys.executable)


def start_bare_server(procs: Processes, tmp: Path, body: Path) -> int:
    """Start bench/bare_server.py answering every request with ``body``; return its port."""
    port = free_port()
    log = tmp / "bare-server.log"
    argv = [str(_python()), str(REPO / "bench" / "bare_server.py"), LOOPBACK, str(port), str(body)]
    proc = procs.start("aiohttp bare server", argv, log)
    wait_http(f"http://{LOOPBACK}:{port}/", proc, "aiohttp bare server", log)
    return port


def start_gateway(
    procs: Processes, tmp: Path, name: str, upstream_port: int, identity: bool, source: Path
) -> tuple[int, subprocess.Popen[bytes], Path]:
    """Start ``python -m gateway serve`` with ``source`` as the working directory (so that is
    the ``gateway`` package imported); return its proxy port, process and stderr log."""
    tmp.mkdir()
    config = tmp / "config.yaml"
    config.write_text(gateway_config(upstream_port, identity))
    python = _python()
    port, admin = free_port(), free_port()
    argv = [
        str(python),
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--admin-host",
        LOOPBACK,
        "--admin-port",
        str(admin),
        "--workers",
        "1",
    ]
    log = tmp / "stderr.log"
    proc = procs.start(name, argv, log, cwd=source)
    wait_http(f"http://{LOOPBACK}:{admin}/readyz", proc, name, log)
    return port, proc, log


# --------------------------------------------------------------------------- wrk


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: str  # empty when wrk reported no socket errors / non-2xx responses


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PCT = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.M)
_ERRORS = re.compile(r"^\s*(Socket errors:.*|Non-2xx or 3xx responses:.*)$", re.M)


def parse_wrk(text: str) -> Result:
    pct = {m.group(1): float(m.group(2)) * _UNITS_MS[m.group(3)] for m in _PCT.finditer(text)}
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    if rps is None or "50" not in pct or "99" not in pct:
        raise SetupError(f"could not parse wrk output:\n{text}")
    errors = "; ".join(m.group(1).strip() for m in _ERRORS.finditer(text))
    return Result(
        float(rps.group(1)), pct["50"], pct["99"], int(total.group(1)) if total else 0, errors
    )


def run_wrk(wrk: str, url: str, conc: int, duration: int, headers: dict[str, str]) -> Result:
    argv = [wrk, "-t1", f"-c{conc}", f"-d{duration}s", "--latency"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"wrk did not finish: {' '.join(argv)}") from exc
    if out.returncode != 0:
        raise SetupError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse_wrk(out.stdout)


# --------------------------------------------------------------------------- report


def ms(v: float) -> str:
    return f"{v:.2f}"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


@dataclass
class Row:
    payload: Payload
    direct: Result
    gateway: Result
    nginx: Result
    aiohttp: Result | None = None  # aiohttp's bare server serving the same body (2 KB only)


@dataclass
class Rewritten:
    """The 100 KB identity page under load: the gateway rewriting it vs nginx's sub_filter
    making the same insertions (``same``: nginx's bytes were the gateway's)."""

    payload: Payload
    gateway: Result
    sub_filter: Result
    same: bool


def print_cell(label: str, r: Result) -> None:
    extra = f"  [{r.errors}]" if r.errors else ""
    print(
        f"    {label:<8} {r.rps:>9.0f} req/s   p50 {r.p50_ms:>7.2f} ms   "
        f"p99 {r.p99_ms:>7.2f} ms{extra}",
        flush=True,
    )


def markdown(
    rows: list[Row],
    ident: tuple[Payload, Result, Result] | None,
    rewritten: Rewritten | None = None,
) -> str:
    out = [
        "| payload | conc | direct rps | direct p50/p99 ms | gateway rps | gateway p50/p99 ms "
        "| nginx rps | nginx p50/p99 ms | aiohttp rps | gw/direct | gw/nginx | gw/aiohttp "
        "| +p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bare = "—" if r.aiohttp is None else f"{r.aiohttp.rps:.0f}"
        vs_bare = "—" if r.aiohttp is None else f"{ratio(r.gateway.rps, r.aiohttp.rps):.2f}"
        out.append(
            f"| {r.payload.key} | {r.payload.concurrency} "
            f"| {r.direct.rps:.0f} | {ms(r.direct.p50_ms)} / {ms(r.direct.p99_ms)} "
            f"| {r.gateway.rps:.0f} | {ms(r.gateway.p50_ms)} / {ms(r.gateway.p99_ms)} "
            f"| {r.nginx.rps:.0f} | {ms(r.nginx.p50_ms)} / {ms(r.nginx.p99_ms)} | {bare} "
            f"| {ratio(r.gateway.rps, r.direct.rps):.2f} "
            f"| {ratio(r.gateway.rps, r.nginx.rps):.2f} | {vs_bare} "
            f"| {r.gateway.p50_ms - r.direct.p50_ms:+.2f} |"
        )
    if ident is not None:
        p, plain, idr = ident
        out += [
            "",
            "| payload | conc | gateway pass-through rps | p50/p99 ms | gateway identity rps "
            "| p50/p99 ms | identity/pass-through | +p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| {p.key} | {p.concurrency} | {plain.rps:.0f} "
            f"| {ms(plain.p50_ms)} / {ms(plain.p99_ms)} | {idr.rps:.0f} "
            f"| {ms(idr.p50_ms)} / {ms(idr.p99_ms)} | {ratio(idr.rps, plain.rps):.2f} "
            f"| {idr.p50_ms - plain.p50_ms:+.2f} |",
        ]
    if rewritten is not None:
        rw = rewritten
        out += [
            "",
            "| payload | conc | gateway rewriting rps | p50/p99 ms | nginx sub_filter rps "
            "| p50/p99 ms | gateway/sub_filter | same bytes |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
            f"| {rw.payload.key} | {rw.payload.concurrency} | {rw.gateway.rps:.0f} "
            f"| {ms(rw.gateway.p50_ms)} / {ms(rw.gateway.p99_ms)} | {rw.sub_filter.rps:.0f} "
            f"| {ms(rw.sub_filter.p50_ms)} / {ms(rw.sub_filter.p99_ms)} "
            f"| {ratio(rw.gateway.rps, rw.sub_filter.rps):.2f} | {'yes' if rw.same else 'no'} |",
        ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Loopback benchmark: upstream direct vs through the gateway vs through nginx."
    )
    p.add_argument("--duration", type=int, help="seconds per cell (default 5, --quick 2)")
    p.add_argument(
        "--concurrency",
        type=int,
        help="connections for every payload (default 32 for pages, 8 for the 1 MB binary)",
    )
    p.add_argument("--quick", action="store_true", help="short cells (2 s), no warm-up pass")
    p.add_argument(
        "--identity",
        action="store_true",
        help="also measure the 100 KB page with identity decoration + injection",
    )
    p.add_argument(
        "--gateway-dir",
        type=Path,
        default=REPO,
        help="source tree whose `gateway` package is run (default: this checkout); e.g. "
        "`git archive HEAD gateway | tar -x -C DIR` to measure the last commit",
    )
    args = p.parse_args(argv)
    args.gateway_dir = args.gateway_dir.resolve()
    if not (args.gateway_dir / "gateway" / "__main__.py").is_file():
        p.error(f"--gateway-dir {args.gateway_dir}: no gateway/__main__.py there")
    if args.duration is None:
        args.duration = 2 if args.quick else 5
    if args.duration < 1 or args.duration > 600:
        p.error("--duration must be 1..600 seconds")
    if args.concurrency is not None and not 1 <= args.concurrency <= 1000:
        p.error("--concurrency must be 1..1000")
    return args


def find_tools() -> tuple[str, str]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SetupError("wrk not found: install it with `apt-get install wrk` (Debian package)")
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if nginx is None:
        raise SetupError("nginx not found: install it with `apt-get install nginx` (Debian)")
    return wrk, nginx


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def check_same_body(
    name: str, url: str, headers: dict[str, str], expected: bytes, log: Path | None = None
) -> str:
    status, body = fetch(url, headers)
    if status != 200:
        detail = f"\n{name} stderr (tail):\n{_tail(log)}" if log is not None else ""
        raise SetupError(f"{name}: GET {url} answered {status}: {body[:200]!r}{detail}")
    if body == expected:
        return "unchanged"
    return f"changed ({len(expected)} -> {len(body)} bytes)"


def run(args: argparse.Namespace) -> int:
    wrk, nginx = find_tools()
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        payloads, ident_payload, ident_note = write_payloads(tmp)

        up_port = free_port()
        up = start_nginx(
            procs,
            nginx,
            tmp / "nginx-upstream",
            "nginx upstream",
            _NGINX_UPSTREAM.format(host=LOOPBACK, port=up_port, www=tmp / "www"),
        )
        wait_http(
            f"http://{LOOPBACK}:{up_port}/small.html",
            up,
            "nginx upstream",
            tmp / "nginx-upstream" / "error.log",
        )
        px_port = free_port()
        px = start_nginx(
            procs,
            nginx,
            tmp / "nginx-proxy",
            "nginx proxy",
            _NGINX_PROXY.format(host=LOOPBACK, port=px_port, upstream_port=up_port),
        )
        wait_http(
            f"http://{LOOPBACK}:{px_port}/small.html",
            px,
            "nginx proxy",
            tmp / "nginx-proxy" / "error.log",
            HOST,
        )
        source = args.gateway_dir
        gw_port, _gw, gw_log = start_gateway(
            procs, tmp / "gateway", "gateway", up_port, False, source
        )
        logs = {"gateway": gw_log}
        id_port = None
        id_log = None
        if args.identity:
            id_port, _idgw, id_log = start_gateway(
                procs, tmp / "gateway-identity", "gateway (identity)", up_port, True, source
            )

        targets = {
            "direct": up_port,
            "gateway": gw_port,
            "nginx": px_port,
        }
        base_headers = {"Host": HOST}

        # Sanity: every path serves the expected bytes before anything is timed.
        www = tmp / "www"
        for p in payloads:
            expected = (www / p.filename).read_bytes()
            for name, port in targets.items():
                state = check_same_body(
                    name,
                    f"http://{LOOPBACK}:{port}/{p.filename}",
                    base_headers,
                    expected,
                    logs.get(name),
                )
                if state != "unchanged" and p.filename.endswith(".bin"):
                    raise SetupError(f"{name} altered the binary payload: {state}")
                if state != "unchanged":
                    print(f"note: {name} {state} {p.filename}")
        ident_state = ""
        sf_port = None
        sf_same = False
        if args.identity and id_port is not None:
            expected = (www / ident_payload.filename).read_bytes()
            ident_url = f"http://{LOOPBACK}:{id_port}/{ident_payload.filename}"
            ident_headers = {**base_headers, "Cookie": IDENTITY_COOKIE}
            ident_state = check_same_body(
                "gateway (identity)", ident_url, ident_headers, expected, id_log
            )
            if ident_state != "unchanged":
                # nginx's sub_filter, told to make the insertions the gateway made.
                _, rewritten_page = fetch(ident_url, ident_headers)
                pairs = sub_filters(expected, rewritten_page)
                variables, filters = sub_filter_config(pairs)
                sf_port = free_port()
                sf = start_nginx(
                    procs,
                    nginx,
                    tmp / "nginx-sub-filter",
                    "nginx sub_filter",
                    _NGINX_SUB_FILTER.format(
                        host=LOOPBACK,
                        port=sf_port,
                        upstream_port=up_port,
                        variables=variables,
                        filters=filters,
                    ),
                )
                sf_url = f"http://{LOOPBACK}:{sf_port}/{ident_payload.filename}"
                wait_http(sf_url, sf, "nginx sub_filter", tmp / "nginx-sub-filter" / "error.log")
                _, sf_page = fetch(sf_url, ident_headers)
                sf_same = sf_page == rewritten_page
                print(
                    f"  nginx sub_filter: {len(pairs)} strings; its page is "
                    + ("the gateway's, byte for byte" if sf_same else "NOT the gateway's")
                )
        bare_port = start_bare_server(procs, tmp, www / "small.html")
        check_same_body(
            "aiohttp bare server",
            f"http://{LOOPBACK}:{bare_port}/small.html",
            base_headers,
            (www / "small.html").read_bytes(),
        )

        print(
            f"gateway benchmark: wrk -t1, {args.duration}s per cell, loopback only, "
            f"{os.cpu_count()} CPUs shared by wrk, proxy and upstream",
            flush=True,
        )
        for p in payloads:
            print(f"  {p.key}: {p.filename}, {p.size} bytes ({p.source})")
        if args.identity:
            print(f"  {ident_note}")
            if ident_state == "unchanged":
                print(
                    "  note: the identity gateway returned the page unchanged "
                    "(identity features not active in this gateway build yet)"
                )
            else:
                print(f"  identity gateway response: {ident_state}")
        print(flush=True)

        if not args.quick:
            # Warm-up: open upstream keepalive pools, let the gateway settle (not reported).
            for port in targets.values():
                run_wrk(
                    wrk, f"http://{LOOPBACK}:{port}/{payloads[0].filename}", 16, 1, base_headers
                )

        rows: list[Row] = []
        for p in payloads:
            conc = args.concurrency or p.concurrency
            p = Payload(p.key, p.filename, conc, p.source, p.size)
            print(f"  {p.key} (c={conc})", flush=True)
            cells: dict[str, Result] = {}
            for name, port in targets.items():
                r = run_wrk(
                    wrk, f"http://{LOOPBACK}:{port}/{p.filename}", conc, args.duration, base_headers
                )
                cells[name] = r
                print_cell(name, r)
            row = Row(p, cells["direct"], cells["gateway"], cells["nginx"])
            if p.filename == "small.html":
                row.aiohttp = run_wrk(
                    wrk, f"http://{LOOPBACK}:{bare_port}/small.html", conc, args.duration, {}
                )
                print_cell("aiohttp", row.aiohttp)
                print(
                    f"    gateway/aiohttp bare {ratio(row.gateway.rps, row.aiohttp.rps):.2f}",
                    flush=True,
                )
            rows.append(row)
            print(
                f"    gateway/direct {ratio(row.gateway.rps, row.direct.rps):.2f}   "
                f"gateway/nginx {ratio(row.gateway.rps, row.nginx.rps):.2f}   "
                f"p50 added {row.gateway.p50_ms - row.direct.p50_ms:+.2f} ms",
                flush=True,
            )

        ident: tuple[Payload, Result, Result] | None = None
        if args.identity and id_port is not None:
            conc = args.concurrency or ident_payload.concurrency
            ip = Payload(
                ident_payload.key,
                ident_payload.filename,
                conc,
                ident_payload.source,
                ident_payload.size,
            )
            print(f"  {ip.key} (c={conc})", flush=True)
            url_path = f"/{ip.filename}"
            plain = run_wrk(
                wrk, f"http://{LOOPBACK}:{gw_port}{url_path}", conc, args.duration, base_headers
            )
            print_cell("pass", plain)
            idr = run_wrk(
                wrk,
                f"http://{LOOPBACK}:{id_port}{url_path}",
                conc,
                args.duration,
                {**base_headers, "Cookie": IDENTITY_COOKIE},
            )
            print_cell("identity", idr)
            ident = (ip, plain, idr)

        rewritten: Rewritten | None = None
        if id_port is not None and sf_port is not None:
            conc = args.concurrency or 32
            rp = Payload(
                "100 KB html rewritten", ident_payload.filename, conc, "", ident_payload.size
            )
            print(f"  {rp.key} (c={conc})", flush=True)
            headers = {**base_headers, "Cookie": IDENTITY_COOKIE}
            gwr = run_wrk(
                wrk, f"http://{LOOPBACK}:{id_port}/{rp.filename}", conc, args.duration, headers
            )
            print_cell("gateway", gwr)
            sfr = run_wrk(
                wrk, f"http://{LOOPBACK}:{sf_port}/{rp.filename}", conc, args.duration, headers
            )
            print_cell("sub_filt", sfr)
            rewritten = Rewritten(rp, gwr, sfr, sf_same)

        print("\nverdicts:")
        by_file = {r.payload.filename: r for r in rows}
        small, blob = by_file["small.html"], by_file["blob.bin"]
        if small.aiohttp is not None:
            x = ratio(small.gateway.rps, small.aiohttp.rps)
            ok = "PASS" if x >= TARGET_SMALL_VS_AIOHTTP else "MISS"
            print(
                f"  [{ok}] 2 KB pass-through: gateway reaches {x:.2f} of aiohttp's bare server's "
                f"requests/s (target ≥ {TARGET_SMALL_VS_AIOHTTP})"
            )
        x = ratio(small.gateway.rps, small.nginx.rps)
        ok = "PASS" if x >= TARGET_SMALL_VS_NGINX else "MISS"
        print(
            f"  [{ok}] 2 KB pass-through: gateway reaches {x:.2f} of nginx's requests/s "
            f"(target ≥ {TARGET_SMALL_VS_NGINX})"
        )
        x = ratio(blob.gateway.rps, blob.direct.rps)
        ok = "PASS" if x >= TARGET_STREAM_VS_DIRECT else "MISS"
        print(
            f"  [{ok}] 1 MB stream: gateway rps is {x:.2f} of direct "
            f"(target ≥ {TARGET_STREAM_VS_DIRECT})"
        )
        if ident is not None:
            _, plain, idr = ident
            added = idr.p50_ms - plain.p50_ms
            ok = "PASS" if added <= TARGET_IDENTITY_ADDED_MS else "MISS"
            print(
                f"  [{ok}] 100 KB identity: decoration + injection adds {added:+.2f} ms p50 over "
                f"pass-through through the gateway (target ≤ {TARGET_IDENTITY_ADDED_MS:g} ms)"
            )
        if rewritten is not None:
            x = ratio(rewritten.gateway.rps, rewritten.sub_filter.rps)
            ok = "PASS" if x >= TARGET_REWRITE_VS_SUB_FILTER else "MISS"
            same = "" if rewritten.same else " (nginx's bytes differ from the gateway's)"
            print(
                f"  [{ok}] 100 KB rewritten: gateway reaches {x:.2f} of nginx sub_filter's "
                f"requests/s doing the same insertions (target ≥ {TARGET_REWRITE_VS_SUB_FILTER})"
                f"{same}"
            )
        errs = [(r.payload.key, n, c.errors) for r in rows for n, c in vars_cells(r) if c.errors]
        for key, name, e in errs:
            print(f"  warning: {key} via {name}: {e}")
        print("\nmarkdown (paste into the README):\n")
        print(markdown(rows, ident, rewritten))
        for name, proc in procs.procs:
            if proc.poll() is not None:
                print(f"warning: {name} exited during the run ({proc.returncode})")
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def vars_cells(row: Row) -> list[tuple[str, Result]]:
    return [("direct", row.direct), ("gateway", row.gateway), ("nginx", row.nginx)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with terminate_on_sigterm():
            return run(args)
    except SetupError as exc:
        print(f"bench setup failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; stopped all benchmark processes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
