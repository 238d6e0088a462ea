"""The declarations in gateway/options.py are the one place a key is described: the README's
configuration reference is generated from them, and config/domains.yaml, the commented example,
must show every declared key, no other, each with its declared default and bounds."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import yaml

from gateway.config import Config
from gateway.options import declared, reference_table, walk

from .conftest import REPO

README = REPO / "README.md"
EXAMPLE = REPO / "config" / "domains.yaml"
START = "<!-- config-reference: generated from gateway/options.py by `make docs` -->\n"
END = "<!-- /config-reference -->"

DECLARED = dict(walk(Config))


def test_readme_reference_is_generated_from_the_declarations() -> None:
    """``make docs`` (GATEWAY_UPDATE_DOCS=1) rewrites the table instead of failing."""
    text = README.read_text(encoding="utf-8")
    before, start, rest = text.partition(START)
    current, end, after = rest.partition(END)
    assert start and end, f"README.md lost its markers {START.strip()} … {END}"
    expected = f"\n{reference_table(Config)}\n"  # blank lines keep the markers out of the table
    if current != expected and os.environ.get("GATEWAY_UPDATE_DOCS"):
        README.write_text(before + start + expected + end + after, encoding="utf-8")
        current = expected
    assert current == expected, "README.md's configuration reference is stale: run make docs"


# Keys the example shows commented out ("  # keys: ${GATEWAY_SIGNING_KEYS}"), at a key's
# indentation (up to a site's tls section's); comments further right continue the text of the
# line above.
_COMMENTED_KEY = re.compile(r"^( {0,6})# (?=[a-z_]+: )", re.MULTILINE)


def _example() -> dict[str, Any]:
    text = _COMMENTED_KEY.sub(r"\1", EXAMPLE.read_text(encoding="utf-8"))
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def _shown(example: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every key path the example shows, with the first value it shows for it."""
    for k in declared(Config):
        value = example.get(k.key)
        if k.key not in example:
            continue
        if k.section is not None:
            for key, item in (value or {}).items():
                yield f"{k.key}.{key}", item
        else:
            yield f"{k.key}[]", value
            for entry in value or []:
                for key, item in entry.items() if isinstance(entry, dict) else ():
                    if isinstance(item, dict):  # a section of the item (sites[].tls)
                        for sub, sub_item in item.items():
                            yield f"{k.key}[].{key}.{sub}", sub_item
                    else:
                        yield f"{k.key}[].{key}", item


def test_the_example_shows_every_declared_key_and_no_other() -> None:
    shown = {path for path, _ in _shown(_example())}
    assert sorted(set(DECLARED) - shown) == [], "declared but not in config/domains.yaml"
    assert sorted(shown - set(DECLARED)) == [], "in config/domains.yaml but not declared"


def test_the_example_shows_each_default() -> None:
    """A key whose default is a value shows that value; one without (None, or required) shows
    an example (a write key, a second site's host)."""
    wrong = {}
    seen = set()
    for path, value in _shown(_example()):
        key = DECLARED.get(path)
        if key is None or path in seen or path.endswith("[]") or key.required:
            continue  # an undeclared key fails the test above
        if key.default is None:
            continue
        seen.add(path)
        if (tuple(value) if isinstance(value, list) else value) != key.file_default:
            wrong[path] = (value, key.file_default)
    assert wrong == {}, "config/domains.yaml value != declared default"


# "  ttl_seconds: 300    # how long a token can be exchanged (10-600)"
_RANGE = re.compile(r"^ {2}#? ?([a-z_]+): .*#.*\((\d+)-(\d+)\)", re.MULTILINE)
_SECTION = re.compile(r"^([a-z_]+):", re.MULTILINE)


def test_ranges_the_example_states_are_the_declared_bounds() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    sections = [(m.start(), m.group(1)) for m in _SECTION.finditer(text)]
    stated = {}
    for m in _RANGE.finditer(text):
        section = max((s for s in sections if s[0] < m.start()), default=(0, ""))[1]
        stated[f"{section}.{m.group(1)}"] = (int(m.group(2)), int(m.group(3)))
    assert stated, "the example states no range any more; drop this test or the regex is wrong"
    for path, (lo, hi) in stated.items():
        key = DECLARED[path]
        assert (lo, hi) == (key.option.min, key.option.max), path


def test_every_key_has_help() -> None:
    assert [path for path, key in DECLARED.items() if not key.option.help] == []
