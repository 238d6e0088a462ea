// Differential oracle for gateway.identity's host finding: node's WHATWG URL parser.
// Reads [[url, base], ...] as JSON on stdin; prints, for each, [scheme, hostname] when the URL
// parses (against base) to http(s), else null.
"use strict";

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const out = JSON.parse(input).map(([url, base]) => {
    try {
      const u = new URL(url, base);
      return /^https?:$/.test(u.protocol) ? [u.protocol.slice(0, -1), u.hostname] : null;
    } catch (e) {
      return null;
    }
  });
  process.stdout.write(JSON.stringify(out));
});
