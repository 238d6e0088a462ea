// A tiny window/document shim for running the bootstrap script under node.
//
// Reads {"script": "<bootstrap body>", "pageUrl": "...", "steps": [...]} as JSON on stdin, runs
// the steps in order in one fresh VM context and prints {"results": [...], "scripts": [...],
// "errors": [...], "replaced": [...]} as JSON. Assertions live in tests/test_bootstrap.py; this
// file only drives. Optional: "historyState" (history.state to start with), "historyThrows"
// (replaceState throws, as in a sandboxed frame). "replaced" lists the URL arguments of every
// history.replaceState call, as given.
//
// Steps:
//   {"do": "bootstrap"}                   run the bootstrap script
//   {"do": "snippet", "key": "K"}         run a Segment-like snippet (same decision logic)
//   {"do": "dcl"}                         fire DOMContentLoaded
//   {"do": "library", "aid": "..", "uid": ".."}  "load" analytics.js: replay the queue
//   {"do": "state"}                       record the queue and flags
//   {"do": "location"}                    record location.href and history.state
//   {"do": "exec", "code": "..."}          run arbitrary page code
//   {"do": "click", "href": "..", "tag": "a", "nested": false, "type": "click"}
//   {"do": "submit", "action": "..", "method": "get", "inputs": [["name", "value"]]}
"use strict";

const vm = require("vm");

