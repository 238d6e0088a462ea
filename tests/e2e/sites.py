"""The legacy websites the gateway fronts in the browser tests, and a third-party payment page.

Plain HTML with no analytics code at all: whatever identity a page ends up with comes from
the gateway (decorated links, forms and redirects, the injected bootstrap) and the real
analytics.js it loads.

- ``www.shop-a.test`` (A): a shop with links to B, a checkout that hands over to the payment
  processor, a confirmation page that also takes the processor's POST-back, a sign-in link to
  C, a page whose JavaScript adds a link after load, a page that prefetches its links (as
  quicklink does), a page that navigates to B from a script (no link at all), and forms.
- ``checkout.pay-b.test`` (B): landing pages, a GET search form target and a POST form target
  that answers Post/Redirect/Get (303), as legacy sites do.
- ``auth.id-c.test`` (C): a sign-in form whose POST is answered with ``302`` to the
  cross-domain ``return_to`` URL, and ``/go?to=…``, a plain redirect service.
- ``thirdparty.psp-d.test`` (PSP): NOT behind the gateway. Like payment processors that pass
  merchant parameters through, it sends the visitor back to the ``return`` URL with the
  ``ajs_aid`` it was given (the gateway decorated A's link to it). Like a 3-D Secure page or an
  OIDC ``form_post`` response, it can also send the visitor back with an auto-submitted POST
  form (``/post-back``), a cross-site POST navigation on which the browser withholds A's
  ``SameSite=Lax`` cookies.

Each site records the requests it receives, so tests can check what reached the upstream.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web
from aiohttp.typedefs import Handler

HOST_A = "www.shop-a.test"
HOST_B = "checkout.pay-b.test"
HOST_C = "auth.id-c.test"
HOST_PSP = "thirdparty.psp-d.test"


@dataclass
class Origins:
    """The public origins the browser uses (filled in once the servers are bound)."""

    gateway_port: int = 0
    psp_port: int = 0

    @property
    def a(self) -> str:
        return f"http://{HOST_A}:{self.gateway_port}"

    @property
    def b(self) -> str:
        return f"http://{HOST_B}:{self.gateway_port}"

    @property
    def c(self) -> str:
        return f"http://{HOST_C}:{self.gateway_port}"

    @property
    def psp(self) -> str:
        return f"http://{HOST_PSP}:{self.psp_port}"


@dataclass(frozen=True)
class Seen:
    """One request as an upstream received it."""

    method: str
    path_qs: str
    host: str
    form: dict[str, str]


@dataclass
class Recorder:
    requests: list[Seen] = field(default_factory=list)

    def paths(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path_qs.split("?", 1)[0] == path]


ORIGINS = web.AppKey("origins", Origins)
RECORDER = web.AppKey("recorder", Recorder)


def page(title: str, body: str) -> web.Response:
    """A legacy page: no analytics code; an empty icon so the browser asks for no favicon."""
    text = (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        '<link rel="icon" href="data:,">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{body}\n</body>\n</html>\n"
    )
    return web.Response(text=text, content_type="text/html", charset="utf-8")


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    form: dict[str, str] = {}
    if request.method == "POST":
        form = {k: str(v) for k, v in (await request.post()).items()}
    request.app[RECORDER].requests.append(
        Seen(request.method, request.raw_path, request.host, form)
    )
    return await handler(request)


def _app(origins: Origins, recorder: Recorder) -> web.Application:
    app = web.Application(middlewares=[_record])
    app[ORIGINS] = origins
    app[RECORDER] = recorder
    return app


# --- A: the shop -------------------------------------------------------------------------


async def _a_home(request: web.Request) -> web.Response:
    o = request.app[ORIGINS]
    sign_in = f"{o.c}/login?" + urlencode({"return_to": f"{o.b}/account?welcome=1"})
    return page(
        "Shop A",
        f'<p><a id="to-b" href="{_attr(o.b + "/welcome?from=a")}">Visit pay-b</a></p>\n'
        '<p><a id="to-checkout" href="/checkout">Checkout</a></p>\n'
        f'<p><a id="sign-in" href="{_attr(sign_in)}">Sign in</a></p>',
    )


async def _a_checkout(request: web.Request) -> web.Response:
    o = request.app[ORIGINS]
    pay = f"{o.psp}/pay?" + urlencode(
        {"order": "42", "amount": "19.99", "return": f"{o.a}/confirmation?order=42"}
    )
    return page("Checkout", f'<p><a id="pay" href="{_attr(pay)}">Pay with PSP-D</a></p>')


async def _a_confirmation(request: web.Request) -> web.Response:
    order = request.query.get("order", "?")
    return page("Order confirmed", f'<p id="order">Thank you for order {html.escape(order)}.</p>')


async def _a_dynamic(request: web.Request) -> web.Response:
    o = request.app[ORIGINS]
    # The link exists only in the DOM, added after load: the HTML rewriter never sees it.
    script = (
        "<script>\nwindow.addEventListener('load', function () {\n"
        "  setTimeout(function () {\n"
        "    var a = document.createElement('a');\n"
        "    a.id = 'late';\n"
        f"    a.href = {json.dumps(o.b + '/from-js?via=script')};\n"
        "    a.textContent = 'Added by script';\n"
        "    document.body.appendChild(a);\n"
        "  }, 50);\n"
        "});\n</script>"
    )
    return page("Dynamic", "<p>Links appear below.</p>\n" + script)


async def _a_forms(request: web.Request) -> web.Response:
    o = request.app[ORIGINS]
    return page(
        "Forms",
        f'<form id="search" method="get" action="{_attr(o.b + "/search")}">\n'
        '<input name="q" value="red shoes"><button id="search-go">Search</button>\n</form>\n'
        f'<form id="subscribe" method="post" action="{_attr(o.b + "/subscribe")}">\n'
        '<input name="email" value="visitor@example.test">'
        '<button id="subscribe-go">Subscribe</button>\n</form>',
    )


# An identity parameter someone tampered with, in a link on a page the gateway serves.
TAMPERED_AID = '"><script>alert(document.domain)</script>'


async def _a_promo(request: web.Request) -> web.Response:
    o = request.app[ORIGINS]
    href = f"{o.b}/welcome?" + urlencode({"from": "promo", "ajs_aid": TAMPERED_AID})
    return page("Promo", f'<p><a id="tampered" href="{_attr(href)}">Offer</a></p>')


async def _a_prefetching(request: web.Request) -> web.Response:
    o = request.app[ORIGINS]
    # Like quicklink and similar libraries: once the page has loaded, every link marked for it
    # is prefetched with <link rel=prefetch>, with the href the page has (the gateway's).
    script = (
        "<script>\nwindow.addEventListener('load', function () {\n"
        "  document.querySelectorAll('a[data-prefetch]').forEach(function (a) {\n"
        "    var l = document.createElement('link');\n"
        "    l.rel = 'prefetch';\n"
        "    l.href = a.href;\n"
        "    document.head.appendChild(l);\n"
        "  });\n"
        "});\n</script>"
    )
    href = o.b + "/welcome?from=prefetch"
    return page(
        "Prefetching",
        f'<p><a id="to-b" data-prefetch href="{_attr(href)}">Visit pay-b</a></p>\n' + script,
    )


async def _a_js_nav(request: web.Request) -> web.Response:
    o = request.app[ORIGINS]
    # A navigation made by page JavaScript: no link, so nothing for the rewriter or the
    # bootstrap's click handler to decorate.
    script = (
        "<script>\ndocument.getElementById('go').addEventListener('click', function () {\n"
        f"  location.href = {json.dumps(o.b + '/from-js?via=location')};\n"
        "});\n</script>"
    )
    return page("Script navigation", '<p><button id="go">Go to pay-b</button></p>\n' + script)


def shop_a(origins: Origins, recorder: Recorder) -> web.Application:
    app = _app(origins, recorder)
    app.router.add_get("/", _a_home)
    app.router.add_get("/checkout", _a_checkout)
    app.router.add_get("/confirmation", _a_confirmation)
    app.router.add_post("/confirmation", _a_confirmation)
    app.router.add_get("/dynamic", _a_dynamic)
    app.router.add_get("/forms", _a_forms)
    app.router.add_get("/promo", _a_promo)
    app.router.add_get("/prefetching", _a_prefetching)
    app.router.add_get("/js-nav", _a_js_nav)
    return app


# --- B: the other brand's site -------------------------------------------------------------


def _b_simple(title: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        home_a = request.app[ORIGINS].a + "/"
        return page(
            title,
            f'<p id="where">{html.escape(request.path)}</p>\n'
            f'<p><a id="to-a" href="{_attr(home_a)}">Back to the shop</a></p>',
        )

    return handler


async def _b_search(request: web.Request) -> web.Response:
    q = request.query.get("q", "")
    return page("Search results", f'<p id="q">{html.escape(q)}</p>')


async def _b_subscribe(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/subscribed")


def pay_b(origins: Origins, recorder: Recorder) -> web.Application:
    app = _app(origins, recorder)
    app.router.add_get("/", _b_simple("Pay B"))
    app.router.add_get("/welcome", _b_simple("Welcome to Pay B"))
    app.router.add_get("/account", _b_simple("Your account"))
    app.router.add_get("/from-js", _b_simple("Came from a script link"))
    app.router.add_get("/product/{n}", _b_simple("Product"))
    app.router.add_get("/search", _b_search)
    app.router.add_post("/subscribe", _b_subscribe)
    app.router.add_get("/subscribed", _b_simple("Subscribed"))
    return app


# --- C: the sign-in service ----------------------------------------------------------------


async def _c_login_form(request: web.Request) -> web.Response:
    return_to = request.query.get("return_to", "/")
    return page(
        "Sign in",
        '<form id="login" method="post" action="/login">\n'
        f'<input type="hidden" name="return_to" value="{_attr(return_to)}">\n'
        '<input name="user" value="alice"><button id="login-go">Sign in</button>\n</form>',
    )


async def _c_login(request: web.Request) -> web.Response:
    form = await request.post()
    # The upstream knows nothing of identities: a plain redirect to the return URL.
    raise web.HTTPFound(str(form.get("return_to", "/")))


async def _c_go(request: web.Request) -> web.Response:
    # A plain redirect service ("continue to …"), as single sign-on hubs have.
    raise web.HTTPFound(request.query.get("to", "/"))


def auth_c(origins: Origins, recorder: Recorder) -> web.Application:
    app = _app(origins, recorder)
    app.router.add_get("/login", _c_login_form)
    app.router.add_get("/go", _c_go)
    app.router.add_post("/login", _c_login)
    return app


# --- PSP: a third party, not behind the gateway ---------------------------------------------

_PASSTHROUGH = ("ajs_aid", "ajs_uid")


async def _psp_pay_page(request: web.Request) -> web.Response:
    fields = "".join(
        f'<input type="hidden" name="{_attr(k)}" value="{_attr(v)}">\n'
        for k, v in request.query.items()
    )
    return page(
        "PSP-D payment",
        '<form id="pay" method="post" action="/pay">\n'
        f'{fields}<button id="pay-go">Pay now</button>\n</form>',
    )


async def _psp_pay(request: web.Request) -> web.Response:
    form = await request.post()
    back = urlsplit(str(form.get("return", "")))
    query = parse_qsl(back.query, keep_blank_values=True)
    query += [(k, str(form[k])) for k in _PASSTHROUGH if k in form]
    query.append(("status", "paid"))
    raise web.HTTPSeeOther(urlunsplit(back._replace(query=urlencode(query))))


async def _psp_post_back(request: web.Request) -> web.Response:
    # The form submits itself as soon as it is parsed, as 3-D Secure and form_post pages do.
    back = request.query.get("return", "")
    return page(
        "Returning to the shop",
        f'<form id="back" method="post" action="{_attr(back)}">\n'
        '<input type="hidden" name="status" value="paid">\n</form>\n'
        "<script>document.getElementById('back').submit()</script>",
    )


def psp_d(origins: Origins, recorder: Recorder) -> web.Application:
    app = _app(origins, recorder)
    app.router.add_get("/pay", _psp_pay_page)
    app.router.add_post("/pay", _psp_pay)
    app.router.add_get("/post-back", _psp_post_back)
    return app
