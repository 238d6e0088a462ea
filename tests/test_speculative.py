"""gateway.speculative: which requests fetch a page ahead of (or instead of) a visit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.speculative import KINDS, is_preview_bot, speculative

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"
)


def kind(method: str = "GET", user_agent: str | None = CHROME, **headers: str) -> str | None:
    return speculative(
        method,
        sec_purpose=headers.get("sec_purpose"),
        purpose=headers.get("purpose"),
        x_purpose=headers.get("x_purpose"),
        x_moz=headers.get("x_moz"),
        user_agent=user_agent,
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # Chromium: <link rel=prefetch> and speculation rules; prerender is a parameter.
        ({"sec_purpose": "prefetch"}, "prefetch"),
        ({"sec_purpose": "prefetch;prerender"}, "prefetch"),
        ({"sec_purpose": "prefetch;anonymous-client-ip"}, "prefetch"),
        ({"sec_purpose": " Prefetch ; prerender "}, "prefetch"),
        ({"sec_purpose": "other, prefetch"}, "prefetch"),
        # The legacy header, Safari's and Firefox's.
        ({"purpose": "prefetch"}, "prefetch"),
        ({"purpose": "prerender"}, "prefetch"),
        ({"x_purpose": "preview"}, "prefetch"),
        ({"x_moz": "prefetch"}, "prefetch"),
        ({"x_moz": "Prefetch"}, "prefetch"),
        # Not an announcement.
        ({"sec_purpose": "prefetchx"}, None),
        ({"sec_purpose": ""}, None),
        ({"purpose": "navigate"}, None),
        ({"x_moz": "microsummary"}, None),
        ({}, None),
    ],
)
def test_announced_prefetches(headers: dict[str, str], expected: str | None) -> None:
    assert kind(**headers) == expected


def test_head_is_never_a_visit_and_an_announced_prefetch_wins() -> None:
    assert kind("HEAD") == "head"
    assert kind("HEAD", sec_purpose="prefetch") == "prefetch"
    assert kind("POST") is None


@pytest.mark.parametrize(
    "user_agent",
    [
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Slack-ImgProxy (+https://api.slack.com/robots)",
        "Twitterbot/1.0",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        # iMessage's preview fetcher.
        "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) facebookexternalhit/1.1 "
        "Facebot Twitterbot/1.0",
        "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
        "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
        "WhatsApp/2.23.20.0 A",
        "TelegramBot (like TwitterBot)",
        "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) MicrosoftPreview/2.0 +https://aka.ms/MicrosoftPreview",
        "Pinterestbot/1.0",
        "Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)",
        "Mastodon/4.2.0 (http.rb/5.1.1; +https://mastodon.social/)",
        "Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)",
        "Iframely/1.3.1 (+https://iframely.com/docs/about)",
    ],
)
def test_link_preview_bots(user_agent: str) -> None:
    assert is_preview_bot(user_agent)
    assert kind(user_agent=user_agent) == "preview"


@pytest.mark.parametrize(
    "user_agent",
    [
        CHROME,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        # Words that merely contain a bot's name are not the bot.
        "MyWhatsAppClone/1.0",
        "notslackbotreally",
        "",
    ],
)
def test_browsers_are_visits(user_agent: str) -> None:
    assert not is_preview_bot(user_agent)
    assert kind(user_agent=user_agent) is None
    assert kind(user_agent=None) is None


@given(
    st.sampled_from(["GET", "HEAD", "POST"]),
    st.one_of(st.none(), st.text(max_size=30)),
    st.one_of(st.none(), st.text(max_size=30)),
    st.one_of(st.none(), st.text(max_size=60)),
)
def test_never_raises_and_answers_a_kind(
    method: str, sec_purpose: str | None, purpose: str | None, user_agent: str | None
) -> None:
    found = speculative(
        method,
        sec_purpose=sec_purpose,
        purpose=purpose,
        x_purpose=None,
        x_moz=None,
        user_agent=user_agent,
    )
    assert found is None or found in KINDS
    if method == "HEAD":
        assert found is not None
