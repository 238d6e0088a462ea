"""Tokens, token records, signing keys and signed links: tables for every rule, hypothesis for
the round trips and for "no single-character change gets through"."""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.identity import (
    DEFAULT_ID_PATTERN,
    decorate_url,
    split_identity_params,
)
from gateway.options import Signing
from gateway.params import AID_PARAM, EXP_PARAM, SIG_PARAM, TOKEN_PARAM, UID_PARAM
from gateway.strategies import (
    CLOCK_SKEW,
    SigningKeys,
    TokenRecord,
    new_token,
    sign_params,
    signed_origin,
    token_refusal,
    valid_token_syntax,
    verify_signed,
)

KEY_A = "k3Y-a_0123456789abcdefghijklmnopqrstuvwxyzAB"
KEY_B = "k3Y-b_ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zy"
KEY_C = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
KEYS = SigningKeys.parse(KEY_A)
NOW = 1_700_000_000
EXP = NOW + Signing.lifetime
AID = "5d1c8a4e-3f7b-4c2a-9e8d-1b2c3d4e5f60"
UA = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"
NAMES = (AID_PARAM, UID_PARAM, EXP_PARAM, SIG_PARAM)


def sign(**overrides: object) -> dict[str, str]:
    args: dict[str, object] = {
        "aid": AID,
        "uid": "user@example.com",
        "target_host": "shop.example.net",
        "expires": EXP,
        "keys": KEYS,
        "user_agent": None,
    }
    args.update(overrides)
    return dict(sign_params(**args))  # type: ignore[arg-type]


def verify(params: Mapping[str, str], **overrides: object) -> tuple[object, object, str]:
    args: dict[str, object] = {
        "host": "shop.example.net",
        "now": NOW,
        "keys": KEYS,
        "user_agent": None,
        "bind_user_agent": False,
    }
    args.update(overrides)
    return verify_signed(params, **args)  # type: ignore[arg-type]


# --- Tokens --------------------------------------------------------------------------------------


def test_param_names_are_distinct_and_prefixed() -> None:
    names = {TOKEN_PARAM, SIG_PARAM, EXP_PARAM, AID_PARAM, UID_PARAM}
    assert len(names) == 5 and all(n.startswith("ajs_") for n in names)


def test_new_tokens_are_url_safe_long_and_unique() -> None:
    tokens = {new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    for token in tokens:
        assert len(token) == 32 and re.fullmatch(r"[A-Za-z0-9_-]+", token)
        assert valid_token_syntax(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a" * 21,
        "a" * 65,
        "a" * 31 + "=",
        "a" * 31 + "+",
        "a" * 31 + "/",
        "a" * 31 + ".",
        " " + "a" * 31,
        "a" * 31 + "\n",
        "a" * 31 + "é",
        "a" * 31 + "٣",  # a non-ASCII digit
        "a" * 31 + "\x00",
    ],
)
def test_token_syntax_refusals(token: str) -> None:
    assert not valid_token_syntax(token)


@pytest.mark.parametrize("token", ["a" * 22, "a" * 64, "A-_z09" * 5 + "xy"])
def test_token_syntax_accepts_22_to_64_url_safe(token: str) -> None:
    assert valid_token_syntax(token)


def test_token_syntax_never_raises_on_non_strings() -> None:
    for value in (None, b"a" * 32, 42, ["a" * 32]):
        assert not valid_token_syntax(value)  # type: ignore[arg-type]


# --- Token records -------------------------------------------------------------------------------

RECORD = TokenRecord(AID, "user 42", 1_700_000_000.25, "www.example.com")


def test_record_bytes_are_compact_json() -> None:
    data = RECORD.to_bytes()
    assert json.loads(data) == {
        "a": AID,
        "u": "user 42",
        "t": 1_700_000_000.25,
        "h": "www.example.com",
    }
    assert b" " not in data.replace(b"user 42", b"")
    assert b'"u"' not in TokenRecord(AID, None, 1.0, "h").to_bytes()


