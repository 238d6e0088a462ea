"""Config validation: every problem reported at once with file, line and key path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from gateway.config import (
    Config,
    ConfigError,
    CrossDomain,
    Proxy,
    Site,
    available_cpus,
    load_config,
    parse_config,
)
from gateway.consent import effective
from gateway.keys import generate_key
from gateway.options import (
    Consent,
    ConsentCookie,
    Key,
    UpstreamTLS,
    declared,
    option,
    walk,
    worker_count,
)

from .conftest import REPO

GOOD = """\
sites:
  - host: www.Example.com
    upstream: http://127.0.0.1:8000/
  - host: "*.shop.test"
    upstream: https://shop-legacy:8443
    cookie_domain: .shop.test
cross_domains:
  - www.example.com
  - {host: pay.example-pay.com, strategy: token}
analytics: {write_key: "${KEY}", cdn_url: "https://cdn.example.net/"}
store: {url: "redis://:${PW}@redis:6379/0"}
"""


def test_valid_config_is_normalised() -> None:
    config = parse_config(GOOD, "good.yaml", {"KEY": "wk_123", "PW": "s3cret"})
    assert [s.host for s in config.sites] == ["www.example.com", "*.shop.test"]
    assert config.sites[0].upstream == "http://127.0.0.1:8000"
    assert config.sites[1].cookie_domain == "shop.test"
    assert [(c.host, c.strategy) for c in config.cross_domains] == [
        ("www.example.com", "query"),
        ("pay.example-pay.com", "token"),
    ]
    assert config.analytics.write_key == "wk_123"
    assert config.analytics.cdn_url == "https://cdn.example.net"
    assert config.store.url == "redis://:s3cret@redis:6379/0"
    assert "s3cret" not in config.summary()


@pytest.mark.parametrize(
    ("written", "mode"),
    [
        ("", "active"),
        ("off", "off"),
        ("'off'", "off"),
        ("observe", "observe"),
        ("active", "active"),
    ],
)
def test_site_modes_are_read_as_written(written: str, mode: str) -> None:
    """YAML 1.1 reads a bare ``off`` as false: a word the key allows is taken as written."""
    line = f", mode: {written}" if written else ""
    text = f"sites:\n  - {{host: a.test, upstream: 'http://127.0.0.1:1'{line}}}\n"
    assert parse_config(text, "m.yaml", {}).sites[0].mode == mode


@pytest.mark.parametrize("written", ["false", "no", "on", "paused"])
def test_other_site_modes_are_refused(written: str) -> None:
    text = f"sites:\n  - {{host: a.test, upstream: 'http://127.0.0.1:1', mode: {written}}}\n"
    with pytest.raises(
        ConfigError, match=r"sites\[0\]\.mode: .* is not valid \(active or observe or off\)"
    ):
        parse_config(text, "m.yaml", {})


def test_site_lookup() -> None:
    config = parse_config(GOOD, "good.yaml", {"KEY": "k", "PW": "p"})
    assert config.site_for("WWW.EXAMPLE.COM:8080") is config.sites[0]
    assert config.site_for("www.example.com.") is config.sites[0]
    assert config.site_for("a.b.shop.test") is config.sites[1]
    assert config.site_for("shop.test") is None
    assert config.site_for("evilshop.test") is None
    assert config.site_for("") is None
    assert config.site_for(None) is None


def test_cross_domains_default_to_site_hosts() -> None:
    config = parse_config(
        "sites:\n  - {host: a.test, upstream: 'http://x:1'}\n  - {host: b.test, upstream: 'http://y:2'}\n",
        "f.yaml",
        {},
    )
    assert [c.host for c in config.cross_domains] == ["a.test", "b.test"]


def test_internationalized_hosts_are_read_as_browsers_send_them() -> None:
    """UTS #46 non-transitional, as browsers: ß stays ß (``xn--grobank-2va``), never ss, so
    ``pay.grossbank.test`` and ``pay.großbank.test`` are two hosts (F6 of the security review).
    """
    config = parse_config(
        "sites:\n"
        "  - {host: 'Pay.Großbank.test.', upstream: 'http://x:1'}\n"
        "  - {host: '*.ΛΌΓΟΣ.test', upstream: 'http://x:1'}\n"
        "cross_domains:\n"
        "  - {host: 'pay.großbank.test', strategy: token}\n"
        "  - pay.grossbank.test\n"
        "  - 'checkout\uff0etest'\n",
        "idn.yaml",
        {},
    )
    assert [s.host for s in config.sites] == ["pay.xn--grobank-2va.test", "*.xn--oxapnq6b.test"]
    assert [c.host for c in config.cross_domains] == [
        "pay.xn--grobank-2va.test",
        "pay.grossbank.test",
        "checkout.test",
    ]
    assert config.site_for("pay.xn--grobank-2va.test") is config.sites[0]
    assert config.site_for("pay.grossbank.test") is None
    assert config.site_for("a.xn--oxapnq6b.test") is config.sites[1]


@pytest.mark.parametrize(
    "host", ["pay.groẞbank.test", "a\u200db.test", "xn--zz.test", "pay.gro%C3%9Fbank.test"]
)
def test_hosts_browsers_refuse_or_disagree_on(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"sites: [{{host: '{host}', upstream: 'http://x:1'}}]\n", "bad.yaml", {})
    message = str(info.value)
    assert message.startswith(f"bad.yaml:1: sites[0].host: {host!r} is not a host name"), message
    assert ("read alike by all browsers" in message) == (not host.isascii())


def test_one_host_in_two_spellings_is_listed_twice() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            "sites: [{host: a.test, upstream: 'http://x:1'}]\n"
            "cross_domains: ['pay.großbank.test', 'PAY.XN--GROBANK-2VA.TEST.']\n",
            "bad.yaml",
            {},
        )
    assert "pay.xn--grobank-2va.test is listed twice" in str(info.value)


BAD = """\
sites:
  - host: www.example.com
    upstrem: http://x:1
  - host: http://bad/
    upstream: ftp://x
    cookie_domain: co.uk
  - host: shop.test
    upstream: http://u:1
    cookie_domain: other.test
    preserve_host: maybe
