"""Config validation: every problem reported at once with file, line and key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

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
    ],
)
def test_single_problems(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.yaml", {})
    assert str(info.value).startswith(message), str(info.value)


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


def test_example_config_documents_every_key() -> None:
    """The commented example mentions every key the loader accepts."""
    import inspect

    from gateway import config as config_module

    text = (REPO / "config" / "domains.yaml").read_text()
    source = inspect.getsource(config_module._Reader)
    import re

    keys = set()
    for group in re.findall(r"\(\s*((?:\"[a-z_]+\",?\s*)+)\)", source):
        keys.update(re.findall(r'"([a-z_]+)"', group))
    keys -= {"url", "cookie"}  # enum values, not keys
    missing = sorted(k for k in keys if not re.search(rf"\b{k}:", text))
    assert not missing, missing