@given(
    aid=st.text(min_size=1),
    uid=st.none() | st.text(min_size=1),
    issued=st.floats(allow_nan=False, allow_infinity=False),
    host=st.text(),
)
def test_record_round_trip(aid: str, uid: str | None, issued: float, host: str) -> None:
    record = TokenRecord(aid, uid, issued, host)
    data = record.to_bytes()
    assert data.isascii()
    assert TokenRecord.from_bytes(data) == record


def test_record_from_integer_time() -> None:
    assert TokenRecord.from_bytes(b'{"a":"x","t":5,"h":"h"}') == TokenRecord("x", None, 5.0, "h")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"[]",
        b'"a"',
        b"{}",
        b'{"a":"x","t":1}',
        b'{"t":1,"h":"h"}',
        b'{"a":"","t":1,"h":"h"}',
        b'{"a":1,"t":1,"h":"h"}',
        b'{"a":"x","t":"1","h":"h"}',
        b'{"a":"x","t":true,"h":"h"}',
        b'{"a":"x","t":null,"h":"h"}',
        b'{"a":"x","t":NaN,"h":"h"}',
        b'{"a":"x","t":Infinity,"h":"h"}',
        b'{"a":"x","t":1e999,"h":"h"}',
        b'{"a":"x","t":1' + b"0" * 400 + b',"h":"h"}',
        b'{"a":"x","t":1' + b"0" * 5000 + b',"h":"h"}',
        b'{"a":"x","t":1,"h":5}',
        b'{"a":"x","t":1,"h":"h","u":""}',
        b'{"a":"x","t":1,"h":"h","u":7}',
        b'{"a":"x","t":1,"h":"h","z":0}',
        b'{"a":"x","t":1,"h":"h"',
        b"\xff\xfe{}",
        b'{"a":"\xff","t":1,"h":"h"}',
        b"[" * 4000 + b"]" * 4000,
        b'{"a":"' + b"x" * 66000 + b'","t":1,"h":"h"}',
    ],
)
def test_record_from_garbage_is_none(data: bytes) -> None:
    assert TokenRecord.from_bytes(data) is None


@given(st.binary(max_size=200))
def test_record_from_arbitrary_bytes_never_raises(data: bytes) -> None:
    result = TokenRecord.from_bytes(data)
    assert result is None or isinstance(result, TokenRecord)


def test_record_from_non_bytes_is_none() -> None:
    assert TokenRecord.from_bytes('{"a":"x","t":1,"h":"h"}') is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":"x","t":1,"h":"h","d":[]}',
        b'{"a":"x","t":1,"h":"h","d":"tok.test"}',
        b'{"a":"x","t":1,"h":"h","d":[""]}',
        b'{"a":"x","t":1,"h":"h","d":[1]}',
        b'{"a":"x","t":1,"h":"h","d":null}',
        b'{"a":"x","t":1,"h":"h","d":["t"],"b":"abc"}',
        b'{"a":"x","t":1,"h":"h","d":["t"],"b":"' + b"A" * 64 + b'"}',
        b'{"a":"x","t":1,"h":"h","d":["t"],"b":5}',
        b'{"a":"x","t":1,"h":"h","d":["t"],"b":null}',
    ],
)
def test_bound_record_garbage_is_none(data: bytes) -> None:
    assert TokenRecord.from_bytes(data) is None


def _ua(user_agent: str) -> str:
    return hashlib.sha256(user_agent.encode()).hexdigest()