cross_domains:
  - {host: a.example, strategy: tokn}
analytics: {write_key: "${MISSING_KEY}"}
store: {url: "mysql://db"}
proxy: {read_timeout: -1, trusted_proxies: [not-a-cidr]}
extra_section: 1
"""


def test_every_problem_is_reported_with_line_and_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BAD, "bad.yaml", {})
    lines = str(info.value).splitlines()
    expected = [
        "bad.yaml:3: sites[0].upstrem: unknown key",
        "bad.yaml:2: sites[0].upstream: missing",
        "bad.yaml:4: sites[1].host: 'http://bad/' is not a host name",
        "bad.yaml:5: sites[1].upstream: 'ftp://x' is not an http(s) URL",
        "bad.yaml:6: sites[1].cookie_domain: co.uk is a public suffix",
        "bad.yaml:9: sites[2].cookie_domain: other.test does not cover the site host shop.test",
        "bad.yaml:10: sites[2].preserve_host: 'maybe' is not valid (true or false)",
        "bad.yaml:12: cross_domains[0].strategy: 'tokn' is not valid",
        "bad.yaml:13: analytics.write_key: environment variable MISSING_KEY is not set",
        "bad.yaml:14: store.url: 'mysql://db' is not valid",
        "bad.yaml:15: proxy.read_timeout: -1 is not valid (a number from 0.01 to 3600)",
        "bad.yaml:15: proxy.trusted_proxies[0]: 'not-a-cidr' is not an IP address or CIDR",
        "bad.yaml:16: extra_section: unknown key",
    ]
    for prefix in expected:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "bad.yaml:1: the file is empty"),
        ("sites: [", "bad.yaml:1: not valid YAML"),
        ("- a\n- b\n", "bad.yaml:1: must be a mapping"),
        ("sites: []\n", "bad.yaml:1: sites: is empty"),
        ("admin: {port: 9}\n", "bad.yaml:1: sites: missing"),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1'}\n  - {host: A.test, upstream: 'http://y:1'}\n",
            "bad.yaml:3: sites[1].host: a.test is already sites[0]",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://u:p@x:1'}\n",
            "bad.yaml:2: sites[0].upstream: 'http://u:p@x:1' must not carry credentials",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1/base'}\n",
            "bad.yaml:2: sites[0].upstream: 'http://x:1/base' has a path",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1'}\nproxy: {max_decoded_html: 1000}\n",
            "bad.yaml:3: proxy.max_decoded_html: 1000 is not valid (a whole number from 65536 to",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1'}\nidentity: {id_pattern: '('}\n",
            "bad.yaml:3: identity.id_pattern: '(' is not valid (a valid regular expression)",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1'}\n"
            "identity:\n  shadow_cookie: ajs_anonymous_id\n",
            "bad.yaml:4: identity.shadow_cookie: ajs_anonymous_id is analytics.js' own cookie",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1'}\n"
            "identity: {shadow_cookie: 'a b'}\n",
            "bad.yaml:3: identity.shadow_cookie: 'a b' is not valid (1-64 of letters",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1'}\nconsent: {required: true}\n",
            "bad.yaml:3: consent.required: true, but without a consent cookie no visitor could "
            "ever grant consent (set consent.cookie",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1', consent: {required: true}}\n",
            "bad.yaml:2: sites[0].consent.required: true, but a.test has no consent cookie",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1'}\n"
            "consent: {cookie: {name: OptanonConsent}}\n",
            "bad.yaml:3: consent.cookie.granted: missing (a consent cookie needs both name and "
            "granted",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1'}\n"
            "consent: {cookie: {name: 'a;b', granted: x}}\n",
            "bad.yaml:3: consent.cookie.name: 'a;b' is not valid (a cookie name",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1'}\n"
            "consent: {cookie: {name: c, granted: '('}}\n",
            "bad.yaml:3: consent.cookie.granted: '(' is not valid (a valid regular expression)",
        ),
    ],
)
def test_single_problems(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.yaml", {})
    assert str(info.value).startswith(message), str(info.value)


_SITE = "sites:\n  - {host: a.test, upstream: 'http://x:1'}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _SITE + "analytics: {first_party: true}\n",
            "bad.yaml:3: analytics.first_party: is on, but analytics.write_key is missing",
        ),
        (
            "sites:\n  - {host: a.test, upstream: 'http://x:1', first_party: {path: /_/a}}\n",
            "bad.yaml:2: sites[0].first_party: is on, but analytics.write_key is missing",
        ),
        (
            _SITE + "analytics: {write_key: k, first_party: yes please}\n",
            "bad.yaml:3: analytics.first_party: 'yes please' is not valid (false, true, or {path:",
        ),
        (
            _SITE + "analytics: {write_key: k, first_party: {path: /analytics.js}}\n",
            "bad.yaml:3: analytics.first_party.path: '/analytics.js' would serve "
            "/analytics.js/v1/projects/KEY/settings, which block lists refuse",
        ),
        (
            _SITE + "analytics: {write_key: k, first_party: {path: 'a/b'}}\n",
            "bad.yaml:3: analytics.first_party.path: 'a/b' is not a plain path",
        ),
        (
            _SITE + "analytics: {write_key: k, first_party: {}}\n",
            "bad.yaml:3: analytics.first_party.path: missing",
        ),
        (
            _SITE + "analytics: {write_key: k, first_party: {path: /a, paht: /b}}\n",
            "bad.yaml:3: analytics.first_party.paht: unknown key (expected one of: path)",
        ),
        (
            _SITE + "analytics: {write_key: k, api_url: 'ftp://x'}\n",
            "bad.yaml:3: analytics.api_url: 'ftp://x' is not valid (an http(s) URL, no query)",
        ),
    ],
)
def test_first_party_problems(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.yaml", {})
    assert str(info.value).startswith(message), str(info.value)


def test_first_party_forms() -> None:
    from gateway.config import FirstParty

    text = (
        "sites:\n"
        "  - {host: a.test, upstream: 'http://x:1'}\n"
        "  - {host: b.test, upstream: 'http://x:1', first_party: false}\n"
        "  - {host: c.test, upstream: 'http://x:1', first_party: true}\n"
        "  - {host: d.test, upstream: 'http://x:1', first_party: {path: /_/d}}\n"
        "analytics: {write_key: k, first_party: {path: /_/all}, api_url: 'https://e.test/'}\n"
    )
    config = parse_config(text, "ok.yaml", {})
    assert config.analytics.first_party == FirstParty("/_/all")
    assert config.analytics.api_url == "https://e.test"
    assert [s.first_party for s in config.sites] == [None, False, FirstParty(), FirstParty("/_/d")]
    off = parse_config(_SITE + "analytics: {first_party: false}\n", "ok.yaml", {})
    assert off.analytics.first_party is None


def test_dollar_escape_and_unreadable_file(tmp_path: Path) -> None:
    config = parse_config(
        "sites:\n  - {host: a.test, upstream: 'http://x:1'}\nanalytics: {cdn_url: 'https://c.test/$$x'}\n",
        "f.yaml",
        {},
    )
    assert config.analytics.cdn_url == "https://c.test/$x"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read the file" in str(info.value)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=30,
    )


def test_check_config_cli(tmp_path: Path) -> None:
    ok = _cli("check-config", "config/domains.yaml", env={"SEGMENT_WRITE_KEY": "wk"})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\n") == 1 and "ok: 2 site(s)" in ok.stdout
    assert _cli("check-config", "config/demo.yaml").returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = _cli("check-config", str(bad))
    assert result.returncode == 1
    assert f"{bad}:3: sites[0].upstrem: unknown key" in result.stderr
    assert len(result.stderr.strip().splitlines()) >= 13


SIGNED = """\
sites:
  - {host: www.example.com, upstream: 'http://x:1'}
