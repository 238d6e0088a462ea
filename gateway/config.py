"""YAML -> validated, frozen configuration.

The file is read with ``yaml.compose`` rather than ``yaml.safe_load`` so that every value keeps
the line it came from: operators get ``file:line: key.path: what is wrong (what would be
right)`` for every problem at once, the way ``nginx -t`` answers. Unknown keys are errors, because
a typo such as ``cookie_domian`` must not silently turn a feature off.

Strings may reference environment variables as ``${NAME}`` (secrets: write keys, passwords in
Redis URLs, signing keys); ``$$`` stands for a literal ``$``. A missing variable is a problem that
names it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from publicsuffixlist import PublicSuffixList

from .identity import domain_to_ascii
from .keys import GEN_KEY_ADVICE, MIN_LENGTH, parse_signing_keys, weakness
from .store_url import parse_store_url, redact_url

__all__ = [
    "Admin",
    "Analytics",
    "Config",
    "ConfigError",
    "CrossDomain",
    "Identity",
    "Problem",
    "Proxy",
    "Server",
    "Signing",
    "Site",
    "Store",
    "Tokens",
    "load_config",
    "parse_config",
]

Strategy = Literal["query", "token", "signed"]
STRATEGIES: tuple[Strategy, ...] = ("query", "token", "signed")
IdConflict = Literal["url", "cookie"]

# A host name as the Host header carries it once lower-cased and stripped of its port:
# LDH labels (RFC 1123), or a dotted IPv4 address, optionally "*." in front for a wildcard.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9:_.-]{1,64}")
# RFC 6750's b64token: what the credentials of "Authorization: Bearer" may hold.
_BEARER_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, printable as ``file:line: key.path: message``."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class ConfigError(Exception):
    """Raised with every problem found in a config file."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Site:
    """A host the gateway answers for and the upstream that serves it."""

    host: str
    upstream: str
    cookie_domain: str | None = None
    preserve_host: bool = True
    bootstrap: bool = True
    on_id_conflict: IdConflict = "url"
    accept: tuple[Strategy, ...] = STRATEGIES

    @property
    def is_wildcard(self) -> bool:
        return self.host.startswith("*.")


@dataclass(frozen=True)
class CrossDomain:
    """A host (or ``*.`` pattern) whose links carry identity, and how."""

    host: str
    strategy: Strategy = "query"


@dataclass(frozen=True)
class Analytics:
    write_key: str | None = None
    cdn_url: str = "https://cdn.segment.com"


@dataclass(frozen=True)
class Identity:
    cookie_max_age: int = 365 * 86400
    id_pattern: str | None = None
    uid_max_length: int = 256
    mint: bool = True


@dataclass(frozen=True)
class Store:
    url: str = "memory://"
    timeout_ms: int = 50
    key_prefix: str = "ajsgw:"


@dataclass(frozen=True)
class Tokens:
    """Opaque tokens for ``strategy: token`` targets. Short-lived by design: a token is a bearer
    credential for the visitor's identity, so its TTL is capped at 10 minutes."""

    ttl: int = 300
    single_use: bool = False


@dataclass(frozen=True)
class Signing:
    """HMAC keys for ``strategy: signed`` targets (the raw value; parsed by strategies.py)."""

    keys: str | None = None
    lifetime: int = 600
    bind_user_agent: bool = False


@dataclass(frozen=True)
class Server:
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1


