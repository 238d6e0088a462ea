"""YAML -> validated, frozen configuration.

Every key is declared once, in :mod:`gateway.options` (name, type, default, bounds, help);
this module reads a file against those declarations. The file is read with ``yaml.compose``
rather than ``yaml.safe_load`` so that every value keeps the line it came from: operators get
``file:line: key.path: what is wrong (what would be right)`` for every problem at once, the way
``nginx -t`` answers. Unknown keys are errors, because a typo such as ``cookie_domian`` must not
silently turn a feature off.

Most keys are read generically, their problems worded from their declarations. The rules that
need more than one key, or more than one message, are written out here: sites and their hosts,
upstreams and cookie domains; cross_domains; signing keys and their weakness; the admin token;
trusted proxy CIDRs; upstream TLS (a readable CA file, one setting per upstream); and the
checks across sections (ports, signed targets without keys, a ``memory://`` store with several
workers).

A few settings are valid but weaken something on purpose (``sites[].tls.verify: false``): they
are kept as :attr:`Config.warnings`, which check-config prints and the gateway logs at start.

Strings may reference environment variables as ``${NAME}`` (secrets: write keys, passwords in
Redis URLs, signing keys); ``$$`` stands for a literal ``$``. A missing variable is a problem that
names it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from .firstparty import path_problem, prefix_for
from .hosts import PATTERN, HostIndex, configured_host, hostname, is_public_suffix
from .identity import ANON_COOKIE, USER_COOKIE
from .keys import GEN_KEY_ADVICE, MIN_LENGTH, parse_signing_keys, placeholder, weakness
from .options import (
    STRATEGIES,
    Admin,
    Analytics,
    Consent,
    ConsentCookie,
    ConsentOverride,
    CrossDomain,
    Events,
    FirstParty,
    IdConflict,
    Identity,
    Key,
    Proxy,
    Server,
    Signing,
    Site,
    Store,
    Strategy,
    Tokens,
    UpstreamTLS,
    declared,
    declared_key,
    option,
    worker_count,
)
from .store_url import parse_store_url, redact_url
from .tls import ca_file_problem

__all__ = [
    "STRATEGIES",
    "Admin",
    "Analytics",
    "Config",
    "ConfigError",
    "Consent",
    "ConsentCookie",
    "ConsentOverride",
    "CrossDomain",
    "Events",
    "FirstParty",
    "IdConflict",
    "Identity",
    "Problem",
    "Proxy",
    "Server",
    "Signing",
    "Site",
    "Store",
    "Strategy",
    "Tokens",
    "UpstreamTLS",
    "available_cpus",
    "load_config",
    "parse_config",
]

_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# RFC 6750's b64token: what the credentials of "Authorization: Bearer" may hold.
_BEARER_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# What the bespoke rules' messages say would be right, as the README's reference says it.
_HOST_EXPECTED = declared_key(Site, "host").expected
_UPSTREAM_EXPECTED = declared_key(Site, "upstream").expected
_KEYS_EXPECTED = declared_key(Signing, "keys").expected
_WORKERS_EXPECTED = declared_key(Server, "workers").expected
_FIRST_PARTY_EXPECTED = declared_key(Analytics, "first_party").expected


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the platform has one (which
    is what ``taskset`` or a container's cpuset leaves it), else every CPU of the machine.
    What ``workers: auto`` starts one worker for each of, as nginx's ``worker_processes
    auto`` does."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS has no affinity mask
        return os.cpu_count() or 1


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
class Config:
    """A whole config file; its fields are the file's top-level keys (but ``path``)."""

    path: str = field(metadata={"option": None})  # where it was read from; not a key
    sites: tuple[Site, ...] = field(
        metadata=option(
            "every host the gateway answers for, and its upstream; a `Host` matching no site "
            "gets `421`",
            expected="a list of mappings with at least host and upstream",
            bespoke=True,
        )
    )
    cross_domains: tuple[CrossDomain, ...] = field(
        metadata=option(
            "hosts whose links carry identity; a plain host stands for `{host: …, strategy: "
            "query}`",
            expected="a list of hosts or {host, strategy} mappings",
            default_text="every site host",
            bespoke=True,
        )
    )
    analytics: Analytics = field(default_factory=Analytics)
    events: Events = field(default_factory=Events)
    identity: Identity = field(default_factory=Identity)
    consent: Consent = field(default_factory=Consent)
    store: Store = field(default_factory=Store)
    tokens: Tokens = field(default_factory=Tokens)
    signing: Signing = field(default_factory=Signing)
    server: Server = field(default_factory=Server)
    admin: Admin = field(default_factory=Admin)
    proxy: Proxy = field(default_factory=Proxy)
    # Valid settings that weaken something on purpose; not a key.
    warnings: tuple[Problem, ...] = field(default=(), compare=False, metadata={"option": None})
    _sites: HostIndex[Site] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sites", HostIndex((s.host, s) for s in self.sites))

    def site_for(self, host_header: str | None) -> Site | None:
        """The site for a ``Host`` header value (port ignored, case-insensitive), or None: the
        site of that exact host, else of the most specific ``*.`` pattern that matches it."""
        name = hostname(host_header) if host_header else None
        return None if name is None else self._sites.get(name)

    def summary(self) -> str:
        strategies = sorted({c.strategy for c in self.cross_domains})
        modes = [s.mode for s in self.sites]
        # Sites not fully on are named in the summary: a reload that switches one says so.
        unusual = "".join(
            f" ({m}: {', '.join(s.host for s in self.sites if s.mode == m)})"
            for m in ("observe", "off")
            if m in modes
        )
        warned = f", {len(self.warnings)} WARNING(S)" if self.warnings else ""
        return (
            f"{self.path}: ok: {len(self.sites)} site(s){unusual}, "
            f"{len(self.cross_domains)} cross-domain "
            f"host(s) ({', '.join(strategies) or 'none'}), store {redact_url(self.store.url)}, "
            f"bootstrap {'on' if self.analytics.write_key else 'off'}, "
            f"first-party {self._first_party_summary()}{warned}"
        )

    def _first_party_summary(self) -> str:
        """``off``, or each prefix in use and how many sites serve under it."""
        prefixes: dict[str, int] = {}
        for site in self.sites:
            prefix = prefix_for(self.analytics, site)
            if prefix is not None:
                prefixes[prefix] = prefixes.get(prefix, 0) + 1
        if not prefixes:
            return "off"
        return ", ".join(f"{p} ({n} site(s))" for p, n in prefixes.items())


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
        # In the file's order, whatever order the rules ran in.
        raise ConfigError(sorted(reader.problems, key=lambda p: p.line))
    warnings = tuple(sorted(reader.warnings, key=lambda p: p.line))
    return dataclasses.replace(config, warnings=warnings)


