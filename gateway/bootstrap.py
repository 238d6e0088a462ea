"""The analytics.js bootstrap the gateway injects into HTML pages (pure: values in, bytes out).

The script does the following, written from scratch for this gateway:

0. Before anything else it takes every ``ajs_`` parameter out of the address bar with
   ``history.replaceState``: analytics.js' query-string feature turns ``ajs_aid`` into
   ``setAnonymousId``, ``ajs_uid`` (+ ``ajs_trait_*``) into ``identify`` and ``ajs_event``
   (+ ``ajs_prop_*``) into ``track``, from the query or, when there is none, from the query-like
   tail of the fragment (after its last ``?``). The gateway handles identity in URLs itself,
   under the site's ``accept`` rules, and redirects it away on GET and HEAD; but a page answered
   to a POST (an attacker's cross-site form), events (which the gateway does not take) and a
   fragment (which it never sees) would otherwise reach the library and plant an id, a user id
   or an event. Everything else in the URL keeps its text and order, the fragment included, and
   ``history.state`` is kept; a URL without such parameters is left alone. The library it loads
   itself also gets ``useQueryString: false``; a page's own snippet keeps its options, so for it
   the clean address bar is the protection.
1. It makes sure ``window.analytics`` exists as a queue: an array whose methods (``track``,
   ``page``, ``setAnonymousId``, ...) push ``[method, ...args]`` onto it, with ``methods`` and
   ``factory`` as the standalone analytics.js build expects. The library replays that array
   when it loads.
2. It puts ``setAnonymousId(<restored id>)`` at the *front* of the queue, whoever created the
   queue, so the restored id is set before anything is sent and wins even over a stale id that
   an older analytics.js would read from localStorage. If the library is already running it calls
   ``setAnonymousId`` directly. No ``identify``: that sends an event, and the user id already
   reaches analytics.js through the ``ajs_user_id`` cookie the gateway sets; the embedded user id
   is only used for decorating links.
3. It loads analytics.js only if the page does not. Segment's snippet does nothing when it finds
   ``analytics.invoked`` set (it logs "snippet included twice"), so we must not set it early. We
   only fill in ``_writeKey``/``_cdn`` where unset and wait for DOMContentLoaded; by then any
   snippet in the page's HTML (inline, ``defer``) has run. If the queue was invoked, or the library
   is already initialized, the page is in charge and we do nothing more; otherwise we set
   ``invoked``, queue ``page()`` and insert the script. So ``page()`` is queued once either way,
   and the library is loaded once in either order. A snippet that only arrives after
   DOMContentLoaded (a tag manager) finds ``invoked`` set and stands down. With first-party
   delivery the library comes from ``<prefix>/lib.js`` on the page's own origin (absolute, so
   a ``<base>`` element cannot send it elsewhere) and ``_cdn`` is set to ``<origin><prefix>``
   when the script is inserted, not before: the library then takes its settings and chunks
   from there too, while a page whose own snippet loads Segment's library keeps reading them
   from where that library came from.
4. It decorates cross-domain links and forms at the moment they are used (capturing listeners
   for click, auxclick and submit on ``document``), to cover what page JavaScript creates after
   the HTML rewriter has seen the page. Hosts match exactly as ``hosts.matches`` says (the
   ``hit`` function is that rule in JavaScript; a test holds the two together);
   the ids come from the running library when it is ready, else from the embedded values;
   existing ``ajs_aid``/``ajs_uid`` are replaced; the rest of the URL keeps its text.

Every value is embedded as JSON with ``<``, ``>``, ``&``, U+2028 and U+2029 (and all non-ASCII)
escaped, so nothing a site owner or visitor controls can end the script element or the string.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.firstparty import LIBRARY
from gateway.hosts import normalize
from gateway.params import (
    AID_PARAM,
    IDENTITY_PARAMS,
    PARAM_PREFIX,
    SIG_PARAM,
    TOKEN_PARAM,
    UID_PARAM,
)

# The queue methods analytics.js replays from its snippet buffer (its public API names).
_METHODS = (
    "trackSubmit trackClick trackLink trackForm pageview identify reset group track ready alias "
    "debug page screen once off on addSourceMiddleware addIntegrationMiddleware setAnonymousId "
    "addDestinationMiddleware register"
).split()

# Hand-minified. Names: w window, d document, c config, q our queue, T trim regex,
# hit(host, list) target test, ids() current params, dec(url, params) decorate text,
# web(url, list) target URL or false, strip(url) without identity params, fresh(a) reroute,
# bare(query) without ajs_ params, own(url) the address bar cleaned.
# ES5 only, so it runs wherever analytics.js does. Must never contain "</" or "<!--".
_JS = (
    "(function(w,d,c){"
    # 0. ajs_ parameters leave the address bar before any analytics.js can read them
    'function bare(s){var a=s.split("&"),k=[],i;'
    'for(i=0;i<a.length;i++)if(nm(a[i]).indexOf(c.b)!=0)k.push(a[i]);return k.join("&")}'
    'function own(u){var i=u.indexOf("#"),f="",s,b;if(i>=0){f=u.slice(i);u=u.slice(0,i)}'
    'i=u.indexOf("?");if(i>=0){s=u.slice(i+1);b=bare(s);if(b!=s)u=u.slice(0,i)+(b?"?"+b:"")}'
    'i=f.lastIndexOf("?");if(i>=0){s=f.slice(i+1);b=bare(s);if(b!=s)f=f.slice(0,i)+(b?"?"+b:"")}'
    "return u+f}"
    "try{var h=w.location.href,v=own(h);"
    'if(v!=h)w.history.replaceState(w.history.state,"",v)}catch(e){}'
    "var q=w.analytics,P=c.p,T=/^[\\x00-\\x20]+|[\\x00-\\x20]+$/g,"
    # first-party delivery: the library, its settings and chunks from this page's own origin
    'C=c.f?w.location.protocol+"//"+w.location.host+c.f:c.c;'
    # 1. the queue
    "if(!q){q=w.analytics=[];q.methods=c.m;"
    "q.factory=function(m){return function(){var a=[].slice.call(arguments);"
    "a.unshift(m);q.push(a);return q}};"
    "for(var i=0;i<c.m.length;i++)q[c.m[i]]=q.factory(c.m[i])}"
    # 2. the restored id goes first; settings only where the page has none
    "function seed(a){if(!c.a||!a)return;"
    "if(a.initialize){a.setAnonymousId&&a.setAnonymousId(c.a)}else if(a.unshift){"
    'a.unshift(["setAnonymousId",c.a])}}'
    "seed(q);"
    # (first-party: _cdn only once we load the library ourselves, so that a page's own
    # snippet keeps reading its settings from where its library came from)
    "if(!q.initialize){q._writeKey=q._writeKey||c.k;if(!c.f)q._cdn=q._cdn||c.c}"
    # 3. load, unless the page's own snippet or library took over by DOMContentLoaded
    "function go(){var a=w.analytics;if(!a||!a.push||a.initialize||a.invoked)return;"
    "if(a!==q){seed(a);a._writeKey=a._writeKey||c.k}a._cdn=c.f?C:a._cdn||c.c;"
    # the gateway reads identity in URLs itself; the library must not (see 0.)
    "a.invoked=!0;a._loadOptions=a._loadOptions||{};a._loadOptions.useQueryString=!1;"
    'a.push(["page"]);'
    'var s=d.createElement("script"),f=d.getElementsByTagName("script")[0];'
    "s.async=!0;if(c.n)s.nonce=c.n;"
    's.src=c.f?C+c.l:c.c+"/analytics.js/v1/"+encodeURIComponent(c.k)+"/analytics.min.js";'
    "if(f&&f.parentNode)f.parentNode.insertBefore(s,f);else(d.head||d.documentElement).appendChild(s)}"
    'if(d.readyState=="loading")d.addEventListener("DOMContentLoaded",go);else go();'
    # 4. click-time decoration
    'function hit(h,L){h=(h||"").toLowerCase().replace(/\\.$/,"");if(!h||h==c.o)return!1;'
    "for(var i=0;i<L.length;i++){var t=L[i],n=t.length;"
    'if(t.slice(0,2)=="*."?h.length>=n&&h.slice(1-n)==t.slice(1)&&h.charAt(h.length-n)!=".":h==t)'
    "return!0}return!1}"
    "function web(u,L){try{u=new URL(u,d.baseURI)}catch(e){return!1}"
    "return/^https?:$/.test(u.protocol)&&hit(u.hostname,L||c.t)&&u.href}"
    "function ids(){var a=w.analytics,id=c.a,u=c.u,r=[];"
    "try{if(a&&a.initialized&&a.user){var x=a.user();id=x.anonymousId()||id;u=x.id()||u}}"
    "catch(e){}"
    'if(id)r.push([P[0],""+id]);if(u)r.push([P[1],""+u]);return r}'
    'function nm(s){s=s.split("=")[0].replace(/[\\t\\n\\r]/g,"").replace(/\\+/g," ");'
    "try{return decodeURIComponent(s)}catch(e){return s}}"
    # every identity parameter already in the link goes (a stale ajs_uid must not ride along)
    'function dec(u,p){var i=u.indexOf("#"),f="",q="",n=c.s.slice(),o=[],k=[];'
    "if(i>=0){f=u.slice(i);u=u.slice(0,i)}"
    'i=u.indexOf("?");if(i>=0){q=u.slice(i+1);u=u.slice(0,i)}'
    "for(i=0;i<p.length;i++){n.push(p[i][0]);"
    'o.push(encodeURIComponent(p[i][0])+"="+encodeURIComponent(p[i][1]))}'
    'q=q.split("&");for(i=0;i<q.length;i++)if(n.indexOf(nm(q[i]))<0)k.push(q[i]);'
    'q=k.join("&");if(q&&q.slice(-1)!="&")q+="&";'
    'return u+"?"+q+o.join("&")+f}'
    # raw ids only for query targets, never a host a token or signed target also covers
    "function raw(v){return web(v)&&!(R&&web(v,R.t))}"
    "function attr(e,n,p){var v=e.getAttribute(n);"
    'if(v!=null&&(v=v.replace(T,""))&&raw(v)&&p.length){e.setAttribute(n,dec(v,p));return!0}}'
    # 5. token and signed links: past their freshness, route the click via the gateway
    "var R=c.r,t0=(new Date).getTime();"
    'function strip(u){var i=u.indexOf("#"),f="",q,k=[];if(i>=0){f=u.slice(i);u=u.slice(0,i)}'
    'i=u.indexOf("?");if(i<0)return u+f;q=u.slice(i+1).split("&");u=u.slice(0,i);'
    "for(i=0;i<q.length;i++)if(R.q.indexOf(nm(q[i]))<0)k.push(q[i]);"
    'return u+(k.length?"?"+k.join("&"):"")+f}'
    # a link to such a target goes via the gateway when its credential may have expired, or
    # when it has none (page JavaScript made it after the rewriter saw the page)
    'function cred(u){var q=u.split("#")[0].split("?")[1],i;if(!q)return!1;q=q.split("&");'
    "for(i=0;i<q.length;i++)if(R.c.indexOf(nm(q[i]))>=0)return!0;return!1}"
    "function fresh(e){if(!R)return!1;"
    'var v=e.getAttribute("href");v=v==null?"":web(v.replace(T,""),R.t);if(!v)return!1;'
    "if((new Date).getTime()-t0<R.x*1e3&&cred(v))return!1;"
    'e.setAttribute("href",R.e+"?to="+encodeURIComponent(strip(v)));return!0}'
    "function click(e){try{for(var n=e.target;n;n=n.parentNode)"
    'if(/^(a|area)$/i.test(n.nodeName||"")){fresh(n)||attr(n,"href",ids());return}}catch(x){}}'
    "function submit(e){try{var f=e.target,p=ids(),a,x,h,i,j;"
    'if(!/^form$/i.test(f.nodeName||""))return;'
    'if((f.getAttribute("method")||"get").toLowerCase()!="get"){attr(f,"action",p);return}'
    # a GET form's action query is replaced by the form data: use (or add) inputs instead
    'a=(f.getAttribute("action")||"").replace(T,"");if(!a||!raw(a))return;'
    'x=f.getElementsByTagName("input");'
    "for(i=0;i<p.length;i++){h=null;"
    'for(j=0;j<x.length;j++)if(x[j].getAttribute("name")==p[i][0])h=h||x[j];'
    'if(!h){h=d.createElement("input");h.type="hidden";h.name=p[i][0];f.appendChild(h)}'
    "h.value=p[i][1]}}catch(x){}}"
    'd.addEventListener("click",click,!0);d.addEventListener("auxclick",click,!0);'
    'd.addEventListener("submit",submit,!0)'
    "})(window,document,"
)


@dataclass(frozen=True)
class RefreshPlan:
    """Keeping token and signed links valid however long the page stays open.

    Their credentials were minted when the page was served and expire (a token after its TTL,
    a signature after its lifetime). A click more than ``fresh_for`` seconds after the script
    ran, or on such a link without any credential (page JavaScript made it after the rewriter
    saw the page), goes instead to ``endpoint`` on the page's own origin, with the original link
    (minus any identity parameters) in ``to``: the gateway mints a fresh credential there and
    redirects, and only to a configured target.
    """

    endpoint: str
    targets: tuple[str, ...]
    fresh_for: int


_JS_BYTES = _JS.encode("ascii")


def _js_value(value: object) -> str:
    """JSON that is also safe inside an HTML ``<script>`` element and any JS engine."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_bootstrap(
    *,
    write_key: str,
    cdn_url: str,
    anonymous_id: str | None,
    user_id: str | None,
    targets: Sequence[str],
    own_host: str,
    nonce: str | None,
    refresh: RefreshPlan | None = None,
    first_party: str | None = None,
) -> bytes:
    """One ``<script>`` element (ASCII bytes) to insert early in ``<head>``; see module docstring.

    ``cdn_url`` is used as given (also over plain HTTP) for both the library and ``_cdn``;
    ``nonce``, when given, goes on the element and on the script it inserts. With
    ``first_party`` (a path prefix, firstparty.py) the library comes from that path on the
    page's own origin instead, and ``_cdn`` is set to it, so that its settings and chunks do
    too; no URL of it carries an id.
    """
    # The per-visitor values are encoded per page; the rest is the same for every page of a
    # site under one config, so it is encoded once.
    visitor = _js_value({"a": anonymous_id, "u": user_id})[:-1]
    nonce_json = _js_value(nonce)
    static = _static_config(write_key, cdn_url, tuple(targets), own_host, refresh, first_party)
    attrs = "" if nonce is None else f' nonce="{html.escape(nonce, quote=True)}"'
    # ASCII only, so the element means the same whatever charset the legacy page declares:
    # the script is ASCII by construction, the attribute gets character references.
    open_tag = f"<script{attrs}>".encode("ascii", "xmlcharrefreplace")
    tail = f',"n":{nonce_json}}})</script>'.encode("ascii")
    return b"%b%b%b,%b%b" % (open_tag, _JS_BYTES, visitor.encode("ascii"), static, tail)


@functools.lru_cache(maxsize=256)
def _static_config(
    write_key: str,
    cdn_url: str,
    targets: tuple[str, ...],
    own_host: str,
    refresh: RefreshPlan | None,
    first_party: str | None,
) -> bytes:
    """The config members that do not depend on the visitor, as the middle of a JSON object."""
    config = {
        "k": write_key,
        "c": cdn_url.rstrip("/"),
        "f": first_party,
        "l": "/" + LIBRARY,
        "t": [normalize(t) for t in targets],
        "o": normalize(own_host),
        "p": [AID_PARAM, UID_PARAM],
        "s": list(IDENTITY_PARAMS),
        # The bootstrap takes every parameter that starts with this out of the address bar
        # (compared by decoded name, as the gateway does).
        "b": PARAM_PREFIX,
        "m": _METHODS,
        "r": None
        if refresh is None
        else {
            "e": refresh.endpoint,
            "t": [normalize(t) for t in refresh.targets],
            "x": refresh.fresh_for,
            "q": list(IDENTITY_PARAMS),
            "c": [TOKEN_PARAM, SIG_PARAM],
        },
    }
    return _js_value(config)[1:-1].encode("ascii")
