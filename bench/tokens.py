"""What minting a token costs per page: the gateway with a token target vs a query target.

One run starts, all on 127.0.0.1, in a private temp dir, and stops everything on exit:

* a private ``redis-server`` on a free port (no persistence; never the shared 6379);
* an nginx upstream serving one ~2 KB HTML page with a single link to ``pay.test``;
* two gateways (``python -m gateway serve --workers 1``) in front of it, identical but for
  that link's strategy: ``token`` (one ``SET`` per page view) and ``query`` (no store I/O).
  Both point at the same Redis, so the only difference measured is the token.

Measured, with the visitor's id cookie on every request:

(a)/(b) latency p50/p99 at concurrency 1 and throughput at concurrency 16, with ``wrk``
        (helpers shared with bench/proxy.py); the ratio token/query and the added p50;
(c)     ``store.put`` (and ``take``) round trips called directly on the gateway's Redis store,
        p50/p99 in microseconds;
        and that a page costs exactly one round trip: ``INFO commandstats`` ``set`` calls after
        N pages through the token gateway equal N (and stay 0 through the query gateway).

Exit status 0 when the measurement completed (a count mismatch is reported, and exits 1),
2 when something could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.store import TokenStore, open_store  # noqa: E402
from gateway.strategies import TokenRecord, new_token  # noqa: E402


def _load_proxy_bench() -> ModuleType:
    """bench/proxy.py, for its process, nginx and wrk helpers (bench/ is not a package)."""
    path = Path(__file__).resolve().parent / "proxy.py"
    spec = importlib.util.spec_from_file_location("bench_proxy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_proxy"] = module
    spec.loader.exec_module(module)
    return module


pb = _load_proxy_bench()

HOST = "bench.test"
TARGET = "pay.test"
ANON_ID = "1b671a64-40d5-491e-99b0-da01ff1f3341"
COOKIE = f"ajs_anonymous_id={ANON_ID}; ajs_user_id=bench-user"
LOOPBACK = pb.LOOPBACK
TTL = 300


def page_bytes(size: int = 2048) -> bytes:
    """A well-formed HTML page of about ``size`` bytes with one link to the target."""
    head = (
        b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>bench: tokens'
        b"</title></head>\n<body>\n<h1>Checkout</h1>\n"
        b'<p><a href="https://' + TARGET.encode() + b'/cart?step=1">pay</a> '
        b'<a href="/local">local</a></p>\n'
    )
    line = b"<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.</p>\n"
    body = bytearray(head)
    while len(body) + len(line) + 16 <= size:
        body += line
    return bytes(body) + b"</body></html>\n"


def gateway_config(upstream_port: int, redis_url: str, strategy: str) -> str:
    return (
        "sites:\n"
        f"  - host: {HOST}\n"
        f"    upstream: http://{LOOPBACK}:{upstream_port}\n"
        "cross_domains:\n"
        f"  - {{host: {TARGET}, strategy: {strategy}}}\n"
        f"store: {{url: '{redis_url}', timeout_ms: 50}}\n"
        f"tokens: {{ttl_seconds: {TTL}}}\n"
    )


def start_gateway(
    procs: pb.Processes, tmp: Path, name: str, config_text: str
) -> tuple[int, int, Path]:
    """``python -m gateway serve`` on free ports; (proxy port, admin port, stderr log)."""
    tmp.mkdir()
    config = tmp / "config.yaml"
    config.write_text(config_text)
    python = REPO / ".venv" / "bin" / "python"
    port, admin = pb.free_port(), pb.free_port()
    argv = [
        str(python if python.exists() else sys.executable),
        *("-m", "gateway", "serve", "--config", str(config)),
        *("--host", LOOPBACK, "--port", str(port)),
        *("--admin-host", LOOPBACK, "--admin-port", str(admin), "--workers", "1"),
    ]
    log = tmp / "stderr.log"
    proc = procs.start(name, argv, log)
    pb.wait_http(f"http://{LOOPBACK}:{admin}/readyz", proc, name, log)
    return port, admin, log


def redis_command(port: int, *args: str) -> bytes:
    """One command over a raw socket in RESP (no client library between us and the count)."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    with socket.create_connection((LOOPBACK, port), timeout=2) as s:
        s.sendall(payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or _complete(data):
                return data


def _complete(data: bytes) -> bool:
    if data[:1] in (b"+", b"-", b":"):
        return data.endswith(b"\r\n")
    if data[:1] == b"$":
        head, _, rest = data.partition(b"\r\n")
        return len(rest) >= int(head[1:]) + 2
    return False


def set_calls(port: int) -> int:
    stats = redis_command(port, "INFO", "commandstats").decode()
    for line in stats.splitlines():
        if line.startswith("cmdstat_set:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


def start_redis(procs: pb.Processes, tmp: Path) -> int:
    binary = shutil.which("redis-server")
    if binary is None:
        raise pb.SetupError("redis-server not found: apt-get install redis-server")
    port = pb.free_port()
    while port == 6379:
        port = pb.free_port()
    tmp.mkdir()
    argv = [
        binary,
        *("--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"),
        *("--dir", str(tmp)),
    ]
    proc = procs.start("redis-server", argv, tmp / "stderr.log")
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis_command(port, "PING").startswith(b"+PONG"):
                return port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise pb.SetupError(f"redis-server did not start:\n{pb._tail(tmp / 'stderr.log')}")
        time.sleep(0.02)


def get(port: int) -> bytes:
    req = urllib.request.Request(
        f"http://{LOOPBACK}:{port}/page.html", headers={"Host": HOST, "Cookie": COOKIE}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        if resp.status != 200:
            raise pb.SetupError(f"GET via port {port}: {resp.status}")
        body: bytes = resp.read()
        return body


# --------------------------------------------------------------------------- store micro


@dataclass
class Micro:
    put_p50_us: float
    put_p99_us: float
    take_p50_us: float
    take_p99_us: float
    n: int


def percentile(sorted_values: Sequence[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def store_micro(redis_url: str, n: int) -> Micro:
    store: TokenStore = open_store(redis_url, timeout_ms=1000)
    record = TokenRecord(ANON_ID, "bench-user", time.time(), HOST)
    tokens = [new_token() for _ in range(n)]
    puts: list[float] = []
    takes: list[float] = []
    try:
        await store.put(new_token(), record, TTL)  # connect outside the timing
        for token in tokens:
            t0 = time.perf_counter_ns()
            await store.put(token, record, TTL)
            puts.append((time.perf_counter_ns() - t0) / 1000)
        for token in tokens:
            t0 = time.perf_counter_ns()
            found = await store.take(token, single_use=False)
            takes.append((time.perf_counter_ns() - t0) / 1000)
            if found != record:
                raise pb.SetupError("store.take did not return what store.put wrote")
    finally:
        await store.close()
    puts.sort()
    takes.sort()
    return Micro(
        percentile(puts, 50), percentile(puts, 99), percentile(takes, 50), percentile(takes, 99), n
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="2 s per wrk cell, fewer samples")
    p.add_argument("--duration", type=int, help="seconds per wrk cell (default 5, --quick 2)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2 if args.quick else 5
    if not 1 <= args.duration <= 600:
        p.error("--duration must be 1..600 seconds")
    return args


def run(args: argparse.Namespace) -> int:
    wrk, nginx = pb.find_tools()
    procs = pb.Processes()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-tokens-"))
    try:
        www = tmp / "www"
        www.mkdir()
        page = page_bytes()
        (www / "page.html").write_bytes(page)
        up_port = pb.free_port()
        up = pb.start_nginx(
            procs,
            nginx,
            tmp / "nginx-upstream",
            "nginx upstream",
            pb._NGINX_UPSTREAM.format(host=LOOPBACK, port=up_port, www=www),
        )
        pb.wait_http(
            f"http://{LOOPBACK}:{up_port}/page.html",
            up,
            "nginx upstream",
            tmp / "nginx-upstream" / "error.log",
        )
        redis_port = start_redis(procs, tmp / "redis")
        redis_url = f"redis://{LOOPBACK}:{redis_port}/0"
        ports: dict[str, int] = {}
        for strategy in ("token", "query"):
            ports[strategy], _admin, _log = start_gateway(
                procs,
                tmp / f"gateway-{strategy}",
                f"gateway ({strategy})",
                gateway_config(up_port, redis_url, strategy),
            )

        # Sanity: each gateway decorates the link the way its strategy says.
        for strategy, marker in (("token", b"ajs_token="), ("query", b"ajs_aid=")):
            body = get(ports[strategy])
            if marker not in body or (strategy == "token" and ANON_ID.encode() in body):
                raise pb.SetupError(f"{strategy} gateway did not decorate as expected: {body!r}")

        # One store round trip per page: SET calls counted by Redis itself.
        pages = 100 if args.quick else 500
        counts: dict[str, int] = {}
        for strategy in ("token", "query"):
            redis_command(redis_port, "CONFIG", "RESETSTAT")
            for _ in range(pages):
                get(ports[strategy])
            counts[strategy] = set_calls(redis_port)

        headers = {"Host": HOST, "Cookie": COOKIE}
        print(
            f"token-minting benchmark: wrk -t1, {args.duration}s per cell, loopback only, "
            f"one {len(page)}-byte page with one link to {TARGET}, redis-server on :{redis_port}",
            flush=True,
        )
        if not args.quick:
            for port in ports.values():
                pb.run_wrk(wrk, f"http://{LOOPBACK}:{port}/page.html", 4, 1, headers)
        cells: dict[tuple[str, int], pb.Result] = {}
        for conc in (1, 16):
            for strategy in ("query", "token"):
                r = pb.run_wrk(
                    wrk, f"http://{LOOPBACK}:{ports[strategy]}/page.html", conc, args.duration,
                    headers,
                )  # fmt: skip
                cells[(strategy, conc)] = r
                pb.print_cell(f"{strategy} c={conc}", r)

        n = 500 if args.quick else 5000
        micro = asyncio.run(store_micro(redis_url, n))
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    q1, t1 = cells[("query", 1)], cells[("token", 1)]
    q16, t16 = cells[("query", 16)], cells[("token", 16)]
    print()
    print(f"{'':<22}{'query':>12}{'token':>12}{'token/query':>14}{'added':>12}")
    print(
        f"{'c=1  p50 ms':<22}{q1.p50_ms:>12.3f}{t1.p50_ms:>12.3f}"
        f"{pb.ratio(t1.p50_ms, q1.p50_ms):>14.2f}{t1.p50_ms - q1.p50_ms:>+12.3f}"
    )
    print(
        f"{'c=1  p99 ms':<22}{q1.p99_ms:>12.3f}{t1.p99_ms:>12.3f}"
        f"{pb.ratio(t1.p99_ms, q1.p99_ms):>14.2f}{t1.p99_ms - q1.p99_ms:>+12.3f}"
    )
    print(f"{'c=1  req/s':<22}{q1.rps:>12.0f}{t1.rps:>12.0f}{pb.ratio(t1.rps, q1.rps):>14.2f}")
    print(f"{'c=16 req/s':<22}{q16.rps:>12.0f}{t16.rps:>12.0f}{pb.ratio(t16.rps, q16.rps):>14.2f}")
    print(
        f"store.put  p50 {micro.put_p50_us:.0f} us  p99 {micro.put_p99_us:.0f} us   "
        f"store.take p50 {micro.take_p50_us:.0f} us  p99 {micro.take_p99_us:.0f} us   "
        f"({micro.n} sequential calls each)"
    )
    ok = counts["token"] == pages and counts["query"] == 0
    print(
        f"round trips: {pages} pages -> SET calls: token {counts['token']}, query "
        f"{counts['query']} ({'one per page, as expected' if ok else 'MISMATCH'})"
    )
    errors = [f"{k[0]} c={k[1]}: {r.errors}" for k, r in cells.items() if r.errors]
    for line in errors:
        print(f"warning: wrk reported {line}")
    print()
    print("| metric | query target | token target | token/query | added |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| p50 ms, c=1 | {q1.p50_ms:.3f} | {t1.p50_ms:.3f} "
        f"| {pb.ratio(t1.p50_ms, q1.p50_ms):.2f} | {t1.p50_ms - q1.p50_ms:+.3f} ms |"
    )
    print(
        f"| p99 ms, c=1 | {q1.p99_ms:.3f} | {t1.p99_ms:.3f} "
        f"| {pb.ratio(t1.p99_ms, q1.p99_ms):.2f} | {t1.p99_ms - q1.p99_ms:+.3f} ms |"
    )
    print(f"| req/s, c=16 | {q16.rps:.0f} | {t16.rps:.0f} | {pb.ratio(t16.rps, q16.rps):.2f} | |")
    print(f"| store.put p50 / p99 | | {micro.put_p50_us:.0f} / {micro.put_p99_us:.0f} µs | | |")
    print(f"| SET calls per page | {counts['query'] / pages:g} | {counts['token'] / pages:g} | | |")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with pb.terminate_on_sigterm():
            return run(args)
    except pb.SetupError as exc:
        print(f"setup error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