cross_domains:
  - {host: login.example-id.com, strategy: signed}
signing:
  keys: ${GATEWAY_SIGNING_KEYS}
"""


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            # deploy/kubernetes/secret.yaml's committed values
            "REPLACE_ME-new-signing-key-0123456789abcdef,"
            "REPLACE_ME-old-signing-key-fedcba9876543210",
            "signing key 1 of 2 contains the placeholder text 'replace'",
        ),
        (
            # deploy/docker-compose.yml's former fallback
            "local-dev-only-signing-key-CHANGE-ME-0123456789",
            "signing key 1 of 1 contains the placeholder text 'change'",
        ),
        (
            "kN7qW2xZ9pL4vR8tY6uB3mC5dF1gH0jS,0123456789abcdef0123456789abcdef",
            "signing key 2 of 2 has a run of 8",
        ),
        ("Zq8Wm2Xr7Tn4-Vb6Pc3Ld9Hs5-Zq8Wm2Xr7Tn4", "signing key 1 of 1 repeats a stretch"),
    ],
)
def test_placeholder_and_weak_signing_keys_are_refused(keys: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(SIGNED, "f.yaml", {"GATEWAY_SIGNING_KEYS": keys})
    text = str(info.value)
    assert text.startswith(f"f.yaml:6: signing.keys: {message}"), text
    assert "so anyone could forge signed links" in text
    assert text.endswith("(generate one with: python -m gateway gen-key)")
    for key in keys.split(","):
        assert key not in text


def test_gen_key_prints_a_key_the_config_accepts() -> None:
    first, second = _cli("gen-key"), _cli("gen-key")
    assert first.returncode == 0 and first.stderr == ""
    key = first.stdout.strip()
    assert first.stdout == key + "\n" and len(key) == 43
    assert key != second.stdout.strip()
    env = {"GATEWAY_SIGNING_KEYS": f"{key},{second.stdout.strip()}"}
    assert parse_config(SIGNED, "f.yaml", env).signing.keys == env["GATEWAY_SIGNING_KEYS"]


TOKEN_TARGET = """\
sites:
  - {host: www.example.com, upstream: 'http://x:1'}
