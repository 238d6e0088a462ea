"""gateway.consent: whether a visitor lets the gateway keep an identity, from plain values."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.consent import REFUSALS, effective, refusal
from gateway.options import Consent, ConsentCookie, ConsentOverride

ONETRUST = ConsentCookie("OptanonConsent", "groups=[^&]*C0002:1")
GRANTED = "OptanonConsent=" + quote("isGpcEnabled=0&groups=C0001:1,C0002:1,C0004:0", safe="=&")
DENIED = "OptanonConsent=" + quote("isGpcEnabled=0&groups=C0001:1,C0002:0", safe="=&")


def refused(consent: Consent, *cookies: str, gpc: str | None = None) -> str | None:
    return refusal(consent, sec_gpc=gpc, cookie_headers=list(cookies))


@pytest.mark.parametrize(
    ("consent", "cookies", "gpc", "expected"),
    [
        # Defaults: GPC honoured, nothing else asked.
        (Consent(), (), None, None),
        (Consent(), (), "1", "gpc"),
        (Consent(), (), " 1 ", "gpc"),
        # The specification defines only "1"; anything else is no signal.
        (Consent(), (), "0", None),
        (Consent(), (), "", None),
        (Consent(gpc=False), (), "1", None),
        # A consent cookie: granted by the pattern, denied otherwise, whether required or not.
        (Consent(cookie=ONETRUST), (GRANTED,), None, None),
        (Consent(cookie=ONETRUST), (DENIED,), None, "denied"),
        (Consent(required=True, cookie=ONETRUST), (GRANTED,), None, None),
        (Consent(required=True, cookie=ONETRUST), (DENIED,), None, "denied"),
        # No answer yet: only `required` refuses.
        (Consent(cookie=ONETRUST), (), None, None),
        (Consent(required=True, cookie=ONETRUST), ("other=1",), None, "missing"),
        (Consent(required=True), (), None, "missing"),
        # GPC wins over a cookie that grants.
        (Consent(cookie=ONETRUST), (GRANTED,), "1", "gpc"),
        (Consent(gpc=False, cookie=ONETRUST), (GRANTED,), "1", None),
        # The cookie is found among others, in any Cookie header.
        (Consent(required=True, cookie=ONETRUST), ("a=1", f"b=2; {GRANTED}"), None, None),
    ],
)
def test_refusal(
    consent: Consent, cookies: tuple[str, ...], gpc: str | None, expected: str
) -> None:
    assert refused(consent, *cookies, gpc=gpc) == expected


def test_the_pattern_is_searched_in_the_decoded_value() -> None:
    plain = Consent(required=True, cookie=ConsentCookie("cc", "^yes$"))
    assert refused(plain, "cc=yes") is None
    assert refused(plain, "cc=%79es") is None
    assert refused(plain, "cc=yes-but") == "denied"
    # JSON-quoted, as some consent managers write it.
    assert refused(plain, 'cc="yes"') is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (ConsentOverride(), Consent(gpc=True, required=False, cookie=ONETRUST)),
        (ConsentOverride(required=True), Consent(gpc=True, required=True, cookie=ONETRUST)),
        (ConsentOverride(gpc=False), Consent(gpc=False, required=False, cookie=ONETRUST)),
        (
            ConsentOverride(cookie=ConsentCookie("CookieConsent", "statistics:true")),
            Consent(cookie=ConsentCookie("CookieConsent", "statistics:true")),
        ),
    ],
)
def test_a_site_overrides_key_by_key(override: ConsentOverride, expected: Consent) -> None:
    assert effective(Consent(cookie=ONETRUST), override) == expected


@given(
    st.booleans(),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(["1", "0", "", "?1"])),
    st.lists(st.sampled_from([GRANTED, DENIED, "a=b", "OptanonConsent="]), max_size=3),
)
def test_gpc_always_refuses_and_nothing_else_does_without_a_cookie_rule(
    gpc: bool, required: bool, signal: str | None, cookies: list[str]
) -> None:
    consent = Consent(gpc=gpc, required=required, cookie=ONETRUST)
    reason = refused(consent, *cookies, gpc=signal)
    assert reason is None or reason in REFUSALS
    if gpc and signal == "1":
        assert reason == "gpc"
    elif reason is not None:
        # Otherwise only the consent cookie (or its absence where required) refuses.
        assert reason in ("denied", "missing")
        assert refused(Consent(gpc=gpc, required=required), *cookies, gpc=signal) in (
            None,
            "missing",
        )
