"""Pure: the names of the URL parameters that carry a visitor's identity between domains.

One list, so that what the gateway reads on arrival (inbound), writes into links (links,
strategies), removes from links it decorates (identity) and from the address bar (the
bootstrap) can never drift apart. See strategies.py for what each form means.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AID_PARAM",
    "EXP_PARAM",
    "IDENTITY_PARAMS",
    "PARAM_PREFIX",
    "SIG_PARAM",
    "TOKEN_PARAM",
    "UID_PARAM",
]

# analytics.js' own query-string names: its query-string feature turns them into
# setAnonymousId and identify.
AID_PARAM: Final = "ajs_aid"
UID_PARAM: Final = "ajs_uid"
# The gateway's own: an opaque token, and a signature with its expiry.
TOKEN_PARAM: Final = "ajs_token"
SIG_PARAM: Final = "ajs_sig"
EXP_PARAM: Final = "ajs_exp"

IDENTITY_PARAMS: Final = (AID_PARAM, UID_PARAM, TOKEN_PARAM, SIG_PARAM, EXP_PARAM)
"""Every parameter that carries identity in a URL: taken out of arriving URLs, replaced in
decorated links, listed to the bootstrap (in this order)."""

PARAM_PREFIX: Final = "ajs_"
"""What every identity parameter, and every parameter analytics.js' query-string feature reads
(``ajs_event``, ``ajs_prop_*``, ``ajs_trait_*``), starts with."""