def test_bound_record_bytes_and_round_trip() -> None:
    record = TokenRecord.bound(
        anonymous_id=AID,
        user_id=None,
        issued_at=5.0,
        source_host="www.shop.test",
        targets=["tok.partner.test", "*.pay.test"],
        user_agent="UA-A",
    )
    assert json.loads(record.to_bytes()) == {
        "a": AID,
        "t": 5.0,
        "h": "www.shop.test",
        "d": ["tok.partner.test", "*.pay.test"],
        "b": _ua("UA-A"),
    }
    assert TokenRecord.from_bytes(record.to_bytes()) == record
    unbound_ua = TokenRecord.bound(
        anonymous_id=AID,
        user_id=None,
        issued_at=5.0,
        source_host="www.shop.test",
        targets=["tok.partner.test"],
        user_agent=None,
    )
    assert b'"b"' not in unbound_ua.to_bytes()
    assert TokenRecord.from_bytes(unbound_ua.to_bytes()) == unbound_ua
    with pytest.raises(ValueError, match="at least one target"):
        TokenRecord.bound(
            anonymous_id=AID,
            user_id=None,
            issued_at=5.0,
            source_host="www.shop.test",
            targets=[],
            user_agent=None,
        )


@given(
    targets=st.lists(st.text(min_size=1), min_size=1, max_size=4),
    user_agent=st.none() | st.text(),
)
def test_bound_record_round_trip(targets: list[str], user_agent: str | None) -> None:
    record = TokenRecord.bound(
        anonymous_id=AID,
        user_id="u",
        issued_at=1.5,
        source_host="h",
        targets=targets,
        user_agent=user_agent,
    )
    assert TokenRecord.from_bytes(record.to_bytes()) == record


def test_record_from_before_binding_is_read_unbound() -> None:
    """Rolling upgrades: records written by gateways from before tokens were bound."""
    record = TokenRecord.from_bytes(b'{"a":"x","t":5,"h":"www.shop.test"}')
    assert record == TokenRecord("x", None, 5.0, "www.shop.test")
    assert record is not None and record.targets is None and record.user_agent_hash is None


def _minted(targets: tuple[str, ...] = ("tok.partner.test",), ua: str | None = None) -> TokenRecord:
    return TokenRecord.bound(
        anonymous_id=AID,
        user_id="alice",
        issued_at=NOW,
        source_host="www.shop.test",
        targets=targets,
        user_agent=ua,
    )


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("tok.partner.test", None),
        ("TOK.Partner.test.", None),
        # F9 of the security review: every other site of the fleet exchanged it.
        ("checkout.pay.test", "wrong_target"),
        ("www.shop.test", "wrong_target"),
        ("strict.shop.test", "wrong_target"),
        ("sig.partner.test", "wrong_target"),
        ("partner.test", "wrong_target"),
        ("a.tok.partner.test", "wrong_target"),
        ("tok.partner.test.evil.test", "wrong_target"),
        ("", "wrong_target"),
    ],
)
def test_token_is_exchanged_only_at_its_target(host: str, expected: str | None) -> None:
    assert token_refusal(_minted(), host=host, user_agent="UA", bind_user_agent=False) == expected


def test_token_for_a_wildcard_target() -> None:
    record = _minted(("*.partner.test", "checkout.pay.test"))
    for host in ("a.partner.test", "a.b.partner.test", "checkout.pay.test"):
        assert token_refusal(record, host=host, user_agent=None, bind_user_agent=False) is None
    for host in ("partner.test", "pay.test", "www.shop.test"):
        refusal = token_refusal(record, host=host, user_agent=None, bind_user_agent=False)
        assert refusal == "wrong_target", host
    # Never on the page's own host, even where a pattern covers it.
    mine = TokenRecord.bound(
        anonymous_id=AID,
        user_id=None,
        issued_at=NOW,
        source_host="www.partner.test",
        targets=["*.partner.test"],
        user_agent=None,
    )
    refusal = token_refusal(mine, host="www.partner.test", user_agent=None, bind_user_agent=False)
    assert refusal == "wrong_target"


@pytest.mark.parametrize("bind", [True, False])
def test_token_bound_to_a_browser(bind: bool) -> None:
    record = _minted(ua="UA-A")
    host = "tok.partner.test"
    assert token_refusal(record, host=host, user_agent="UA-A", bind_user_agent=bind) is None
    for other in ("UA-B", "UA-A ", "", None):
        refusal = token_refusal(record, host=host, user_agent=other, bind_user_agent=bind)
        assert refusal == "wrong_browser", other
    # The wrong site is refused as such whatever the browser.
    refusal = token_refusal(record, host="www.shop.test", user_agent="UA-B", bind_user_agent=bind)
    assert refusal == "wrong_target"