# A bespoke key's reader: its node and path in, its value out (problems reported on the way).
_Rule = Callable[[yaml.Node, str], Any]


class _Reader:
    """Walks the YAML node tree, converting values and collecting problems with line numbers."""

    def __init__(self, name: str, env: Mapping[str, str], workers: int | None = None) -> None:
        self.name = name
        self.env = env
        self.workers = workers
        # Where each site was read: sites[i] and its node, for problems found later.
        self._site_nodes: dict[str, tuple[int, yaml.Node]] = {}
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self._loader = yaml.SafeLoader("")

    def problem(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(Problem(self.name, line, path, message))

    def warning(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.warnings.append(Problem(self.name, line, path, message))

    # -- the generic part: YAML nodes, ${ENV}, declared keys ----------------------------------

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

    def sequence(self, node: yaml.Node | None, path: str) -> list[yaml.Node]:
        if node is None or _is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, path, "must be a list (lines starting with '- ')")
            return []
        return list(node.value)

    def value(self, key: Key, node: yaml.Node, path: str) -> Any:
        """The value of a generically read key: its type and bounds checked as declared, a
        problem worded from the declaration otherwise (and the default)."""
        before = len(self.problems)
        raw = self.scalar(node, path)
        if len(self.problems) > before or (raw is None and _is_null(node)):
            return key.default  # null means the default; other problems are reported
        if (
            not isinstance(raw, str)
            and isinstance(node, yaml.ScalarNode)
            and node.value in key.words
        ):
            # YAML 1.1 reads off, on, yes and no as booleans: a word the key allows is taken
            # as written (``mode: off``), whatever YAML makes of it.
            raw = node.value
        value = key.convert(raw)
        if value is None:
            self.problem(node, path, f"{raw!r} is not valid ({key.expected})")
            return key.default
        return value

    def section(
        self,
        cls: type,
        node: yaml.Node | None,
        path: str,
        rules: Mapping[str, _Rule] | None = None,
    ) -> tuple[dict[str, Any], dict[str, yaml.Node]]:
        """The keys given in the mapping ``node`` of the declared class ``cls``, as keyword
        arguments for it (absent keys are left to its defaults), and the nodes of all of them.
        A bespoke key is read by ``rules[its field name]``, or left to the caller."""
        keys = declared(cls)
        nodes = self.mapping(node, path, tuple(k.key for k in keys))
        values: dict[str, Any] = {}
        for k in keys:
            sub = nodes.get(k.key)
            if sub is None:
                continue
            if not k.option.bespoke:
                values[k.name] = self.value(k, sub, f"{path}.{k.key}")
            elif rules and k.name in rules:
                values[k.name] = rules[k.name](sub, f"{path}.{k.key}")
        return values, nodes

    # -- the file -----------------------------------------------------------------------------

    def config(self, root: yaml.Node | None) -> Config | None:
        if root is None:
            self.problem(None, "", "the file is empty (it needs at least a 'sites:' list)")
            return None
        top = self.mapping(root, "", tuple(k.key for k in declared(Config)))
        if not isinstance(root, yaml.MappingNode):
            return None
        sites = self.sites(top.get("sites"), root)
        cross = self.cross_domains(top.get("cross_domains"), sites)
        rules: dict[str, dict[str, _Rule]] = {
            "analytics": {"first_party": self._global_first_party},
            "signing": {"keys": self._signing_keys},
            "admin": {"token": self._admin_token},
            "server": {"workers": self._workers},
            "proxy": {"trusted_proxies": self._trusted_proxies},
            "consent": {"cookie": self._consent_cookie},
        }
        sections: dict[str, Any] = {}
        for k in declared(Config):
            if k.section is not None:
                values, _ = self.section(k.section, top.get(k.key), k.key, rules.get(k.key))
                sections[k.name] = k.section(**values)
        config = Config(self.name, tuple(sites), tuple(cross), **sections)
        if config.server.port == config.admin.port and config.server.port != 0:
            self.problem(
                top.get("admin") or root,
                "admin.port",
                f"{config.admin.port} is also server.port (use another port)",
            )
        self._check_signing_keys(config, top)
        self._check_token_store(config, top, root)
        self._check_store_password(config, top)
        self._check_events(config, top)
        self._check_shadow_cookie(config, top)
        self._check_consent(config, top)
        self._check_first_party(config, top)
        return config

    def _check_consent(self, config: Config, top: Mapping[str, yaml.Node]) -> None:
        """``required`` needs a cookie that can grant consent, or nobody ever could."""
        if any(p.path.startswith("consent.") or ".consent." in p.path for p in self.problems):
            return  # a refused cookie mapping is reported already
        right = "set consent.cookie, e.g. {name: OptanonConsent, granted: 'groups=[^&]*C0002:1'}"
        if config.consent.required and config.consent.cookie is None:
            node = top.get("consent")
            self.problem(
                _child(node, "required") or node,
                "consent.required",
                f"true, but without a consent cookie no visitor could ever grant consent ({right})",
            )
        for site in config.sites:
            wanted = site.consent.required
            cookie = site.consent.cookie or config.consent.cookie
            if wanted and cookie is None:
                i, item = self._site_nodes[site.host]
                node = _child(item, "consent")
                self.problem(
                    _child(node, "required") or node,
                    f"sites[{i}].consent.required",
                    f"true, but {site.host} has no consent cookie: no visitor could ever grant "
                    f"consent there ({right}, or sites[{i}].consent.cookie)",
                )

    def _check_shadow_cookie(self, config: Config, top: Mapping[str, yaml.Node]) -> None:
        """The server-only copy needs a name of its own: written under analytics.js' name it
        would be an HttpOnly ``ajs_anonymous_id`` that analytics.js could no longer update."""
        name = config.identity.shadow_cookie
        if name in (ANON_COOKIE, USER_COOKIE):
            self.problem(
                _child(top.get("identity"), "shadow_cookie") or top.get("identity"),
                "identity.shadow_cookie",
                f"{name} is analytics.js' own cookie (use a name of the gateway's, such as "
                f"{Identity.shadow_cookie})",
            )

    def _check_first_party(self, config: Config, top: Mapping[str, yaml.Node]) -> None:
        """First-party delivery relays one project's events: without a write key there is
        none to relay."""
        if config.analytics.write_key is not None:
            return
        analytics = top.get("analytics")
        where = _child(analytics, "first_party")
        if config.analytics.first_party is not None:
            self.problem(
                where,
                "analytics.first_party",
                "is on, but analytics.write_key is missing (first-party delivery serves and "
                "relays that write key's project only: set it, or turn first_party off)",
            )
            return
        sites = top.get("sites")
        items = sites.value if isinstance(sites, yaml.SequenceNode) else []
        for i, site in enumerate(config.sites):
            if isinstance(site.first_party, FirstParty):
                item = items[i] if i < len(items) else None
                self.problem(
                    _child(item, "first_party") or item,
                    f"sites[{i}].first_party",
                    "is on, but analytics.write_key is missing (set it, or turn it off)",
                )

    def _check_events(self, config: Config, top: Mapping[str, yaml.Node]) -> None:
        """Events without a write key would all be refused by Segment (or never be sent)."""
        if not config.events.enabled or config.events.write_key is not None:
            return
        if any(p.path == "events.write_key" for p in self.problems):
            return  # given, but refused (or its ${VAR} unset): reported already
        events = top.get("events")
        self.problem(
            _child(events, "enabled") or events,
            "events.write_key",
            "missing, but events.enabled is true (set it, e.g. write_key: ${SEGMENT_WRITE_KEY})",
        )

    def _check_signing_keys(self, config: Config, top: Mapping[str, yaml.Node]) -> None:
        signed = [c.host for c in config.cross_domains if c.strategy == "signed"]
        if not signed or config.signing.keys is not None:
            return
        if any(p.path == "signing.keys" for p in self.problems):
            return  # given, but refused: reported already
        self.problem(
            top.get("signing"),
            "signing.keys",
            f"missing, but {', '.join(signed)} use strategy signed (set it, e.g. "
            "keys: ${GATEWAY_SIGNING_KEYS})",
        )

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

    def _check_store_password(self, config: Config, top: Mapping[str, yaml.Node]) -> None:
        """A placeholder Redis password (deploy/kubernetes/secret.yaml's, say) would work, with
        Redis started on the same value, and be known to anyone who read the example."""
        if any(p.path.startswith("store.") for p in self.problems):
            return
        password = parse_store_url(config.store.url).password
        reason = placeholder(password) if password else None
        if reason is not None:
            self.problem(
                _child(top.get("store"), "url") or top.get("store"),
                "store.url",
                f"the password {reason} (give Redis and the gateway a real one; {GEN_KEY_ADVICE})",
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
        tls_of: dict[tuple[str, int], tuple[int, UpstreamTLS]] = {}
        for i, item in enumerate(items):
            path = f"sites[{i}]"
            values, fields = self.section(
                Site,
                item,
                path,
                {
                    "first_party": self._site_first_party,
                    "tls": self._tls,
                    "consent": self._site_consent,
                },
            )
            if not isinstance(item, yaml.MappingNode):
                continue
            host = self._host(fields, "host", path, item)
            upstream = self._upstream(fields, path, item)
            cookie_domain = self._cookie_domain(fields, path, host)
            accept = self._accept(fields.get("accept"), f"{path}.accept")
            if upstream is not None:
                self._check_tls(values.get("tls"), upstream, fields, item, f"{path}.tls", i, tls_of)
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
            self._site_nodes[host] = (i, item)
            sites.append(Site(host, upstream, cookie_domain, accept=accept, **values))
        return sites

    def _host(
        self, fields: Mapping[str, yaml.Node], key: str, path: str, parent: yaml.Node
    ) -> str | None:
        node = fields.get(key)
        if node is None:
            self.problem(parent, f"{path}.{key}", "missing (e.g. www.example.com or *.example.com)")
            return None
        raw = self.scalar(node, f"{path}.{key}")
        host = configured_host(raw) if isinstance(raw, str) else None
        if host is None:
            idn = "" if not isinstance(raw, str) or raw.isascii() else _IDN_ADVICE
            self.problem(
                node,
                f"{path}.{key}",
                f"{raw!r} is not a host name ({_HOST_EXPECTED}{idn})",
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
        # The scheme in lower case, as the upstream client and the TLS rules compare it.
        scheme, sep, rest = raw.partition("://")
        return scheme.lower() + sep + rest.rstrip("/")

    def _site_consent(self, node: yaml.Node, path: str) -> ConsentOverride:
        values, _ = self.section(ConsentOverride, node, path, {"cookie": self._consent_cookie})
        return ConsentOverride(**values)

    def _consent_cookie(self, node: yaml.Node, path: str) -> ConsentCookie | None:
        """``{name, granted}``, both required; null: no consent cookie."""
        if _is_null(node):
            return None
        before = len(self.problems)
        values, _ = self.section(ConsentCookie, node, path)
        missing = [k.key for k in declared(ConsentCookie) if k.name not in values]
        if isinstance(node, yaml.MappingNode) and len(self.problems) == before and missing:
            self.problem(
                node,
                f"{path}.{missing[0]}",
                "missing (a consent cookie needs both name and granted, e.g. {name: "
                "OptanonConsent, granted: 'groups=[^&]*C0002:1'})",
            )
        if missing or len(self.problems) > before:
            return None
        return ConsentCookie(**values)

    def _tls(self, node: yaml.Node, path: str) -> UpstreamTLS:
        rules: dict[str, _Rule] = {"ca_file": self._ca_file, "server_name": self._server_name}
        values, _ = self.section(UpstreamTLS, node, path, rules)
        return UpstreamTLS(**values)

    def _ca_file(self, node: yaml.Node, path: str) -> str | None:
        if _is_null(node):
            return None
        before = len(self.problems)
        raw = self.scalar(node, path)
        if len(self.problems) > before:
            return None  # a missing ${VAR} is reported already
        if not isinstance(raw, str) or not raw:
            self.problem(node, path, f"{raw!r} is not a file path (e.g. /etc/gateway/ca.pem)")
            return None
        problem = ca_file_problem(raw)
        if problem is not None:
            self.problem(node, path, problem)
            return None
        return raw

    def _server_name(self, node: yaml.Node, path: str) -> str | None:
        if _is_null(node):
            return None
        key = path.rsplit(".", 1)[1]
        name = self._host({key: node}, key, path.rsplit(".", 1)[0], node)
        if name is not None and name.startswith("*."):
            self.problem(
                node,
                path,
                f"{name} is a pattern; a server name is the one name the upstream's certificate "
                "must carry (e.g. legacy.internal)",
            )
            return None
        return name

    def _check_tls(
        self,
        tls: UpstreamTLS | None,
        upstream: str,
        fields: Mapping[str, yaml.Node],
        site: yaml.Node,
        path: str,
        index: int,
        seen: dict[tuple[str, int], tuple[int, UpstreamTLS]],
    ) -> None:
        """``tls`` belongs to an https upstream, and one upstream has one setting: connections
        are pooled per upstream origin, whichever site they serve. A site without ``tls`` has
        the defaults, so it cannot share an upstream with one that weakens them."""
        node = fields.get("tls")
        parts = urlsplit(upstream)
        if parts.scheme != "https":
            if isinstance(node, yaml.MappingNode):
                self.problem(
                    node,
                    path,
                    f"the upstream {upstream} is not https://, so no TLS setting applies (write "
                    "https:// if the upstream speaks TLS, or remove tls)",
                )
            return
        tls = tls or UpstreamTLS()
        origin = ((parts.hostname or "").lower(), parts.port or 443)
        first = seen.setdefault(origin, (index, tls))
        if first[1] != tls:
            self.problem(
                node or site,
                path,
                f"differs from the tls of sites[{first[0]}], which has the same upstream "
                f"{upstream}: connections to one upstream are shared, so give both the same "
                "tls (or name the upstream as its certificate does, and drop server_name)",
            )
        if node is not None and not tls.verify:
            self.warning(
                _child(node, "verify") or node,
                f"{path}.verify",
                f"false: the certificate of {upstream} is not checked, so anyone on the network "
                "path can answer in its name and read the visitors' requests (give the CA with "
                "ca_file instead)",
            )

    def _cookie_domain(
        self, fields: Mapping[str, yaml.Node], path: str, host: str | None
    ) -> str | None:
        node = fields.get("cookie_domain")
        if node is None or _is_null(node):
            return None
        raw = self.scalar(node, f"{path}.cookie_domain")
        domain = raw.strip().lower().lstrip(".").rstrip(".") if isinstance(raw, str) else ""
        if not domain or not PATTERN.fullmatch(domain) or domain.startswith("*"):
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
        if is_public_suffix(domain):
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
            values: dict[str, Any] = {}
            if isinstance(item, yaml.ScalarNode):
                host = self._host({"host": item}, "host", path, item)
                path_host = path
            else:
                values, fields = self.section(CrossDomain, item, path)
                if not isinstance(item, yaml.MappingNode):
                    continue
                host = self._host(fields, "host", path, item)
                path_host = f"{path}.host"
            if host is None:
                continue
            if any(c.host == host for c in out):
                self.problem(item, path_host, f"{host} is listed twice (keep one)")
                continue
            out.append(CrossDomain(host, **values))
        return out

    def _global_first_party(self, node: yaml.Node, path: str) -> FirstParty | None:
        value = self._first_party(node, path)
        return None if value is False else value

    def _site_first_party(self, node: yaml.Node, path: str) -> FirstParty | bool | None:
        return self._first_party(node, path)

    def _first_party(self, node: yaml.Node, path: str) -> FirstParty | Literal[False] | None:
        """``false`` (False), ``true`` (the default path) or ``{path: /…}``; null: unset."""
        if isinstance(node, yaml.MappingNode):
            fields = self.mapping(node, path, ("path",))
            given = fields.get("path")
            if given is None:
                self.problem(node, f"{path}.path", "missing (e.g. {path: /_/shop}, or write true)")
                return None
            raw = self.scalar(given, f"{path}.path")
            problem = path_problem(raw) if isinstance(raw, str) else "is not a path"
            if problem is not None:
                self.problem(given, f"{path}.path", f"{raw!r} {problem}")
                return None
            return FirstParty(raw)
        if _is_null(node):
            return None
        raw = self.scalar(node, path)
        if raw is True:
            return FirstParty()
        if raw is False:
            return False
        self.problem(node, path, f"{raw!r} is not valid ({_FIRST_PARTY_EXPECTED})")
        return None

    def _signing_keys(self, node: yaml.Node, path: str) -> str | None:
        """The raw value (strategies.py parses it again when serving), or None if refused.
        Messages say which key is wrong, never what it is."""
        before = len(self.problems)
        keys = self.scalar(node, path)
        if len(self.problems) > before or (keys is None and _is_null(node)):
            return None
        if not isinstance(keys, str) or not keys:
            self.problem(node, path, f"{keys!r} is not valid ({_KEYS_EXPECTED})")
            return None
        try:
            parsed = parse_signing_keys(keys)
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return None
        # A key copied from an example or typed by hand lets anyone who guesses it forge
        # signed links, and so merge any two visitors' identities.
        refused = False
        for i, key in enumerate(parsed, 1):
            reason = weakness(key.decode())
            if reason is not None:
                self.problem(
                    node,
                    path,
                    f"signing key {i} of {len(parsed)} {reason}, so anyone could forge signed "
                    f"links with it ({GEN_KEY_ADVICE})",
                )
                refused = True
        return None if refused else keys

    def _workers(self, node: yaml.Node, path: str) -> int:
        raw = self.scalar(node, path)
        if raw is None and _is_null(node):
            return Server.workers
        count = worker_count(raw, available_cpus())
        if count is None:
            self.problem(node, path, f"{raw!r} is not valid ({_WORKERS_EXPECTED})")
            return Server.workers
        return count

    def _admin_token(self, node: yaml.Node, path: str) -> str | None:
        """Checked like a signing key, and never echoed: messages end up in logs."""
        if _is_null(node):
            return None
        before = len(self.problems)
        raw = self.scalar(node, path)
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
        self.problem(node, path, problem)
        return None

    def _trusted_proxies(
        self, node: yaml.Node, path: str
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """A list, or one string of comma-separated entries: ``${GATEWAY_TRUSTED_PROXIES}``
        lets a deployment set them from its environment (an empty string is none)."""
        entries: list[tuple[yaml.Node, str, Any]] = []
        if isinstance(node, yaml.ScalarNode) and not _is_null(node):
            before = len(self.problems)
            text = self.scalar(node, path)
            if len(self.problems) > before:
                return ()
            for part in str(text).split(","):
                if part.strip():
                    entries.append((node, path, part.strip()))
        else:
            for i, item in enumerate(self.sequence(node, path)):
                entries.append((item, f"{path}[{i}]", self.scalar(item, f"{path}[{i}]")))
        trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for where, where_path, value in entries:
            try:
                trusted.append(ipaddress.ip_network(str(value), strict=False))
            except ValueError:
                self.problem(
                    where,
                    where_path,
                    f"{value!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)",
                )
        return tuple(trusted)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value node under ``key`` in a mapping node, for pointing at its line."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return value_node if isinstance(value_node, yaml.Node) else None
    return None


def _upstream_problem(raw: Any) -> str | None:
    right = _UPSTREAM_EXPECTED
    if not isinstance(raw, str):
        return f"{raw!r} is not a URL ({right})"
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 (read for the ValueError a bad port raises)
    except ValueError:
        return f"{raw!r} has an invalid port ({right})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{raw!r} is not an http(s) URL ({right})"
    if parts.username or parts.password:
        return f"{raw!r} must not carry credentials ({right})"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{raw!r} has a path or query; the request path is forwarded as is ({right})"
    return None


_IDN_ADVICE = (
    "; an internationalized name must be valid IDNA 2008 and read alike by all browsers "
    "(UTS #46 non-transitional; not ẞ, which some read as ss and others as ß)"
)
