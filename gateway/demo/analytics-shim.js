/* A small stand-in for analytics.js, served by `make demo` when the real library is not
 * installed (the real one, @segment/analytics-next, is installed into tests/e2e/node_modules
 * by the browser tests; the demo serves it when it finds it there).
 *
 * It does what the demo needs of analytics.js, the way analytics.js does it, and no more:
 * - it replays the calls queued on window.analytics before it loaded (the gateway's bootstrap
 *   or Segment's snippet queue them), in order: setAnonymousId, page, track, identify, ready;
 * - the anonymousId comes from setAnonymousId, else the ajs_anonymous_id cookie (plain or
 *   JSON-quoted), else localStorage, else it mints a UUID v4; it keeps the id in that cookie,
 *   on the widest domain that accepts it (as analytics.js does), and in localStorage;
 * - page() and track() POST an event with that anonymousId and the page URL to the tracking
 *   API of the demo's Segment stand-in (__API__ is filled in by the server);
 * - it reports itself as running (initialized, user().anonymousId()) so the bootstrap's
 *   click-time link decoration reads the id from it, as it would from analytics.js.
 * No settings, no integrations, no retries, no query-string (ajs_*) handling, no batching.
 */
(function (w, d) {
  "use strict";
  var API = __API__;
  var KEY = "ajs_anonymous_id";
  var YEAR = 365 * 24 * 3600;
  var queue = w.analytics || [];
  var writeKey = queue._writeKey || "";
  var anonymousId = null;
  var userId = null;
  var readyCallbacks = [];

  function uuid4() {
    var b = new Uint8Array(16), h = [];
    w.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    for (var i = 0; i < 16; i++) h.push((b[i] + 0x100).toString(16).slice(1));
    h = h.join("");
    return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
  }

  function readCookie() {
    var m = d.cookie.match(/(?:^|; )ajs_anonymous_id=([^;]*)/);
    if (!m) return null;
    try {
      var v = decodeURIComponent(m[1]);
      if (v.length >= 2 && v.charAt(0) === '"' && v.charAt(v.length - 1) === '"') v = JSON.parse(v);
      return typeof v === "string" && v ? v : null;
    } catch (e) {
      return null;
    }
  }

  function readStorage() {
    try {
      var v = w.localStorage.getItem(KEY);
      return v ? JSON.parse(v) : null;
    } catch (e) {
      return null;
    }
  }

  // analytics.js sets its cookie on the widest domain the browser accepts, trying the last two
  // labels first (shop.localhost), then longer ones, so every subdomain shares it.
  function writeCookie(id) {
    var labels = location.hostname.split(".");
    var tail = "; Path=/; Max-Age=" + YEAR + "; SameSite=Lax";
    for (var i = labels.length - 2; i >= 0; i--) {
      var domain = labels.slice(i).join(".");
      d.cookie = KEY + "=" + encodeURIComponent(id) + "; Domain=" + domain + tail;
      if (readCookie() === id) return;
    }
    d.cookie = KEY + "=" + encodeURIComponent(id) + tail;
  }

  function setAnonymousId(id) {
    if (id === undefined) return anonymousId;
    anonymousId = String(id);
    writeCookie(anonymousId);
    try {
      w.localStorage.setItem(KEY, JSON.stringify(anonymousId));
    } catch (e) {}
    return anonymousId;
  }

  function send(type, fields) {
    var page = {
      url: location.href,
      path: location.pathname,
      search: location.search,
      title: d.title,
      referrer: d.referrer
    };
    var body = {
      type: type,
      anonymousId: anonymousId,
      userId: userId,
      messageId: "demo-shim-" + uuid4(),
      timestamp: new Date().toISOString(),
      writeKey: writeKey,
      context: { page: page, library: { name: "demo analytics.js shim", version: "1" } }
    };
    for (var k in fields) body[k] = fields[k];
    var path = API + "/v1/" + ({ page: "p", track: "t", identify: "i" }[type] || type);
    var text = JSON.stringify(body);
    if (w.fetch) {
      w.fetch(path, { method: "POST", body: text, keepalive: true,
        headers: { "Content-Type": "text/plain" } }).catch(function () {});
    } else if (navigator.sendBeacon) {
      navigator.sendBeacon(path, text);
    }
  }

  var analytics = {
    initialized: true,
    initialize: function () {},
    setAnonymousId: setAnonymousId,
    user: function () {
      return { anonymousId: function () { return anonymousId; }, id: function () { return userId; } };
    },
    page: function (category, name, properties) {
      if (typeof category === "object" && category) properties = category;
      send("page", { name: typeof name === "string" ? name : undefined,
        properties: typeof properties === "object" ? properties : {} });
      return analytics;
    },
    track: function (event, properties) {
      send("track", { event: String(event), properties: properties || {} });
      return analytics;
    },
    identify: function (id, traits) {
      if (typeof id === "string") userId = id;
      send("identify", { traits: typeof id === "object" ? id : traits || {} });
      return analytics;
    },
    ready: function (callback) {
      if (readyCallbacks) readyCallbacks.push(callback);
      else setTimeout(callback, 0);
      return analytics;
    },
    reset: function () {
      anonymousId = null;
      userId = null;
    }
  };

  // Take over window.analytics first, as analytics.js does, so the calls replayed below, and
  // anything running during them, see the running library.
  w.analytics = analytics;
  var calls = [];
  for (var i = 0; i < queue.length; i++) if (queue[i] && queue[i].length) calls.push(queue[i]);
  // setAnonymousId calls are replayed first, as analytics.js does, so no event goes out before
  // the id is settled.
  for (i = 0; i < calls.length; i++) if (calls[i][0] === "setAnonymousId") setAnonymousId(calls[i][1]);
  if (!anonymousId) setAnonymousId(readCookie() || readStorage() || uuid4());
  for (i = 0; i < calls.length; i++) {
    var name = calls[i][0];
    if (name !== "setAnonymousId" && typeof analytics[name] === "function") {
      analytics[name].apply(analytics, calls[i].slice(1));
    }
  }
  var callbacks = readyCallbacks;
  readyCallbacks = null;
  for (i = 0; i < callbacks.length; i++) setTimeout(callbacks[i], 0);
})(window, document);