def test_token_minted_without_user_agent_header() -> None:
    record = _minted(ua="")
    host = "tok.partner.test"
    assert token_refusal(record, host=host, user_agent=None, bind_user_agent=True) is None
    refusal = token_refusal(record, host=host, user_agent="UA", bind_user_agent=True)
    assert refusal == "wrong_browser"


def test_unbound_tokens_where_binding_is_required() -> None:
    legacy = TokenRecord(AID, None, NOW, "www.shop.test")
    for record in (_minted(), legacy):
        args = {"host": "tok.partner.test", "user_agent": "UA-A"}
        assert token_refusal(record, **args, bind_user_agent=True) == "wrong_browser"
        assert token_refusal(record, **args, bind_user_agent=False) is None
    # A record from before binding still is no good at the page's own host.
    refusal = token_refusal(legacy, host="www.shop.test", user_agent="UA", bind_user_agent=False)
    assert refusal == "wrong_target"


# --- Signing keys --------------------------------------------------------------------------------


def test_keys_parse_first_signs_all_verify() -> None:
    keys = SigningKeys.parse(f" {KEY_A} ,{KEY_B},\t{KEY_C} ")
    assert keys.signing_key == KEY_A.encode()
    assert keys.all == (KEY_A.encode(), KEY_B.encode(), KEY_C.encode())