@dataclass(frozen=True)
class Admin:
    """The admin listener. With ``token`` set, ``/metrics`` and the detail of ``/readyz``
    need ``Authorization: Bearer <token>``; the probes' answers stay open."""

    host: str = "127.0.0.1"
    port: int = 9901
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Proxy:
    """Upstream connection behaviour. There is deliberately no total-time limit: it would cut
    long downloads; ``read_timeout`` bounds the silence between two reads instead."""

    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    pool_size: int = 512
    # None: half of pool_size, so that one slow or flooded upstream cannot take every
    # connection (0: no separate bound).
    pool_size_per_host: int | None = None
    pool_wait_timeout: float = 10.0
    send_timeout: float = 60.0
    websocket_max_message: int = 4 * 1024 * 1024
    keepalive_timeout: float = 30.0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    drain_timeout: float = 25.0
    max_header_size: int = 16384
    client_idle_timeout: float = 75.0
    # Compressed HTML decoding to more than this is not rewritten (see proxy.py): a
    # decompression bomb never inflates whole, and one page's work stays bounded.
    max_decoded_html: int = 32 * 1024 * 1024

    @property
    def per_host_limit(self) -> int:
        """Concurrent requests per upstream origin (0: only the pool's own bound)."""
        if self.pool_size_per_host is None:
            return max(1, self.pool_size // 2)
        return self.pool_size_per_host


@dataclass(frozen=True)
class Config:
    path: str
    sites: tuple[Site, ...]
    cross_domains: tuple[CrossDomain, ...]
    analytics: Analytics = field(default_factory=Analytics)
    identity: Identity = field(default_factory=Identity)
    store: Store = field(default_factory=Store)
    tokens: Tokens = field(default_factory=Tokens)
    signing: Signing = field(default_factory=Signing)
    server: Server = field(default_factory=Server)
    admin: Admin = field(default_factory=Admin)
    proxy: Proxy = field(default_factory=Proxy)
    _exact: Mapping[str, Site] = field(default_factory=dict, repr=False, compare=False)
    _wild: tuple[tuple[str, Site], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = {s.host: s for s in self.sites if not s.is_wildcard}
        # Longest suffix first, so "*.shop.example.com" wins over "*.example.com".
        wild = sorted(
            ((s.host[1:], s) for s in self.sites if s.is_wildcard), key=lambda p: -len(p[0])
        )
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_wild", tuple(wild))

    def site_for(self, host_header: str | None) -> Site | None:
        """The site for a ``Host`` header value (port ignored, case-insensitive), or None."""
        if not host_header:
            return None
        host = normalize_host(host_header)
        site = self._exact.get(host)
        if site is not None:
            return site
        for suffix, candidate in self._wild:
            if host.endswith(suffix) and len(host) > len(suffix):
                return candidate
        return None

    def summary(self) -> str:
        strategies = sorted({c.strategy for c in self.cross_domains})
        return (
            f"{self.path}: ok: {len(self.sites)} site(s), {len(self.cross_domains)} cross-domain "
            f"host(s) ({', '.join(strategies) or 'none'}), store {redact_url(self.store.url)}, "
            f"bootstrap {'on' if self.analytics.write_key else 'off'}"
        )


def normalize_host(host_header: str) -> str:
    """Lower-case a Host header value and drop its port (IPv6 literals keep their brackets)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host.rstrip(".")


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    workers: int | None = None,
) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem.

    ``workers`` is the number of processes that will serve it when the command line says so
    (``--workers N``, which wins over ``server.workers``); some settings are only safe in a
    single process."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(name, 0, "", f"cannot read the file: {exc}")]) from exc
    return parse_config(text, name, os.environ if env is None else env, workers=workers)


def parse_config(
    text: str, name: str, env: Mapping[str, str], *, workers: int | None = None
) -> Config:
    """Validate YAML text (``name`` is used in messages; ``workers`` as in load_config)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(name, line, "", f"not valid YAML: {problem}")]) from exc
    reader = _Reader(name, env, workers)
    config = reader.config(root)
    if reader.problems or config is None:
        raise ConfigError(reader.problems)
    return config


_T = TypeVar("_T")