cross_domains:
  - www.example.com
  - {host: checkout.example-pay.com, strategy: token}
"""


@pytest.mark.parametrize(
    ("text", "workers", "message"),
    [
        (
            TOKEN_TARGET + "store: {url: 'memory://'}\nserver: {workers: 2}\n",
            None,
            "f.yaml:6: store.url: memory:// keeps tokens inside one process, but server.workers "
            "is 2 and checkout.example-pay.com use strategy token",
        ),
        (
            TOKEN_TARGET + "server:\n  workers: 4\n",
            None,
            "f.yaml:7: store.url: memory:// keeps tokens inside one process, but server.workers "
            "is 4",
        ),
        (
            TOKEN_TARGET + "store:\n  timeout_ms: 20\n",
            2,
            "f.yaml:7: store.url: memory:// keeps tokens inside one process, but --workers 2",
        ),
        (TOKEN_TARGET, 3, "f.yaml:1: store.url: memory:// keeps tokens inside one process"),
    ],
)
def test_memory_store_with_token_targets_and_several_workers_is_refused(
    text: str, workers: int | None, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", {}, workers=workers)
    assert len(info.value.problems) == 1, str(info.value)
    assert str(info.value).startswith(message), str(info.value)
    assert str(info.value).endswith(
        "(use a store the workers share, such as redis://host:6379/0, or run one worker)"
    )


@pytest.mark.parametrize(
    ("text", "workers"),
    [
        (TOKEN_TARGET + "server: {workers: 4}\n", 1),  # --workers 1 wins over the file
        (TOKEN_TARGET + "server: {workers: 1}\n", None),
        (TOKEN_TARGET + "store: {url: 'redis://redis:6379/0'}\n", 8),
        ("sites:\n  - {host: a.test, upstream: 'http://x:1'}\nserver: {workers: 4}\n", None),
    ],
)
def test_memory_store_is_fine_in_one_process_or_without_token_targets(
    text: str, workers: int | None
) -> None:
    parse_config(text, "f.yaml", {}, workers=workers)


def test_workers_auto_is_one_per_cpu_this_process_may_use() -> None:
    text = "sites:\n  - {host: a.test, upstream: 'http://x:1'}\nserver: {workers: %s}\n"
    assert parse_config(text % "auto", "f.yaml", {}).server.workers == available_cpus()
    assert available_cpus() == len(os.sched_getaffinity(0))
    assert parse_config(text % "3", "f.yaml", {}).server.workers == 3
    assert parse_config(text % "null", "f.yaml", {}).server.workers == 1
    for bad in ("0", "257", "many", "'4'", "true", "1.5"):
        with pytest.raises(ConfigError) as info:
            parse_config(text % bad, "f.yaml", {})
        assert str(info.value).endswith(
            "server.workers: " + repr(yaml.safe_load(bad)) + " is not valid (a whole number "
            "from 1 to 256, or auto)"
        ), str(info.value)
    assert worker_count("auto", 512) == 256
    assert worker_count("auto", 0) == 1


def test_a_bad_store_url_is_reported_once_not_again_as_memory() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(TOKEN_TARGET + "store: {url: 'mysql://db'}\n", "f.yaml", {}, workers=2)
    assert [p.path for p in info.value.problems] == ["store.url"]
    assert "is not valid" in str(info.value)


def test_check_config_and_serve_refuse_memory_tokens_with_workers(tmp_path: Path) -> None:
    path = tmp_path / "tok.yaml"
    path.write_text(TOKEN_TARGET + "server: {port: 0}\nadmin: {port: 0}\n")
    assert _cli("check-config", str(path)).returncode == 0
    for args in (
        ("check-config", str(path), "--workers", "2"),
        ("serve", "--config", str(path), "--workers", "2"),
    ):
        result = _cli(*args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        # check-config words it for a person; serve in its one start_failed JSON line.
        said = result.stderr if args[0] == "check-config" else _start_failed(result)
        assert (
            f"{path}:1: store.url: memory:// keeps tokens inside one process, but --workers 2"
            in said
        )
    path.write_text(TOKEN_TARGET + "server: {port: 0, workers: 2}\nadmin: {port: 0}\n")
    result = _cli("serve", "--config", str(path))
    assert result.returncode == 1
    assert "but server.workers is 2 and" in _start_failed(result)


def _start_failed(result: subprocess.CompletedProcess[str]) -> str:
    """The problems of serve's start_failed line, the only thing it wrote."""
    assert result.stderr == ""
    [line] = [json.loads(text) for text in result.stdout.splitlines()]
    assert (line["event"], line["level"]) == ("start_failed", "error")
    return "\n".join(line["problems"])