def test_keys_repr_hides_material() -> None:
    assert KEY_A not in repr(KEYS) and KEY_A not in str(KEYS)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no signing keys"),
        ("   ", "no signing keys"),
        (f"{KEY_A},,{KEY_B}", "key 2 of 3 is empty"),
        (f"{KEY_A},", "key 2 of 2 is empty"),
        ("short-key-0123456789", "key 1 of 1 is 20 characters long"),
        (f"{KEY_A},{'x' * 31}", "key 2 of 2 is 31 characters"),
        ("changeme" * 5, "placeholder"),
        ("a" * 64, "placeholder"),
        (KEY_A[:20] + " " + KEY_A[20:], "printable ASCII"),
        (KEY_A + "é", "printable ASCII"),
        (KEY_A + "\x00", "printable ASCII"),
    ],
)
def test_keys_refused_with_clear_message_that_never_echoes_them(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        SigningKeys.parse(value)
    text = str(info.value)
    assert "python -m gateway gen-key" in text or "commas" in text
    for part in value.split(","):
        if len(part.strip()) >= 8:
            assert part.strip() not in text


def test_keys_direct_construction_is_checked_too() -> None:
    with pytest.raises(ValueError, match="no signing keys"):
        SigningKeys(())
    with pytest.raises(ValueError, match="at least 32"):
        SigningKeys((b"0123456789",))


@pytest.mark.parametrize(
    "key",
    [
        KEY_C,
        "dGhpcyBpcyBhIGJhc2U2NCBrZXkgb2YgbW9yZSB0aGFuIDMyIGJ5dGVz",
        "correct-horse-battery-staple-XYZ",
    ],
)
def test_keys_any_encoding_is_the_literal_text(key: str) -> None:
    assert SigningKeys.parse(key).signing_key == key.encode("ascii")


# --- Signed links: acceptance --------------------------------------------------------------------


def test_signed_params_shape() -> None:
    params = sign_params(
        aid=AID, uid="u1", target_host="shop.example.net", expires=EXP, keys=KEYS, user_agent=None
    )
    assert [name for name, _ in params] == [AID_PARAM, UID_PARAM, EXP_PARAM, SIG_PARAM]
    sig = dict(params)[SIG_PARAM]
    assert re.fullmatch(r"v1\.[A-Za-z0-9_-]{43}", sig)
    assert dict(params)[EXP_PARAM] == str(EXP)
    no_uid = sign(uid=None)
    assert UID_PARAM not in no_uid
    assert sign(user_agent=UA)[SIG_PARAM].startswith("v1ua.")


def test_signing_is_deterministic_and_key_dependent() -> None:
    assert sign() == sign()
    assert sign()[SIG_PARAM] != sign(keys=SigningKeys.parse(KEY_B))[SIG_PARAM]


def test_round_trip_plain_with_and_without_uid() -> None:
    assert verify(sign()) == (AID, "user@example.com", "ok")
    assert verify(sign(uid=None)) == (AID, None, "ok")


@pytest.mark.parametrize(
    "host",
    [
        "shop.example.net",
        "SHOP.Example.NET",
        "shop.example.net:8443",
        "shop.example.net.",
        " shop.example.net ",
    ],
)
def test_host_is_compared_without_case_port_or_trailing_dot(host: str) -> None:
    assert verify(sign(target_host="Shop.Example.Net:443"), host=host)[2] == "ok"


@pytest.mark.parametrize("host", ["[::1]:8080", "[::1]", "::1"])
def test_ipv6_hosts(host: str) -> None:
    assert verify(sign(target_host="[::1]"), host=host)[2] == "ok"


def test_ua_bound_round_trip() -> None:
    params = sign(user_agent=UA)
    assert verify(params, user_agent=UA, bind_user_agent=True)[2] == "ok"
    # A bound link is checked against the UA even where binding is not required.
    assert verify(params, user_agent=UA, bind_user_agent=False)[2] == "ok"


def test_empty_user_agent_is_a_binding_like_any_other() -> None:
    params = sign(user_agent="")
    assert verify(params, user_agent=None, bind_user_agent=True)[2] == "ok"
    assert verify(params, user_agent="x", bind_user_agent=True)[2] == "bad_signature"


def test_rotation_old_key_still_verifies_until_dropped() -> None:
    old = sign(keys=SigningKeys.parse(KEY_A))
    rotated = SigningKeys.parse(f"{KEY_B},{KEY_A}")
    assert verify(old, keys=rotated)[2] == "ok"
    assert verify(old, keys=SigningKeys.parse(f"{KEY_B},{KEY_C}"))[2] == "bad_signature"
    assert verify(sign(keys=rotated), keys=SigningKeys.parse(KEY_B))[2] == "ok"


def test_survives_the_wire() -> None:
    uid = "Zoë & co=1?#/+"
    url = decorate_url(
        "https://shop.example.net/p?x=1#top",
        sign_params(
            aid=AID, uid=uid, target_host="shop.example.net", expires=EXP, keys=KEYS, user_agent=UA
        ),
    )
    query = url.partition("?")[2].partition("#")[0]
    rest, found = split_identity_params(query, set(NAMES))
    assert rest == "x=1"
    assert verify(found, user_agent=UA, bind_user_agent=True) == (AID, uid, "ok")


# --- Signed links: refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [{}, {AID_PARAM: AID}, {AID_PARAM: AID, EXP_PARAM: str(EXP)}, {"ajs_token": "x" * 32}],
)
def test_missing(params: dict[str, str]) -> None:
    assert verify(params) == (None, None, "missing")


def _with(**changes: str | None) -> dict[str, str]:
    params = sign()
    for name, value in changes.items():
        key = {"aid": AID_PARAM, "uid": UID_PARAM, "exp": EXP_PARAM, "sig": SIG_PARAM}[name]
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return params


MAC = sign()[SIG_PARAM].partition(".")[2]