class _Reader:
    """Walks the YAML node tree, converting values and collecting problems with line numbers."""

    def __init__(self, name: str, env: Mapping[str, str], workers: int | None = None) -> None:
        self.name = name
        self.env = env
        self.workers = workers
        self.problems: list[Problem] = []
        self._loader = yaml.SafeLoader("")

    def problem(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(Problem(self.name, line, path, message))

    def mapping(
        self, node: yaml.Node | None, path: str, allowed: tuple[str, ...]
    ) -> dict[str, yaml.Node]:
        if node is None or _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, "must be a mapping (key: value lines)")
            return {}
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            key_path = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str) or key not in allowed:
                self.problem(
                    key_node, key_path, f"unknown key (expected one of: {', '.join(allowed)})"
                )
            elif key in out:
                self.problem(key_node, key_path, "given twice (keep one)")
            else:
                out[key] = value_node
        return out

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path, "must be a single value, not a list or mapping")
            return None
        value = self._loader.construct_object(node, deep=True)
        if isinstance(value, str):
            value = self._expand(value, node, path)
        return value

    def _expand(self, value: str, node: yaml.Node, path: str) -> str:
        def sub(match: re.Match[str]) -> str:
            var = match.group(1)
            if var is None:
                return "$"
            if var not in self.env:
                self.problem(
                    node,
                    path,
                    f"environment variable {var} is not set (set it, or write the value)",
                )
                return ""
            return self.env[var]

        return _ENV_RE.sub(sub, value) if "$" in value else value

    def typed(
        self,
        fields: Mapping[str, yaml.Node],
        key: str,
        path: str,
        check: Callable[[Any], _T | None],
        expected: str,
        default: _T,
    ) -> _T:
        node = fields.get(key)
        if node is None:
            return default
        full = f"{path}.{key}" if path else key
        raw = self.scalar(node, full)
        if raw is None and _is_null(node):
            return default
        value = check(raw)
        if value is None:
            self.problem(node, full, f"{raw!r} is not valid ({expected})")
            return default
        return value

    def string(self, fields: Mapping[str, yaml.Node], key: str, path: str, default: str) -> str:
        return self.typed(fields, key, path, _as_str, "a string", default)

    def boolean(self, fields: Mapping[str, yaml.Node], key: str, path: str, default: bool) -> bool:
        return self.typed(
            fields,
            key,
            path,
            lambda v: v if isinstance(v, bool) else None,
            "true or false",
            default,
        )

    def number(
        self,
        fields: Mapping[str, yaml.Node],
        key: str,
        path: str,
        default: float,
        lo: float,
        hi: float,
    ) -> float:
        def check(v: Any) -> float | None:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi
            return float(v) if ok else None

        return self.typed(fields, key, path, check, f"a number from {lo:g} to {hi:g}", default)

    def integer(
        self, fields: Mapping[str, yaml.Node], key: str, path: str, default: int, lo: int, hi: int
    ) -> int:
        def check(v: Any) -> int | None:
            return v if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else None

        return self.typed(fields, key, path, check, f"a whole number from {lo} to {hi}", default)

    def sequence(self, node: yaml.Node | None, path: str) -> list[yaml.Node]:
        if node is None or _is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, path, "must be a list (lines starting with '- ')")
            return []
        return list(node.value)

    # -- sections -------------------------------------------------------------------------

    def config(self, root: yaml.Node | None) -> Config | None:
        if root is None:
            self.problem(None, "", "the file is empty (it needs at least a 'sites:' list)")
            return None
        top = self.mapping(
            root,
            "",
            (
                "sites",
                "cross_domains",
                "analytics",
                "identity",
                "store",
                "tokens",
                "signing",
                "server",
                "admin",
                "proxy",
            ),
        )
        if not isinstance(root, yaml.MappingNode):
            return None
        sites = self.sites(top.get("sites"), root)
        cross = self.cross_domains(top.get("cross_domains"), sites)
        config = Config(
            path=self.name,
            sites=tuple(sites),
            cross_domains=tuple(cross),
            analytics=self.analytics(top.get("analytics")),
            identity=self.identity(top.get("identity")),
            store=self.store(top.get("store")),
            tokens=self.tokens(top.get("tokens")),
            signing=self.signing(top.get("signing"), cross),
            server=self.server(top.get("server")),
            admin=self.admin(top.get("admin")),
            proxy=self.proxy(top.get("proxy")),
        )
        if config.server.port == config.admin.port and config.server.port != 0:
            self.problem(
                top.get("admin") or root,
                "admin.port",
                f"{config.admin.port} is also server.port (use another port)",
            )
        self._check_token_store(config, top, root)
        return config

    def _check_token_store(
        self, config: Config, top: Mapping[str, yaml.Node], root: yaml.Node
    ) -> None:
        """A ``memory://`` store lives inside one process: with several workers a token minted
        by one is unknown to the others, and about half the hand-offs lose the visitor's id
        (the newcomer review measured 15 of 30 with two workers), with no error anywhere."""
        token_hosts = [c.host for c in config.cross_domains if c.strategy == "token"]
        workers = config.server.workers if self.workers is None else self.workers
        if workers <= 1 or not token_hosts:
            return
        if any(p.path.startswith("store.") for p in self.problems):
            return  # an unusable store.url is reported already; the default is not the point
        if parse_store_url(config.store.url).kind != "memory":
            return
        given = f"server.workers is {workers}" if self.workers is None else f"--workers {workers}"
        store = top.get("store")
        where = _child(store, "url") or store
        if where is None and self.workers is None:
            where = _child(top.get("server"), "workers")
        self.problem(
            where or root,
            "store.url",
            f"memory:// keeps tokens inside one process, but {given} and {', '.join(token_hosts)} "
            "use strategy token: a token minted by one worker is unknown to the others, so "
            "visitors lose their id (use a store the workers share, such as "
            "redis://host:6379/0, or run one worker)",
        )

    def sites(self, node: yaml.Node | None, root: yaml.Node) -> list[Site]:
        if node is None:
            self.problem(root, "sites", "missing (list every host the gateway answers for)")
            return []
        items = self.sequence(node, "sites")
        if not items and isinstance(node, yaml.SequenceNode):
            self.problem(node, "sites", "is empty (list at least one site)")
        sites: list[Site] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            path = f"sites[{i}]"
            fields = self.mapping(
                item,
                path,
                (
                    "host",
                    "upstream",
                    "cookie_domain",
                    "preserve_host",
                    "bootstrap",
                    "on_id_conflict",
                    "accept",
                ),
            )
            if not isinstance(item, yaml.MappingNode):
                continue
            host = self._host(fields, "host", path, item)
            upstream = self._upstream(fields, path, item)
            cookie_domain = self._cookie_domain(fields, path, host)
            conflict: IdConflict = self.typed(
                fields,
                "on_id_conflict",
                path,
                _as_conflict,
                "url or cookie",
                "url",
            )
            accept = self._accept(fields.get("accept"), f"{path}.accept")
            if host is None or upstream is None:
                continue
            if host in seen:
                self.problem(
                    fields["host"],
                    f"{path}.host",
                    f"{host} is already sites[{seen[host]}] (each host once)",
                )
                continue
            seen[host] = i
            sites.append(
                Site(
                    host=host,
                    upstream=upstream,
                    cookie_domain=cookie_domain,
                    preserve_host=self.boolean(fields, "preserve_host", path, True),
                    bootstrap=self.boolean(fields, "bootstrap", path, True),
                    on_id_conflict=conflict,
                    accept=accept,
                )
            )
        return sites

    def _host(
        self, fields: Mapping[str, yaml.Node], key: str, path: str, parent: yaml.Node
    ) -> str | None:
        node = fields.get(key)
        if node is None:
            self.problem(parent, f"{path}.{key}", "missing (e.g. www.example.com or *.example.com)")
            return None
        raw = self.scalar(node, f"{path}.{key}")
        host = _config_host(raw) if isinstance(raw, str) else None
        if not host or not (_HOST_RE.fullmatch(host) or _is_ip(host)):
            idn = "" if not isinstance(raw, str) or raw.isascii() else _IDN_ADVICE
            self.problem(
                node,
                f"{path}.{key}",
                f"{raw!r} is not a host name (a name like www.example.com, or *.example.com; "
                f"no scheme, port or path{idn})",
            )
            return None
        return host

    def _upstream(
        self, fields: Mapping[str, yaml.Node], path: str, parent: yaml.Node
    ) -> str | None:
        node = fields.get("upstream")
        if node is None:
            self.problem(parent, f"{path}.upstream", "missing (e.g. http://legacy-www:8000)")
            return None
        raw = self.scalar(node, f"{path}.upstream")
        problem = _upstream_problem(raw)
        if problem:
            self.problem(node, f"{path}.upstream", problem)
            return None
        assert isinstance(raw, str)
        return raw.rstrip("/")

    def _cookie_domain(
        self, fields: Mapping[str, yaml.Node], path: str, host: str | None
    ) -> str | None:
        node = fields.get("cookie_domain")
        if node is None or _is_null(node):
            return None
        raw = self.scalar(node, f"{path}.cookie_domain")
        domain = raw.strip().lower().lstrip(".").rstrip(".") if isinstance(raw, str) else ""
        if not domain or not _HOST_RE.fullmatch(domain) or domain.startswith("*"):
            self.problem(
                node, f"{path}.cookie_domain", f"{raw!r} is not a domain (e.g. example.com)"
            )
            return None
        if host is not None:
            bare = host[2:] if host.startswith("*.") else host
            if bare != domain and not bare.endswith("." + domain):
                self.problem(
                    node,
                    f"{path}.cookie_domain",
                    f"{domain} does not cover the site host {host} (use {host} or a parent "
                    "domain of it)",
                )
                return None
        if _is_public_suffix(domain):
            self.problem(
                node,
                f"{path}.cookie_domain",
                f"{domain} is a public suffix, browsers refuse cookies on it (use the "
                "registrable domain, e.g. example.co.uk)",
            )
            return None
        return domain

    def _accept(self, node: yaml.Node | None, path: str) -> tuple[Strategy, ...]:
        if node is None:
            return STRATEGIES
        out: list[Strategy] = []
        for i, item in enumerate(self.sequence(node, path)):
            value = self.scalar(item, f"{path}[{i}]")
            if value not in STRATEGIES:
                self.problem(
                    item, f"{path}[{i}]", f"{value!r} is not one of {', '.join(STRATEGIES)}"
                )
            elif value not in out:
                out.append(value)
        return tuple(out)

    def cross_domains(self, node: yaml.Node | None, sites: list[Site]) -> list[CrossDomain]:
        if node is None:
            return [CrossDomain(site.host) for site in sites]
        out: list[CrossDomain] = []
        for i, item in enumerate(self.sequence(node, "cross_domains")):
            path = f"cross_domains[{i}]"
            if isinstance(item, yaml.ScalarNode):
                host = self._host({"host": item}, "host", path, item)
                strategy: Strategy = "query"
                path_host = path
            else:
                fields = self.mapping(item, path, ("host", "strategy"))
                if not isinstance(item, yaml.MappingNode):
                    continue
                host = self._host(fields, "host", path, item)
                strategy = self.typed(
                    fields,
                    "strategy",
                    path,
                    lambda v: v if v in STRATEGIES else None,
                    " or ".join(STRATEGIES),
                    "query",
                )
                path_host = f"{path}.host"
            if host is None:
                continue
            if any(c.host == host for c in out):
                self.problem(item, path_host, f"{host} is listed twice (keep one)")
                continue
            out.append(CrossDomain(host, strategy))
        return out

    def analytics(self, node: yaml.Node | None) -> Analytics:
        fields = self.mapping(node, "analytics", ("write_key", "cdn_url"))
        key = self.typed(
            fields,
            "write_key",
            "analytics",
            lambda v: (
                v if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,128}", v) else None
            ),
            "letters, digits, '_' or '-'",
            None,
        )
        cdn = self.typed(
            fields,
            "cdn_url",
            "analytics",
            _as_http_url,
            "an http(s) URL, no query",
            Analytics.cdn_url,
        )
        return Analytics(write_key=key, cdn_url=cdn.rstrip("/"))

    def identity(self, node: yaml.Node | None) -> Identity:
        fields = self.mapping(
            node, "identity", ("cookie_max_age_days", "id_pattern", "uid_max_length", "mint")
        )
        days = self.integer(fields, "cookie_max_age_days", "identity", 365, 1, 400)
        pattern = self.typed(
            fields, "id_pattern", "identity", _as_regex, "a valid regular expression", None
        )
        return Identity(
            cookie_max_age=days * 86400,
            id_pattern=pattern,
            uid_max_length=self.integer(fields, "uid_max_length", "identity", 256, 1, 4096),
            mint=self.boolean(fields, "mint", "identity", True),
        )

    def store(self, node: yaml.Node | None) -> Store:
        fields = self.mapping(node, "store", ("url", "timeout_ms", "key_prefix"))

        def check(v: Any) -> str | None:
            if not isinstance(v, str):
                return None
            try:
                parse_store_url(v)
            except ValueError:
                return None
            return v

        url = self.typed(
            fields, "url", "store", check, "memory://, redis://host:6379/0, rediss://…", "memory://"
        )
        prefix = self.typed(
            fields,
            "key_prefix",
            "store",
            lambda v: v if isinstance(v, str) and _PREFIX_RE.fullmatch(v) else None,
            "1-64 of letters, digits, ':', '_', '-', '.'",
            Store.key_prefix,
        )
        return Store(
            url=url,
            timeout_ms=self.integer(fields, "timeout_ms", "store", 50, 1, 5000),
            key_prefix=prefix,
        )

    def tokens(self, node: yaml.Node | None) -> Tokens:
        fields = self.mapping(node, "tokens", ("ttl_seconds", "single_use"))
        return Tokens(
            ttl=self.integer(fields, "ttl_seconds", "tokens", Tokens.ttl, 10, 600),
            single_use=self.boolean(fields, "single_use", "tokens", False),
        )

    def signing(self, node: yaml.Node | None, cross: list[CrossDomain]) -> Signing:
        fields = self.mapping(node, "signing", ("keys", "lifetime_seconds", "bind_user_agent"))
        keys = self.typed(fields, "keys", "signing", _as_str, "a string", None)
        if keys is not None:
            try:
                parsed = parse_signing_keys(keys)
            except ValueError as exc:
                self.problem(fields["keys"], "signing.keys", str(exc))
                keys = None
            else:
                # A key copied from an example or typed by hand lets anyone who guesses it
                # forge signed links, and so merge any two visitors' identities.
                for i, key in enumerate(parsed, 1):
                    reason = weakness(key.decode())
                    if reason is not None:
                        self.problem(
                            fields["keys"],
                            "signing.keys",
                            f"signing key {i} of {len(parsed)} {reason}, so anyone could "
                            f"forge signed links with it ({GEN_KEY_ADVICE})",
                        )
                        keys = None
        signed = [c.host for c in cross if c.strategy == "signed"]
        if signed and keys is None and "keys" not in fields:
            self.problem(
                node,
                "signing.keys",
                f"missing, but {', '.join(signed)} use strategy signed (set it, e.g. "
                "keys: ${GATEWAY_SIGNING_KEYS})",
            )
        return Signing(
            keys=keys,
            lifetime=self.integer(fields, "lifetime_seconds", "signing", 600, 10, 86400),
            bind_user_agent=self.boolean(fields, "bind_user_agent", "signing", False),
        )

    def server(self, node: yaml.Node | None) -> Server:
        fields = self.mapping(node, "server", ("host", "port", "workers"))
        return Server(
            host=self.string(fields, "host", "server", Server.host),
            port=self.integer(fields, "port", "server", Server.port, 0, 65535),
            workers=self.integer(fields, "workers", "server", 1, 1, 256),
        )

    def admin(self, node: yaml.Node | None) -> Admin:
        fields = self.mapping(node, "admin", ("host", "port", "token"))
        return Admin(
            host=self.string(fields, "host", "admin", Admin.host),
            port=self.integer(fields, "port", "admin", Admin.port, 0, 65535),
            token=self._admin_token(fields.get("token")),
        )

    def _admin_token(self, node: yaml.Node | None) -> str | None:
        """Checked like a signing key, and never echoed: messages end up in logs."""
        if node is None or _is_null(node):
            return None
        before = len(self.problems)
        raw = self.scalar(node, "admin.token")
        if len(self.problems) > before:
            return None  # a missing ${VAR} is reported already
        right = f"at least {MIN_LENGTH} random characters; {GEN_KEY_ADVICE}"
        if not isinstance(raw, str) or not raw:
            problem = f"must be a non-empty string ({right})"
        elif len(raw) < MIN_LENGTH:
            problem = f"is {len(raw)} characters long ({right})"
        elif not _BEARER_RE.fullmatch(raw):
            problem = (
                "holds characters an Authorization: Bearer header cannot carry (letters, "
                f"digits and - . _ ~ + / only; {GEN_KEY_ADVICE})"
            )
        elif (reason := weakness(raw)) is not None:
            problem = f"{reason}, so anyone could guess it ({right})"
        else:
            return raw
        self.problem(node, "admin.token", problem)
        return None

    def proxy(self, node: yaml.Node | None) -> Proxy:
        fields = self.mapping(
            node,
            "proxy",
            (
                "connect_timeout",
                "read_timeout",
                "pool_size",
                "pool_size_per_host",
                "pool_wait_timeout",
                "send_timeout",
                "websocket_max_message",
                "keepalive_timeout",
                "trusted_proxies",
                "drain_timeout",
                "max_header_size",
                "client_idle_timeout",
                "max_decoded_html",
            ),
        )
        trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for i, item in enumerate(
            self.sequence(fields.get("trusted_proxies"), "proxy.trusted_proxies")
        ):
            value = self.scalar(item, f"proxy.trusted_proxies[{i}]")
            try:
                trusted.append(ipaddress.ip_network(str(value), strict=False))
            except ValueError:
                self.problem(
                    item,
                    f"proxy.trusted_proxies[{i}]",
                    f"{value!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)",
                )
        return Proxy(
            connect_timeout=self.number(fields, "connect_timeout", "proxy", 5.0, 0.01, 300),
            read_timeout=self.number(fields, "read_timeout", "proxy", 60.0, 0.01, 3600),
            pool_size=self.integer(fields, "pool_size", "proxy", 512, 1, 100000),
            pool_size_per_host=(
                self.integer(fields, "pool_size_per_host", "proxy", 0, 0, 100000)
                if "pool_size_per_host" in fields
                else None
            ),
            pool_wait_timeout=self.number(
                fields, "pool_wait_timeout", "proxy", Proxy.pool_wait_timeout, 0.01, 3600
            ),
            send_timeout=self.number(
                fields, "send_timeout", "proxy", Proxy.send_timeout, 0.1, 3600
            ),
            websocket_max_message=self.integer(
                fields,
                "websocket_max_message",
                "proxy",
                Proxy.websocket_max_message,
                1024,
                1 << 30,
            ),
            keepalive_timeout=self.number(fields, "keepalive_timeout", "proxy", 30.0, 0, 3600),
            trusted_proxies=tuple(trusted),
            drain_timeout=self.number(fields, "drain_timeout", "proxy", 25.0, 0, 3600),
            max_header_size=self.integer(fields, "max_header_size", "proxy", 16384, 1024, 1 << 20),
            client_idle_timeout=self.number(
                fields, "client_idle_timeout", "proxy", 75.0, 0.1, 86400
            ),
            max_decoded_html=self.integer(
                fields, "max_decoded_html", "proxy", Proxy.max_decoded_html, 65536, 1 << 34
            ),
        )


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value node under ``key`` in a mapping node, for pointing at its line."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return value_node if isinstance(value_node, yaml.Node) else None
    return None