async def test_a_worker_refuses_to_reload_into_memory_tokens(tmp_path: Path) -> None:
    """Workers are started with --workers N, so their reloads are checked for N processes."""
    from gateway.app import Gateway, Overrides

    path = tmp_path / "gw.yaml"
    path.write_text(TOKEN_TARGET + "store: {url: 'redis://127.0.0.1:1/0'}\n")
    overrides = Overrides(workers=2)
    gateway = Gateway(overrides.apply(load_config(path, workers=2)), str(path), overrides)
    try:
        path.write_text(TOKEN_TARGET)
        assert gateway.reload() is False
        assert gateway.state.config.store.url == "redis://127.0.0.1:1/0"
    finally:
        await gateway.drain_and_close()


def test_reading_a_config_loads_neither_redis_nor_the_token_code() -> None:
    """The layering: config (the pure core's reader) checks store URLs and signing keys with
    redis-free helpers, so check-config never imports the store, redis or strategies."""
    text = (
        "sites: [{host: a.test, upstream: 'http://x:1'}]\n"
        "cross_domains: [{host: b.test, strategy: signed}, {host: c.test, strategy: token}]\n"
        "store: {url: 'redis+sentinel://s1:26379/m'}\n"
        f"signing: {{keys: {generate_key()}}}\n"
    )
    code = (
        "import sys; from gateway.config import parse_config; "
        f"parse_config({text!r}, 'f.yaml', {{}}); "
        "print(sorted(m for m in ('redis', 'gateway.store', 'gateway.strategies') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- The generic reader, driven by the declarations in gateway/options.py -----------------------

MINIMAL = "sites: [{host: a.test, upstream: 'http://x:1'}]\n"
SECTIONS = [k for k in declared(Config) if k.section is not None]
NUMBERS = [
    (path, k)
    for path, k in walk(Config)
    if k.base in (int, float) and not k.option.bespoke and "[]" not in path
]


@pytest.mark.parametrize("section", SECTIONS, ids=lambda k: k.key)
@pytest.mark.parametrize("body", ["{}", "", "~"])
def test_an_empty_section_is_the_declared_defaults(section: Key, body: str) -> None:
    config = parse_config(f"{MINIMAL}{section.key}: {body}\n", "f.yaml", {})
    assert section.section is not None
    assert getattr(config, section.name) == section.section()
    assert parse_config(MINIMAL, "f.yaml", {}) == config


def test_a_bare_site_and_cross_domain_are_the_declared_defaults() -> None:
    config = parse_config(f"{MINIMAL}cross_domains: [b.test, {{host: c.test}}]\n", "f.yaml", {})
    assert config.sites == (Site("a.test", "http://x:1"),)
    assert config.cross_domains == (CrossDomain("b.test"), CrossDomain("c.test"))


@pytest.mark.parametrize(("path", "key"), NUMBERS, ids=[p for p, _ in NUMBERS])
def test_numbers_are_checked_and_worded_from_their_declaration(path: str, key: Key) -> None:
    """Each bound is accepted, one step beyond it is refused with the declared range, and a
    number in the file's unit becomes the field's (days become seconds)."""
    section, name = path.split(".")
    lo, hi = key.option.min, key.option.max
    assert lo is not None and hi is not None
    kind, fmt = ("a whole number", ".0f") if key.base is int else ("a number", "g")
    right = f"{kind} from {lo:{fmt}} to {hi:{fmt}}"
    assert key.expected == right
    for edge in (lo, hi):
        value = int(edge) if key.base is int else edge
        config = parse_config(f"{MINIMAL}{section}: {{{name}: {value}}}\n", "f.yaml", {})
        assert getattr(getattr(config, section), key.name) == value * key.option.scale
    for beyond in (lo - 1, hi + 1):
        value = int(beyond) if key.base is int else beyond
        with pytest.raises(ConfigError) as info:
            parse_config(f"{MINIMAL}{section}: {{{name}: {value}}}\n", "f.yaml", {})
        assert str(info.value) == f"f.yaml:2: {path}: {value!r} is not valid ({right})"


def test_null_means_the_default_and_each_problem_is_reported_once() -> None:
    config = parse_config(f"{MINIMAL}proxy: {{pool_size_per_host: ~, read_timeout: ~}}\n", "f", {})
    assert config.proxy == Proxy()
    with pytest.raises(ConfigError) as info:
        parse_config(f"{MINIMAL}analytics: {{write_key: '${{NOPE}}'}}\n", "f.yaml", {})
    assert str(info.value) == (
        "f.yaml:2: analytics.write_key: environment variable NOPE is not set (set it, or write "
        "the value)"
    )


def test_signing_keys_given_as_null_are_missing() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(SIGNED.replace("${GATEWAY_SIGNING_KEYS}", "~"), "f.yaml", {})
    assert "signing.keys: missing, but login.example-id.com use strategy signed" in str(info.value)


def test_problems_are_listed_in_the_files_order() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BAD, "bad.yaml", {})
    lines = [p.line for p in info.value.problems]
    assert lines == sorted(lines)