@pytest.mark.parametrize(
    "params",
    [
        _with(aid=None),
        _with(aid=""),
        _with(aid="x" * 5000),
        _with(uid=""),
        _with(uid="u" * 5000),
        _with(exp=None),
        _with(exp=""),
        _with(exp="0"),
        _with(exp="0" + str(EXP)),
        _with(exp="-" + str(EXP)),
        _with(exp="+" + str(EXP)),
        _with(exp=" " + str(EXP)),
        _with(exp=str(EXP) + ".0"),
        _with(exp="1.7e9"),
        _with(exp="１７００００００６００"),
        _with(exp="9" * 13),
        _with(exp=str(NOW + Signing.lifetime + CLOCK_SKEW + 1)),
        _with(sig=""),
        _with(sig=MAC),
        _with(sig="v2." + MAC),
        _with(sig="V1." + MAC),
        _with(sig="v1:" + MAC),
        _with(sig="v1." + MAC[:-1]),
        _with(sig="v1." + MAC + "A"),
        _with(sig="v1." + MAC + "="),
        _with(sig="v1." + MAC[:-1] + "+"),
        _with(sig="v1." + MAC[:-1] + "/"),
        _with(sig="v1. " + MAC[1:]),
        _with(sig="v1." + MAC[:-1] + "é"),
    ],
)
def test_malformed(params: dict[str, str]) -> None:
    assert verify(params) == (None, None, "malformed")


def test_far_future_refused_even_when_authentic() -> None:
    far = NOW + Signing.lifetime + CLOCK_SKEW + 1
    assert verify(sign(expires=far)) == (None, None, "malformed")
    assert verify(sign(expires=far - 1))[2] == "ok"
    assert verify(sign(expires=NOW + 3600), max_lifetime=3600)[2] == "ok"


@pytest.mark.parametrize("now", [EXP, EXP + 1, EXP + 10**6])
def test_expired(now: int) -> None:
    assert verify(sign(), now=now) == (None, None, "expired")


def test_just_before_expiry_is_ok() -> None:
    assert verify(sign(), now=EXP - 0.001)[2] == "ok"


def test_nan_clock_fails_closed() -> None:
    assert verify(sign(), now=float("nan"))[2] != "ok"


def test_expired_only_reported_for_authentic_links() -> None:
    assert verify(_with(aid="someone-else"), now=EXP + 1)[2] == "bad_signature"


@pytest.mark.parametrize(
    "params",
    [
        _with(aid="6d1c8a4e-3f7b-4c2a-9e8d-1b2c3d4e5f60"),
        _with(aid=AID.upper()),
        _with(uid="admin@example.com"),
        _with(uid=None),
        _with(exp=str(EXP - 1)),
        _with(exp=str(EXP + 1)),
        _with(sig="v1ua." + MAC),
        _with(sig="v1." + ("B" if MAC[0] != "B" else "C") + MAC[1:]),
        {**sign(uid=None), UID_PARAM: "user@example.com"},
    ],
)
def test_tampered_fields(params: dict[str, str]) -> None:
    assert verify(params) == (None, None, "bad_signature")


@pytest.mark.parametrize(
    "host",
    [
        "evil.example.net",
        "shop.example.net.evil.com",
        "example.net",
        "xshop.example.net",
        "",
        "[",
        "shöp.example.net",
    ],
)
def test_wrong_host(host: str) -> None:
    assert verify(sign(), host=host) == (None, None, "bad_signature")


def test_wrong_key() -> None:
    assert verify(sign(), keys=SigningKeys.parse(KEY_B)) == (None, None, "bad_signature")


def test_wrong_browser() -> None:
    params = sign(user_agent=UA)
    for other in (UA + " ", UA.replace("128", "127"), "", None):
        assert verify(params, user_agent=other, bind_user_agent=True)[2] == "bad_signature"
        assert verify(params, user_agent=other, bind_user_agent=False)[2] == "bad_signature"


def test_unbound_link_refused_where_binding_required() -> None:
    assert verify(sign(), user_agent=UA, bind_user_agent=True) == (None, None, "bad_signature")


