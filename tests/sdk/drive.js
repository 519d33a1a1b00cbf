// One chat client built on the official Teneo JavaScript SDK (@artificialsolutions/tie-api-client), driven by
// tests/test_teneo_sdk.py: `node drive.js <engine url>`, then one JSON command per line on stdin, one JSON
// answer per line on stdout.
//
//   {"op": "send", "text": "hi"}  TIE.sendInput(url, sessionId, {text}); sessionId becomes the answer's
//   {"op": "close"}               TIE.close(url, sessionId); the id is kept, as a page keeps it until the
//                                 next answer names another
//
// Answer: {"ok": true, "result": <what the SDK resolved with>, "sessionId": <the id it tracks now>,
//          "sent": {"method", "url", "headers"}, "received": {"status", "headers", "body"}}
// or {"ok": false, "error": "...", "sent", "received"}. Headers are [name, value] pairs.
//
// The session travels as a browser sends it. The SDK carries it twice: `;jsessionid=<id>` on the URL and a
// `Cookie: JSESSIONID=<id>` header. In a browser, fetch() drops Cookie silently: it is a forbidden request
// header (Fetch standard, "forbidden request-header"), so only the path parameter reaches the gateway. Node's
// fetch would send it, so the fetch the SDK calls is wrapped below to drop the same headers a browser's does.
// Node's fetch keeps no cookie jar either, so the Set-Cookie of the gateway and the bot are never sent back,
// and nothing here echoes X-Gateway-Session: the SDK never reads response headers.
"use strict";

const readline = require("node:readline");
const TIE = require("@artificialsolutions/tie-api-client");

// The Fetch standard's forbidden request-header names among those the SDK sets (it sets Cookie alone).
const FORBIDDEN = ["cookie", "cookie2"];

const engineUrl = process.argv[2];
if (!engineUrl) {
  process.stderr.write("usage: node drive.js <engine url>\n");
  process.exit(2);
}

let exchange = null; // what the current command's request sent and received (the SDK shows neither)

// The SDK calls the global fetch at request time (its isomorphic-fetch only installs node-fetch where Node
// has none), so replacing the global after require() covers Node 18+ and older Nodes alike.
const realFetch = globalThis.fetch;
globalThis.fetch = async (url, init = {}) => {
  const headers = new Headers(init.headers);
  for (const name of FORBIDDEN) headers.delete(name);
  exchange = { sent: { method: init.method || "GET", url: String(url), headers: [...headers] } };
  const response = await realFetch(url, { ...init, headers });
  exchange.received = {
    status: response.status,
    headers: [...response.headers],
    body: await response.clone().text(),
  };
  return response;
};

let sessionId = null;

async function run(command) {
  if (command.op === "send") {
    const result = await TIE.sendInput(engineUrl, sessionId, { text: command.text });
    if (result && result.sessionId) sessionId = result.sessionId; // as the SDK's README does
    return result;
  }
  if (command.op === "close") {
    return TIE.close(engineUrl, sessionId);
  }
  throw new Error(`unknown op ${JSON.stringify(command.op)}`);
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    exchange = null;
    let answer;
    try {
      const result = await run(JSON.parse(line));
      answer = { ok: true, result: result === undefined ? null : result, sessionId, ...exchange };
    } catch (error) {
      answer = { ok: false, error: String(error && error.stack ? error.stack : error), sessionId, ...exchange };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
  }
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
