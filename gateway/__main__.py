"""Command line: ``serve``, ``check-config``, ``gen-key``, ``link`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from .app import Overrides, config_failed, run_process, start_failed, supervise
from .applinks import mint, plan
from .config import ConfigError, available_cpus, load_config
from .keys import generate_key
from .links import LinkRefused
from .logs import install
from .options import Admin, Server, declared_key, worker_count
from .state import ConfigIndex
from .store import StoreError, open_store
from .store_url import parse_store_url, redact_url

_WORKERS = declared_key(Server, "workers")
# The link command's bound per store operation, at least.
_STORE_TIMEOUT_MS = 2000


class UsageError(Exception):
    """A command line argparse refuses (raised instead of its exit, so that ``serve`` can say
    it as a JSON line)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0-65535)")
    return port


def _workers(value: str) -> int:
    try:
        n = worker_count(value if value == "auto" else int(value), available_cpus())
    except ValueError:
        n = None
    if n is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a worker count ({_WORKERS.expected})")
    return n


def _default(path: str) -> str:
    """Where a ``serve`` option's value comes from when it is not given."""
    section, name = path.split(".")
    value = getattr({"server": Server, "admin": Admin}[section], name)
    return f"(default: the config's {path}, else {value})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ajs-identity-gateway",
        description="Identity gateway: keeps a visitor's Segment anonymousId across domains.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="path to domains.yaml")
    serve.add_argument("--host", help=f"proxy listen address {_default('server.host')}")
    serve.add_argument("--port", type=_port, help=f"proxy port {_default('server.port')}")
    serve.add_argument("--admin-host", help=f"admin listen address {_default('admin.host')}")
    serve.add_argument("--admin-port", type=_port, help=f"admin port {_default('admin.port')}")
    workers = f"worker processes, or auto: one per CPU {_default('server.workers')}"
    serve.add_argument("--workers", type=_workers, help=workers)
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("path")
    check.add_argument(
        "--workers",
        type=_workers,
        help="check as 'serve --workers N' (or auto) would run it (default: server.workers)",
    )
    sub.add_parser(
        "gen-key",
        help="print a random key for signing.keys or admin.token",
        description="Print one random key (43 URL-safe characters, 256 bits) in the form "
        "signing.keys and admin.token expect. For signing.keys, join keys with commas: the "
        "first signs, every one verifies.",
    )
    link = sub.add_parser(
        "link",
        help="print a link that carries a visitor's identity to a configured cross-domain "
        "(for apps, email and partners)",
        description="Print a link to URL carrying the visitor's ids by the target's strategy: "
        "ajs_aid for a query target, a signed link for a signed one, a token stored in the "
        "configured store for a token one (so a fleet needs its shared Redis; memory:// is "
        "refused). Exit 2 when URL is not a configured cross-domain or an id is not valid.",
    )
    link.add_argument("--config", required=True, help="path to domains.yaml")
    link.add_argument("--to", required=True, metavar="URL", help="where the link goes")
    link.add_argument("--anonymous-id", required=True, metavar="ID")
    link.add_argument("--user-id", metavar="ID", help="the visitor's userId, when known")
    link.add_argument(
        "--ttl",
        type=int,
        metavar="S",
        help="seconds the token or signature lives (default: tokens.ttl_seconds or "
        "signing.lifetime_seconds; a query link does not expire)",
    )
    demo = sub.add_parser(
        "demo",
        help="run the offline demo: two sites with and without the gateway, and a Segment "
        "stand-in that counts the visitors",
    )
    demo.add_argument("--config", default="config/demo.yaml")
    demo.add_argument(
        "--analytics-js",
        choices=("auto", "npm", "shim"),
        default="auto",
        help="the real @segment/analytics-next from tests/e2e/node_modules (npm), the demo's "
        "small shim (shim), or the real one when installed (auto, the default)",
    )
    demo.add_argument(
        "--direct-shop-port",
        type=_port,
        default=8011,
        help="port of the shop without the gateway (default 8011; 0: any free port)",
    )
    demo.add_argument(
        "--direct-checkout-port",
        type=_port,
        default=8012,
        help="port of the checkout without the gateway (default 8012; 0: any free port)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    serving = argv_list[:1] == ["serve"]
    if serving:
        # From here on, everything this process (and each worker) writes is a JSON line:
        # a start-up failure too, bad flags included.
        install(sys.stdout)
    try:
        args = build_parser().parse_args(argv_list)
    except UsageError as exc:
        if serving:
            return start_failed(f"{exc.message} (see serve --help)")
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        try:
            config = load_config(args.path, workers=args.workers)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        for warning in config.warnings:
            print(f"WARNING: {warning}", file=sys.stderr)
        print(config.summary())
        return 0
    if args.command == "gen-key":
        print(generate_key())
        return 0
    if args.command == "link":
        return _link(args)
    if args.command == "demo":
        from .demo.run import run_demo

        ports = (args.direct_shop_port, args.direct_checkout_port)
        return run_demo(args.config, args.analytics_js, ports)
    overrides = Overrides(args.host, args.port, args.admin_host, args.admin_port, args.workers)
    workers = args.workers
    if workers is None:
        try:
            workers = load_config(args.config).server.workers
        except ConfigError as exc:
            return config_failed(args.config, exc)
    if workers > 1 and not args.reuse_port:
        return supervise(args.config, overrides, workers, _without_workers(argv_list))
    return run_process(
        args.config, overrides, reuse_port=args.reuse_port, worker_index=args.worker_index
    )


def _link(args: argparse.Namespace) -> int:
    """``link``: 0 and the link on stdout; 2 for a request that cannot be served (not a
    configured target, a bad id or ttl, a token target with a store of this process only); 1
    for a config that does not load or a store that does not take the token."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    index = ConfigIndex.of(config)
    now = time.time()
    try:
        checked = plan(
            config,
            index,
            to=args.to,
            anonymous_id=args.anonymous_id,
            user_id=args.user_id,
            ttl=args.ttl,
            now=now,
        )
    except LinkRefused as exc:
        print(f"link: {exc}", file=sys.stderr)
        return 2
    if checked.strategy == "token" and parse_store_url(config.store.url).kind == "memory":
        print(
            f"link: {checked.host} uses strategy token, but store.url is memory://: a token "
            "kept in this command's memory is gone when it exits (configure the store the "
            "gateways share, such as redis://host:6379/0)",
            file=sys.stderr,
        )
        return 2

    async def run() -> str:
        # A command, not a page: it may wait for a connection longer than a request would.
        store = open_store(
            config.store.url,
            timeout_ms=max(config.store.timeout_ms, _STORE_TIMEOUT_MS),
            key_prefix=config.store.key_prefix,
        )
        try:
            return (await mint(checked, index, store, now=now)).url
        finally:
            await store.close()

    try:
        print(asyncio.run(run()))
    except StoreError as exc:
        print(
            f"link: the token store {redact_url(config.store.url)} did not take the token "
            f"({exc}); is it up?",
            file=sys.stderr,
        )
        return 1
    return 0


def _without_workers(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