def test_exhaustive_single_character_mutations() -> None:
    params = sign(user_agent=UA)
    for name, value in params.items():
        for i in range(len(value)):
            for repl in "0aZ-_.%é ":
                if value[i] == repl:
                    continue
                mutated = {**params, name: value[:i] + repl + value[i + 1 :]}
                assert verify(mutated, user_agent=UA, bind_user_agent=True)[2] != "ok", (name, i)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aid": ""},
        {"uid": ""},
        {"target_host": ""},
        {"target_host": "shöp.example.net"},
        {"target_host": "a/b"},
        {"target_host": "[::1"},
        {"expires": 0},
        {"expires": -1},
        {"expires": True},
        {"expires": 1.5},
    ],
)
def test_sign_refuses_arguments_no_gateway_would_accept(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        sign(**kwargs)


# --- Properties ----------------------------------------------------------------------------------

_LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
HOSTS = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
AIDS = st.from_regex(DEFAULT_ID_PATTERN, fullmatch=True)
UIDS = st.none() | st.text(min_size=1, max_size=60)
# User-Agent headers can carry anything, lone surrogates included (surrogateescape decoding).
UAS = st.none() | st.text(st.characters(exclude_categories=()), max_size=80)
KEY_TEXT = st.text(
    alphabet=string.ascii_letters + string.digits + "-_", min_size=32, max_size=64
).filter(lambda k: len(set(k)) >= 10)


@given(aid=AIDS, uid=UIDS, host=HOSTS, lifetime=st.integers(1, 600), ua=UAS, key=KEY_TEXT)
def test_property_round_trip(
    aid: str, uid: str | None, host: str, lifetime: int, ua: str | None, key: str
) -> None:
    keys = SigningKeys.parse(key)
    params = sign_params(
        aid=aid, uid=uid, target_host=host, expires=NOW + lifetime, keys=keys, user_agent=ua
    )
    result = verify_signed(
        dict(params),
        host=host.upper(),
        now=NOW,
        keys=keys,
        user_agent=ua,
        bind_user_agent=ua is not None,
    )
    assert result == (aid, uid, "ok")


@settings(max_examples=300)
@given(data=st.data(), aid=AIDS, uid=UIDS, host=HOSTS, ua=UAS)
def test_property_single_character_mutation_fails(
    data: st.DataObject, aid: str, uid: str | None, host: str, ua: str | None
) -> None:
    params = dict(
        sign_params(aid=aid, uid=uid, target_host=host, expires=EXP, keys=KEYS, user_agent=ua)
    )
    name = data.draw(st.sampled_from(sorted(params)))
    value = params[name]
    i = data.draw(st.integers(0, len(value) - 1))
    repl = data.draw(st.characters(exclude_categories=()).filter(lambda c: c != value[i]))
    params[name] = value[:i] + repl + value[i + 1 :]
    result = verify_signed(
        params, host=host, now=NOW, keys=KEYS, user_agent=ua, bind_user_agent=ua is not None
    )
    assert result[2] != "ok"


@given(aid=AIDS, host=HOSTS, old=KEY_TEXT, new=KEY_TEXT)
def test_property_rotation(aid: str, host: str, old: str, new: str) -> None:
    old_keys, both = SigningKeys.parse(old), SigningKeys.parse(f"{new},{old}")
    new_only = SigningKeys.parse(new)
    params = dict(
        sign_params(
            aid=aid, uid=None, target_host=host, expires=EXP, keys=old_keys, user_agent=None
        )
    )
    common = {"host": host, "now": NOW, "user_agent": None, "bind_user_agent": False}
    assert verify_signed(params, keys=both, **common)[2] == "ok"  # type: ignore[arg-type]
    expected = "ok" if new == old else "bad_signature"
    assert verify_signed(params, keys=new_only, **common)[2] == expected  # type: ignore[arg-type]


@given(
    params=st.dictionaries(
        st.sampled_from(NAMES) | st.text(max_size=8),
        st.text(st.characters(exclude_categories=()), max_size=60)
        | st.sampled_from([sign()[SIG_PARAM], str(EXP), AID]),
    ),
    host=st.text(st.characters(exclude_categories=()), max_size=30),
    ua=UAS,
    bind=st.booleans(),
    now=st.floats(allow_nan=True),
)
def test_property_hostile_input_never_raises(
    params: dict[str, str], host: str, ua: str | None, bind: bool, now: float
) -> None:
    aid, uid, reason = verify_signed(
        params, host=host, now=now, keys=KEYS, user_agent=ua, bind_user_agent=bind
    )
    assert reason in ("missing", "malformed", "expired", "bad_signature")
    assert aid is None and uid is None


# --- Credentials minted for apps, emails and partners --------------------------------------------


def _app_record(targets: tuple[str, ...] = ("tok.partner.test",)) -> TokenRecord:
    return TokenRecord.bound(
        anonymous_id=AID,
        user_id="alice",
        issued_at=NOW,
        source_host="",
        targets=targets,
        user_agent=None,
        origin="app",
    )


def test_app_record_says_where_it_came_from_and_round_trips() -> None:
    record = _app_record()
    assert json.loads(record.to_bytes()) == {
        "a": AID,
        "u": "alice",
        "t": NOW,
        "h": "",
        "d": ["tok.partner.test"],
        "o": "app",
    }
    assert TokenRecord.from_bytes(record.to_bytes()) == record
    # A page's record has no "o", as every record written before had none.
    assert b'"o"' not in _minted().to_bytes()
    assert TokenRecord.from_bytes(_minted().to_bytes()) == _minted()
    assert _minted().origin == "page"


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":"x","t":5,"h":"","d":["t.test"],"o":"page"}',
        b'{"a":"x","t":5,"h":"","d":["t.test"],"o":""}',
        b'{"a":"x","t":5,"h":"","d":["t.test"],"o":null}',
        b'{"a":"x","t":5,"h":"","d":["t.test"],"o":["app"]}',
        # An app's record is never bound to a browser.
        b'{"a":"x","t":5,"h":"","d":["t.test"],"o":"app","b":"' + b"0" * 64 + b'"}',
    ],
)
def test_odd_origins_are_not_ours(data: bytes) -> None:
    assert TokenRecord.from_bytes(data) is None