def test_a_key_without_a_declaration_is_a_programming_error() -> None:
    @dataclass(frozen=True)
    class Undeclared:
        size: int = 1

    @dataclass(frozen=True)
    class Unbounded:
        size: int = field(default=1, metadata=option("a size"))

    with pytest.raises(TypeError, match="has no option"):
        declared(Undeclared)
    with pytest.raises(TypeError, match="needs min= and max="):
        declared(Unbounded)


# --- Upstream TLS (sites[].tls) and front proxies from the environment -------------------------


@pytest.fixture
def ca_pem(tmp_path: Path) -> str:
    import trustme

    path = tmp_path / "upstream-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def _tls_site(tls: str, upstream: str = "https://10.0.0.7:8443") -> str:
    return f"sites:\n  - host: a.test\n    upstream: {upstream}\n    tls: {tls}\n"


def test_upstream_tls_is_read_and_normalised(ca_pem: str) -> None:
    config = parse_config(
        _tls_site(f"{{ca_file: '{ca_pem}', server_name: Legacy.Internal.}}")
        + "  - {host: b.test, upstream: 'HTTPS://other:443'}\n",
        "f.yaml",
        {},
    )
    first, second = config.sites
    assert (first.tls.verify, first.tls.ca_file, first.tls.server_name) == (
        True,
        ca_pem,
        "legacy.internal",
    )
    assert second.upstream == "https://other:443" and second.tls == UpstreamTLS()
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ("{ca_file: /nonexistent/ca.pem}", "sites[0].tls.ca_file: /nonexistent/ca.pem does not"),
        ("{ca_file: ''}", "sites[0].tls.ca_file: '' is not a file path"),
        ("{server_name: '*.internal'}", "sites[0].tls.server_name: *.internal is a pattern"),
        ("{server_name: 'https://x'}", "sites[0].tls.server_name: 'https://x' is not a host"),
        ("{verify: 'no'}", "sites[0].tls.verify: 'no' is not valid (true or false)"),
        ("{verfy: false}", "sites[0].tls.verfy: unknown key (expected one of: verify, ca_file"),
        ("true", "sites[0].tls: must be a mapping"),
    ],
)
def test_upstream_tls_problems(tls: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_tls_site(tls), "f.yaml", {})
    assert str(info.value).startswith(f"f.yaml:4: {message}"), str(info.value)