def _as_conflict(v: Any) -> IdConflict | None:
    if v == "url":
        return "url"
    if v == "cookie":
        return "cookie"
    return None


def _as_str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _as_http_url(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    parts = urlsplit(v)
    ok = parts.scheme in ("http", "https") and parts.hostname and not parts.query
    return v if ok and not parts.fragment else None


def _as_regex(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        re.compile(v)
    except re.error:
        return None
    return v


def _upstream_problem(raw: Any) -> str | None:
    right = "an origin such as http://legacy-www:8000"
    if not isinstance(raw, str):
        return f"{raw!r} is not a URL ({right})"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        return f"{raw!r} has an invalid port ({right})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{raw!r} is not an http(s) URL ({right})"
    if parts.username or parts.password:
        return f"{raw!r} must not carry credentials ({right})"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{raw!r} has a path or query; the request path is forwarded as is ({right})"
    del port
    return None


_IDN_ADVICE = (
    "; an internationalized name must be valid IDNA 2008 and read alike by all browsers "
    "(UTS #46 non-transitional; not ẞ, which some read as ss and others as ß)"
)


def _config_host(raw: str) -> str | None:
    """A configured host or ``*.`` pattern the way browsers send it in ``Host``: lower case, no
    trailing dot, an internationalized name in its ``xn--`` form (``pay.großbank.test`` is
    ``pay.xn--grobank-2va.test``, never ``pay.grossbank.test``); None if it cannot be one."""
    text = raw.strip()
    if _is_ip(text):
        return text.lower()
    star = "*." if text.startswith("*.") else ""
    name = domain_to_ascii(text[len(star) :])
    return None if name is None else star + name.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@functools.cache
def _psl() -> PublicSuffixList:
    """The bundled Public Suffix List, parsed once (it is immutable)."""
    return PublicSuffixList()


def _is_public_suffix(domain: str) -> bool:
    return bool(_psl().is_public(domain))
