"""Where a 2 KB pass-through request's time goes: the figures behind bench/README.md's
"Where the time goes".

Starts what bench/proxy.py starts for its 2 KB row (an nginx upstream, one gateway worker with
the same config) and aiohttp's bare server, loads each with wrk at c=32, and prints:

* CPU per request of the gateway and of the bare server: user and system time from
  /proc/PID/stat over the run, divided by the requests wrk completed (twice each);
* with ``--strace`` (needs strace): system calls per request of the gateway (``strace -c``);
* with ``--py-spy PATH`` (py-spy, ``pip install py-spy`` in any virtualenv): a sampled profile
  of the gateway, each sample given to the innermost of a few parts on its stack (the socket
  writes, the upstream client, aiohttp's server, the handler, uvloop, the access log and
  metrics, identity, header hygiene).

    .venv/bin/python bench/profile.py                            # about 20 s
    .venv/bin/python bench/profile.py --strace --py-spy /tmp/spy/bin/py-spy

Loopback only; every process is stopped at the end, as in bench/proxy.py.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


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
CONCURRENCY = 32
_TICK = os.sysconf("SC_CLK_TCK")

# Parts of a request, by the frames py-spy names; a sample goes to the first part found
# walking its stack from the innermost frame out.
PARTS = (
    ("the response written to the visitor", r"StreamWriter\._writelines"),
    ("the request written upstream", r"_Connection\.write \("),
    ("access log and metrics", r"ProxyHandler\.record|LineBatch|prometheus_client|Metrics\."),
    ("header hygiene", r"forwarded_headers|end_to_end|connection_tokens|routed_authority"),
    ("identity", r"IdentityFlow\.|identity_flow|inbound\.py|outbound\.py|crossings\.py"),
    ("upstream client, less its write", r"gateway/upstream\.py"),
    ("aiohttp's server, less its write", r"aiohttp/"),
    ("uvloop", r"Runner\.run"),
    ("the handler itself", r"gateway/"),
)


def cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def per_request(
    wrk: str, url: str, pid: int, seconds: int, headers: dict[str, str]
) -> tuple[float, float, float]:
    """(requests/s, user µs, system µs per request) of one wrk run."""
    user0, sys0 = cpu(pid)
    result = pb.run_wrk(wrk, url, CONCURRENCY, seconds, headers)
    user1, sys1 = cpu(pid)
    done = max(1, result.requests)
    return result.rps, (user1 - user0) / done * 1e6, (sys1 - sys0) / done * 1e6


def parts(collapsed: Path) -> list[tuple[str, float]]:
    """Shares of the samples of a py-spy raw (collapsed stacks) file, by PARTS."""
    counts: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        found = next(
            (
                name
                for frame in reversed(stack.split(";"))
                for name, pattern in PARTS
                if re.search(pattern, frame)
            ),
            "elsewhere",
        )
        counts[found] += int(n)
    total = sum(counts.values()) or 1
    return [(name, n / total) for name, n in counts.most_common()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="per wrk run (default 3)")
    parser.add_argument("--strace", action="store_true", help="count system calls too")
    parser.add_argument("--py-spy", type=Path, help="py-spy executable: sample the gateway")
    args = parser.parse_args(argv)
    wrk, nginx = pb.find_tools()
    procs = pb.Processes()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    try:
        pb.write_payloads(tmp)
        www = tmp / "www"
        up_port = pb.free_port()
        upstream = pb.start_nginx(
            procs,
            nginx,
            tmp / "nginx-upstream",
            "nginx upstream",
            pb._NGINX_UPSTREAM.format(host=pb.LOOPBACK, port=up_port, www=www),
        )
        pb.wait_http(
            f"http://{pb.LOOPBACK}:{up_port}/small.html",
            upstream,
            "nginx upstream",
            tmp / "nginx-upstream" / "error.log",
        )
        gw_port, gateway, _ = pb.start_gateway(
            procs, tmp / "gateway", "gateway", up_port, False, pb.REPO
        )
        bare_port = pb.start_bare_server(procs, tmp, www / "small.html")
        bare_pid = procs.procs[-1][1].pid
        gw_url = f"http://{pb.LOOPBACK}:{gw_port}/small.html"
        bare_url = f"http://{pb.LOOPBACK}:{bare_port}/small.html"
        host = {"Host": pb.HOST}
        for url, headers in ((gw_url, host), (bare_url, {})):
            pb.run_wrk(wrk, url, CONCURRENCY, 1, headers)  # warm-up
        print(f"CPU per request, wrk -c{CONCURRENCY}, {args.seconds} s a run:")
        print(f"  {'process':<22}{'req/s':>9}{'user µs':>10}{'sys µs':>9}")
        for name, url, pid, headers in (
            ("gateway", gw_url, gateway.pid, host),
            ("aiohttp bare server", bare_url, bare_pid, {}),
        ):
            for _ in range(2):
                rps, user, system = per_request(wrk, url, pid, args.seconds, headers)
                print(f"  {name:<22}{rps:>9.0f}{user:>10.1f}{system:>9.1f}")
        if args.strace:
            if shutil.which("strace") is None:
                print("strace not found: apt-get install strace")
            else:
                out = tmp / "strace.txt"
                tracer = subprocess.Popen(
                    ["strace", "-c", "-f", "-o", str(out), "-p", str(gateway.pid)],
                    stderr=subprocess.DEVNULL,
                )
                result = pb.run_wrk(wrk, gw_url, CONCURRENCY, args.seconds, host)
                tracer.terminate()
                tracer.wait(timeout=30)
                print(f"\nsystem calls of the gateway ({result.requests} requests):")
                for line in out.read_text().splitlines():
                    fields = line.split()
                    if len(fields) >= 5 and fields[3].isdigit():
                        per = int(fields[3]) / max(1, result.requests)
                        print(f"  {fields[-1]:<16}{int(fields[3]):>9} calls, {per:.2f} a request")
        if args.py_spy is not None:
            out = tmp / "spy.txt"
            seconds = max(2, args.seconds)
            record = ["record", "-r", "400", "-d", str(seconds), "-f", "raw", "-o", str(out)]
            spy = subprocess.Popen(
                [str(args.py_spy), *record, "-p", str(gateway.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            pb.run_wrk(wrk, gw_url, CONCURRENCY, seconds + 1, host)
            spy.wait(timeout=60)
            print("\nwhere the gateway's time goes (py-spy samples):")
            for name, share in parts(out):
                print(f"  {share * 100:5.1f} %  {name}")
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except pb.SetupError as exc:
        print(f"profile setup failed: {exc}", file=sys.stderr)
        sys.exit(2)