def test_a_ca_file_that_is_a_servers_certificate_is_refused(tmp_path: Path) -> None:
    import trustme

    leaf = tmp_path / "server.pem"
    trustme.CA().issue_cert("legacy.internal").cert_chain_pems[0].write_to_path(str(leaf))
    with pytest.raises(ConfigError) as info:
        parse_config(_tls_site(f"{{ca_file: '{leaf}'}}"), "f.yaml", {})
    assert "holds no CA certificate, only a server's own" in str(info.value)


def test_tls_on_a_plain_http_upstream_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_tls_site("{verify: true}", "http://legacy:8000"), "f.yaml", {})
    assert str(info.value).startswith(
        "f.yaml:4: sites[0].tls: the upstream http://legacy:8000 is not https://"
    )


def test_sites_sharing_an_upstream_share_its_tls(ca_pem: str) -> None:
    """Connections are pooled per upstream origin, so two settings for one would be a race."""
    same = (
        _tls_site(f"{{ca_file: '{ca_pem}'}}")
        + "  - host: b.test\n    upstream: https://10.0.0.7:8443/\n"
        + f"    tls: {{ca_file: '{ca_pem}'}}\n"
    )
    assert parse_config(same, "f.yaml", {}).sites[1].tls.ca_file == ca_pem
    differs = (
        _tls_site(f"{{ca_file: '{ca_pem}'}}")
        + "  - host: b.test\n    upstream: https://10.0.0.7:8443\n    tls: {server_name: b}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(differs, "f.yaml", {})
    assert str(info.value).startswith(
        "f.yaml:7: sites[1].tls: differs from the tls of sites[0], which has the same upstream"
    )
    # Another port is another upstream.
    other = differs.replace("10.0.0.7:8443\n    tls: {server", "10.0.0.7:9443\n    tls: {server")
    assert parse_config(other, "f.yaml", {}).sites[1].tls.server_name == "b"
    # A site without tls has the defaults: it must not end up on connections another site
    # made with verify: false, whichever comes first.
    unverified = "  - {host: a.test, upstream: 'https://10.0.0.7:8443', tls: {verify: false}}\n"
    default = "  - {host: b.test, upstream: 'https://10.0.0.7:8443'}\n"
    for sites in (unverified + default, default + unverified):
        with pytest.raises(ConfigError) as info:
            parse_config("sites:\n" + sites, "f.yaml", {})
        assert str(info.value).startswith(
            "f.yaml:3: sites[1].tls: differs from the tls of sites[0]"
        )


def test_verify_false_is_valid_but_a_warning_check_config_prints(tmp_path: Path) -> None:
    text = _tls_site("\n      verify: false\n      server_name: legacy.internal")
    config = parse_config(text, "f.yaml", {})
    (warning,) = config.warnings
    assert (warning.line, warning.path) == (5, "sites[0].tls.verify")
    assert "https://10.0.0.7:8443 is not checked" in warning.message
    assert "1 WARNING(S)" in config.summary()

    path = tmp_path / "unverified.yaml"
    path.write_text(text)
    result = _cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"WARNING: {path}:5: sites[0].tls.verify: false: the ")
    assert "1 WARNING(S)" in result.stdout


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.0/8", ["10.0.0.0/8"]),
        ("10.0.0.0/8, 192.168.0.0/16,fd00::/8", ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]),
        ("", []),
    ],
)
def test_trusted_proxies_from_one_environment_variable(value: str, expected: list[str]) -> None:
    config = parse_config(
        f"{MINIMAL}proxy: {{trusted_proxies: '${{TRUSTED}}'}}\n", "f.yaml", {"TRUSTED": value}
    )
    assert [str(n) for n in config.proxy.trusted_proxies] == expected