function run(spec) {
  const log = { scripts: [], errors: [], results: [], replaced: [] };
  const listeners = {};
  let doc;

  class Element {
    constructor(name) {
      this.nodeName = name.toUpperCase();
      this.attrs = new Map();
      this.children = [];
      this.parentNode = null;
      this.value = "";
    }
    getAttribute(n) {
      return this.attrs.has(n) ? this.attrs.get(n) : null;
    }
    setAttribute(n, v) {
      this.attrs.set(n, String(v));
    }
    get name() {
      return this.getAttribute("name") || "";
    }
    set name(v) {
      this.setAttribute("name", v);
    }
    get type() {
      return this.getAttribute("type") || "";
    }
    set type(v) {
      this.setAttribute("type", v);
    }
    get href() {
      const v = this.getAttribute("href");
      if (v === null) return "";
      try {
        return new URL(v, doc.baseURI).href;
      } catch (e) {
        return v;
      }
    }
    set href(v) {
      this.setAttribute("href", v);
    }
    appendChild(c) {
      return this.insertBefore(c, null);
    }
    insertBefore(c, ref) {
      const i = ref ? this.children.indexOf(ref) : -1;
      this.children.splice(i < 0 ? this.children.length : i, 0, c);
      c.parentNode = this;
      if (c.nodeName === "SCRIPT") {
        log.scripts.push({ src: c.src, async: c.async, nonce: c.nonce || null });
      }
      return c;
    }
    getElementsByTagName(tag) {
      const out = [];
      const walk = (n) => {
        for (const c of n.children) {
          if (c.nodeName === tag.toUpperCase()) out.push(c);
          walk(c);
        }
      };
      walk(this);
      return out;
    }
  }

  doc = new Element("#document");
  const html = doc.appendChild(new Element("html"));
  const head = html.appendChild(new Element("head"));
  const body = html.appendChild(new Element("body"));
  head.appendChild(new Element("script")); // the script element the bootstrap runs from
  log.scripts.length = 0;
  Object.assign(doc, {
    documentElement: html,
    head,
    body,
    readyState: "loading",
    baseURI: spec.pageUrl,
    createElement: (n) => new Element(n),
    addEventListener: (type, fn) => (listeners[type] = listeners[type] || []).push(fn),
  });
  const dispatch = (type, target) => {
    for (const fn of listeners[type] || []) fn({ type, target });
  };

  // href as the page's address; protocol and host read from it, as a browser's Location does.
  const location = {
    href: new URL(spec.pageUrl).href,
    get protocol() {
      return new URL(this.href).protocol;
    },
    get host() {
      return new URL(this.href).host;
    },
  };
  const history = {
    state: spec.historyState === undefined ? null : spec.historyState,
    replaceState(state, title, url) {
      log.replaced.push(url);
      if (spec.historyThrows) throw new Error("SecurityError: replaceState refused");
      // As in a browser: the URL resolves against the current one, same origin only.
      const next = new URL(url, location.href);
      if (next.origin !== new URL(location.href).origin) throw new Error("SecurityError");
      this.state = state;
      location.href = next.href;
    },
  };
  const window = {
    document: doc,
    location,
    history,
    URL,
    console: { error: (...a) => log.errors.push(a.join(" ")), log: () => {} },
  };
  window.window = window;
  const ctx = vm.createContext(window);
  const exec = (code) => vm.runInContext(code, ctx);

  const SNIPPET = (key) =>
    "(function(){var analytics=window.analytics=window.analytics||[];" +
    "if(!analytics.initialize){if(analytics.invoked){console.error('snippet included twice')}" +
    "else{analytics.invoked=true;analytics.methods=['track','page','identify','setAnonymousId'];" +
    "analytics.factory=function(m){return function(){var a=Array.prototype.slice.call(arguments);" +
    "a.unshift(m);analytics.push(a);return analytics}};" +
    "for(var i=0;i<analytics.methods.length;i++){var k=analytics.methods[i];" +
    "analytics[k]=analytics.factory(k)}" +
    "analytics.load=function(key){var t=document.createElement('script');t.async=true;" +
    "t.src='https://cdn.segment.com/analytics.js/v1/'+key+'/analytics.min.js';" +
    "var n=document.getElementsByTagName('script')[0];n.parentNode.insertBefore(t,n)};" +
    `analytics._writeKey=${JSON.stringify(key)};analytics.load(${JSON.stringify(key)});` +
    "analytics.page()}}})();";

  const state = () => {
    const a = window.analytics;
    return {
      queue: Array.isArray(a) ? JSON.parse(JSON.stringify(Array.from(a))) : null,
      invoked: !!(a && a.invoked),
      writeKey: a ? a._writeKey || null : null,
      cdn: a ? a._cdn || null : null,
      hasMethods: !!(a && a.methods && typeof a.factory === "function"),
      stubPage: !!(a && typeof a.page === "function"),
      loadOptions: a && a._loadOptions ? JSON.parse(JSON.stringify(a._loadOptions)) : null,
    };
  };

  for (const step of spec.steps) {
    switch (step.do) {
      case "bootstrap":
        exec(spec.script);
        break;
      case "exec":
        exec(step.code);
        break;
      case "snippet":
        exec(SNIPPET(step.key));
        break;
      case "dcl":
        doc.readyState = "interactive";
        dispatch("DOMContentLoaded", doc);
        break;
      case "library": {
        // What analytics.js does on load: replace the queue and replay it in order.
        const queue = Array.from(window.analytics || []);
        const calls = [];
        let aid = step.aid;
        const lib = {
          initialize() {},
          initialized: true,
          setAnonymousId(id) {
            aid = id;
            calls.push(["setAnonymousId", id]);
          },
          user: () => ({ anonymousId: () => aid, id: () => step.uid || null }),
        };
        window.analytics = lib;
        for (const [method, ...args] of queue) {
          if (method === "setAnonymousId") lib.setAnonymousId(...args);
          else calls.push([method, ...args]);
        }
        lib.calls = calls;
        log.results.push({ calls: JSON.parse(JSON.stringify(calls)) });
        break;
      }
      case "state":
        log.results.push(state());
        break;
      case "location":
        log.results.push({ href: location.href, state: history.state });
        break;
      case "click": {
        const a = body.appendChild(new Element(step.tag || "a"));
        if (step.href !== null) a.setAttribute("href", step.href);
        const target = step.nested ? a.appendChild(new Element("span")) : a;
        dispatch(step.type || "click", target);
        log.results.push({ href: a.getAttribute("href") });
        break;
      }
      case "submit": {
        const f = body.appendChild(new Element("form"));
        if (step.action !== null) f.setAttribute("action", step.action);
        if (step.method) f.setAttribute("method", step.method);
        for (const [name, value] of step.inputs || []) {
          const i = f.appendChild(new Element("input"));
          i.setAttribute("name", name);
          i.value = value;
        }
        dispatch("submit", f);
        log.results.push({
          action: f.getAttribute("action"),
          inputs: f.getElementsByTagName("input").map((i) => [i.name, i.value, i.type]),
        });
        break;
      }
      default:
        throw new Error(`unknown step ${step.do}`);
    }
  }
  return log;
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  process.stdout.write(JSON.stringify(run(JSON.parse(input))));
});