def test_an_app_record_is_bound_to_its_target_and_to_no_browser() -> None:
    record = _app_record()
    for bind in (False, True):
        for ua in (None, UA, "Another/1"):
            got = token_refusal(
                record, host="tok.partner.test", user_agent=ua, bind_user_agent=bind
            )
            assert got is None
        got = token_refusal(record, host="www.shop.test", user_agent=UA, bind_user_agent=bind)
        assert got == "wrong_target"
    # A page's unbound record is still refused where binding is required.
    page = _minted()
    assert token_refusal(page, host="tok.partner.test", user_agent=UA, bind_user_agent=True) == (
        "wrong_browser"
    )
    with pytest.raises(ValueError, match="no browser"):
        TokenRecord.bound(
            anonymous_id=AID,
            user_id=None,
            issued_at=NOW,
            source_host="",
            targets=["t.test"],
            user_agent=UA,
            origin="app",
        )


def test_an_app_signature_verifies_in_any_browser_and_says_so() -> None:
    app = sign(origin="app")
    assert app[SIG_PARAM].startswith("v1app.")
    for bind in (False, True):
        for ua in (None, UA):
            assert verify(app, user_agent=ua, bind_user_agent=bind) == (
                AID,
                "user@example.com",
                "ok",
            )
    assert signed_origin(app) == "app"
    assert signed_origin(sign()) == "page"
    assert signed_origin(sign(user_agent=UA)) == "page"
    assert signed_origin({}) == "page"
    # The mode is inside the MAC: a page's link cannot be turned into an app's, or back.
    mac = app[SIG_PARAM].partition(".")[2]
    for mode in ("v1", "v1ua"):
        assert verify({**app, SIG_PARAM: f"{mode}.{mac}"})[2] == "bad_signature"
    page_mac = sign()[SIG_PARAM].partition(".")[2]
    assert verify({**sign(), SIG_PARAM: f"v1app.{page_mac}"})[2] == "bad_signature"
    # Still bound to its host and expiry.
    assert verify(app, host="other.example.net")[2] == "bad_signature"
    assert verify(app, now=EXP)[2] == "expired"
    with pytest.raises(ValueError, match="no browser"):
        sign(origin="app", user_agent=UA)