def test_a_bad_entry_in_the_trusted_proxies_string_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            f"{MINIMAL}proxy: {{trusted_proxies: '${{TRUSTED}}'}}\n",
            "f.yaml",
            {"TRUSTED": "10.0.0.0/8,REPLACE_ME-ingress-pod-CIDR"},
        )
    assert str(info.value) == (
        "f.yaml:2: proxy.trusted_proxies: 'REPLACE_ME-ingress-pod-CIDR' is not an IP address "
        "or CIDR (e.g. 10.0.0.0/8)"
    )


def test_a_placeholder_redis_password_is_refused_and_not_repeated() -> None:
    text = f"{MINIMAL}store: {{url: 'redis://:${{REDIS_PASSWORD}}@redis:6379/0'}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", {"REDIS_PASSWORD": "REPLACE_ME-redis-password"})
    assert str(info.value) == (
        "f.yaml:2: store.url: the password contains the placeholder text 'replace' (give Redis "
        "and the gateway a real one; generate one with: python -m gateway gen-key)"
    )
    # Only placeholder text: a managed Redis's password has whatever form its provider gives.
    assert parse_config(text, "f.yaml", {"REDIS_PASSWORD": "short-but-real"}).store.url


# --- events: the write key is required once they are enabled ------------------------------------


def test_events_need_a_write_key_when_enabled() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"{MINIMAL}events:\n  enabled: true\n", "f.yaml", {})
    assert str(info.value) == (
        "f.yaml:3: events.write_key: missing, but events.enabled is true (set it, e.g. "
        "write_key: ${SEGMENT_WRITE_KEY})"
    )
    # An unset variable is reported once, as the variable.
    with pytest.raises(ConfigError) as info:
        parse_config(f"{MINIMAL}events: {{enabled: true, write_key: '${{NOPE}}'}}\n", "f", {})
    assert [p.message for p in info.value.problems] == [
        "environment variable NOPE is not set (set it, or write the value)"
    ]
    # Disabled, the key may be absent; given, it is read from the environment.
    assert parse_config(f"{MINIMAL}events: {{enabled: false}}\n", "f", {}).events.write_key is None
    config = parse_config(
        f"{MINIMAL}events: {{enabled: true, write_key: '${{WK}}', endpoint: 'http://c:1/x/'}}\n",
        "f",
        {"WK": "wk_abc"},
    )
    assert (config.events.enabled, config.events.write_key) == (True, "wk_abc")
    assert config.events.endpoint == "http://c:1/x"
    assert "wk_abc" not in repr(config)


def test_consent_is_read_globally_and_overridden_per_site_key_by_key() -> None:
    text = (
        "sites:\n"
        "  - {host: a.test, upstream: 'http://x:1', consent: {required: true}}\n"
        "  - host: b.test\n"
        "    upstream: 'http://x:1'\n"
        "    consent: {gpc: false, cookie: {name: CookieConsent, granted: 'statistics:true'}}\n"
        "  - {host: c.test, upstream: 'http://x:1'}\n"
        "consent: {cookie: {name: OptanonConsent, granted: 'C0002:1'}}\n"
    )
    config = parse_config(text, "f.yaml", {})
    onetrust = ConsentCookie("OptanonConsent", "C0002:1")
    assert config.consent == Consent(gpc=True, required=False, cookie=onetrust)
    a, b, c = (effective(config.consent, site.consent) for site in config.sites)
    assert a == Consent(gpc=True, required=True, cookie=onetrust)
    assert b == Consent(gpc=False, cookie=ConsentCookie("CookieConsent", "statistics:true"))
    assert c == config.consent


def test_events_go_where_analytics_js_sends_by_default() -> None:
    """One key names Segment's tracking API: events.endpoint defaults to analytics.api_url."""
    from gateway.app import _events

    text = f"{MINIMAL}analytics: {{api_url: 'https://events.eu1.segmentapis.com'}}\n"
    assert _events(parse_config(text, "f.yaml", {})).endpoint == (
        "https://events.eu1.segmentapis.com"
    )
    text += "events: {endpoint: 'http://collector:9'}\n"
    assert _events(parse_config(text, "f.yaml", {})).endpoint == "http://collector:9"
