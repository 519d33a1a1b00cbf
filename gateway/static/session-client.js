// session-client.js: keeps a chatbot conversation alive in a cross-site iframe whose cookies the browser blocks.
// A dependency-free ES module for session-gateway; its README ("Embedding in a web chat") shows how to use it.
// This file is the one source: the gateway serves it (client.path), the Python wheel ships it, and clients/js/
// publishes it to npm (copied at pack time), with its types in session-client.d.ts next to it.
//
// It wraps fetch for the bot's endpoint behind the gateway:
// - remembers the session id (X-Session-Id, or the Teneo JSON `sessionId`) and the X-Gateway-Session pair in
//   sessionStorage, keyed per gateway origin (in memory when the browser denies storage to the iframe);
// - sends them back as `X-Teneo-Session: JSESSIONID=<id>; <pair>` (the gateway's cookie-less carriage);
// - reports X-Session-New (first, expired, lifetime, ended, unknown, upstream) through onNewSession;
// - ends the session with POST <endpoint>/endsession, and optionally on pagehide with keepalive;
// - waits out a slow bot: an interim answer (X-Session-Deferred) goes to onInterim, and the client picks the real
//   answer up from GET /_gateway/deferred/<token> (the gateway's [deferred] section).
// Cookies still ride along (credentials: "include"), so it changes nothing where the browser allows them.

const STORAGE_PREFIX = "session-gateway:";
const DEFERRED_HEADER = "X-Session-Deferred";
const PICKUP_PATH = "/_gateway/deferred/";
const PICKUP_TRIES = 5; // pick-up requests in a row that may fail on the network before send() rejects
const PICKUP_BACKOFF_MS = 250; // the wait before the first retry, doubled for each further one (0.25 s to 2 s)

/** Thrown by send() when the gateway or the bot answers with an HTTP error. */
export class SessionClientError extends Error {
  constructor(message, response, body) {
    super(message);
    this.name = "SessionClientError";
    this.status = response.status;
    this.response = response;
    this.body = body;
  }
}

/** The tab's sessionStorage, or null when the browser denies it (some browsers in third-party iframes). */
function tabStorage() {
  try {
    const storage = globalThis.sessionStorage;
    const probe = STORAGE_PREFIX + "probe";
    storage.setItem(probe, "1");
    storage.removeItem(probe);
    return storage;
  } catch {
    return null;
  }
}

function isJson(response) {
  return /^application\/([\w.+-]*\+)?json\b/i.test(response.headers.get("Content-Type") || "");
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Retry-After in milliseconds (seconds only; 1 s when absent or a date), at most a minute. */
function retryAfterMs(response) {
  const seconds = Number.parseFloat(response.headers.get("Retry-After") || "");
  return Number.isFinite(seconds) && seconds >= 0 ? Math.min(seconds, 60) * 1000 : 1000;
}

async function parsed(response) {
  return isJson(response) ? response.json() : response.text();
}

function emptyState() {
  return { id: null, pair: null, ended: null };
}

export class SessionClient {
  /**
   * @param {object} options see session-client.d.ts
   */
  constructor(options = {}) {
    if (!options.endpoint) throw new TypeError("SessionClient: `endpoint` is required");
    const base = globalThis.location ? globalThis.location.href : undefined;
    this.endpoint = new URL(options.endpoint, base);
    this.cookieName = options.cookieName || "JSESSIONID";
    this.headerName = options.headerName || "X-Teneo-Session";
    this.endPath = options.endPath || "endsession";
    this.credentials = options.credentials || "include";
    this.onNewSession = options.onNewSession || null;
    this.onInterim = options.onInterim || null;
    this.deferred = options.deferred || "wait";
    if (this.deferred !== "wait" && this.deferred !== "interim") {
      throw new TypeError(`SessionClient: \`deferred\` must be "wait" or "interim", got ${this.deferred}`);
    }
    this.storageKey = STORAGE_PREFIX + this.endpoint.origin;
    this._fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this._storage = options.storage === undefined ? tabStorage() : options.storage;
    this._state = this._load();
    if (options.endOnPageHide && typeof globalThis.addEventListener === "function") {
      // Ends on close, navigation and reload alike (pagehide cannot tell them apart); a page kept in the
      // back/forward cache (persisted) keeps its session.
      globalThis.addEventListener("pagehide", (event) => {
        if (!event.persisted && this._state.id) this.end({ keepalive: true }).catch(() => {});
      });
    }
  }

  /** The current session id, or null before the first answer and after end(). */
  get sessionId() {
    return this._state.id;
  }

  /** True when the session survives a reload of the tab (sessionStorage is available). */
  get persistent() {
    return this._storage !== null;
  }

  /** The X-Teneo-Session value the next request carries, or null when there is nothing to carry. */
  sessionHeader() {
    const { id, pair, ended } = this._state;
    const parts = [];
    // After end() the ended id is presented once more, so the gateway answers X-Session-New: ended.
    if (id || ended) parts.push(`${this.cookieName}=${id || ended}`);
    if (pair) parts.push(pair);
    return parts.length ? parts.join("; ") : null;
  }

  /** fetch() for the endpoint (or a URL relative to it) with the session attached and remembered; a deferred
   * answer is waited for (option `deferred`). */
  async fetch(path = "", init = {}) {
    const url = new URL(path, this.endpoint);
    // One conversation turn, even when it takes an interim answer and pick-ups: one new-session signal at most,
    // naming the session carried before it.
    const turn = { previous: this._state.id || this._state.ended, signalled: false };
    const response = await this._exchange(url, init, turn);
    const token = url.origin === this.endpoint.origin ? response.headers.get(DEFERRED_HEADER) : null;
    if (!token) return response;
    if (this.onInterim) {
      const answer = await parsed(response.clone()).catch(() => null);
      try {
        this.onInterim(answer);
      } catch (error) {
        console.error("session-client: onInterim failed", error);
      }
    }
    if (this.deferred === "interim") return response;
    await response.arrayBuffer().catch(() => {}); // read to the end, so the connection can be reused
    return this._pickUp(token, init.signal, turn);
  }

  /** Send a Teneo-style message (`userinput` and extra parameters) and return the bot's parsed JSON. */
  async send(text, parameters = {}) {
    const body = new URLSearchParams({ ...parameters, userinput: text });
    const response = await this.fetch("", { method: "POST", body });
    const data = await parsed(response);
    if (!response.ok) throw new SessionClientError(`the chat service answered ${response.status}`, response, data);
    return data;
  }

  /** End the conversation: POST <endpoint>/endsession, then forget the session (resolves with the response). */
  async end({ keepalive = false } = {}) {
    const carried = this._state.id ? this.sessionHeader() : null;
    const endedId = this._state.id || this._state.ended;
    this._state = { ...emptyState(), ended: endedId };
    this._save();
    if (!carried) return null;
    const url = new URL(this.endpoint.pathname.replace(/\/?$/, "/") + this.endPath, this.endpoint);
    return this._fetch(url.href, {
      method: "POST",
      headers: { [this.headerName]: carried },
      credentials: this.credentials,
      keepalive,
    });
  }

  /** Forget everything about the session without telling the gateway. */
  forget() {
    this._state = emptyState();
    if (this._storage) {
      try {
        this._storage.removeItem(this.storageKey);
      } catch {
        // storage revoked meanwhile: the state in memory is gone anyway
      }
    }
  }

  /** One request to `url` with the session attached; the session headers of the answer are remembered. */
  async _exchange(url, init, turn) {
    const own = url.origin === this.endpoint.origin;
    const headers = new Headers(init.headers);
    const carried = this.sessionHeader();
    if (carried && own) headers.set(this.headerName, carried);
    const response = await this._fetch(url.href, { credentials: this.credentials, ...init, headers });
    if (own) await this._remember(response, turn);
    return response;
  }

  /** Poll the gateway for a deferred answer until it is there (each poll waits up to deferred.poll_wait). */
  async _pickUp(token, signal, turn) {
    const url = new URL(PICKUP_PATH + encodeURIComponent(token), this.endpoint.origin);
    for (let failures = 0; ; ) {
      const started = Date.now();
      let response;
      try {
        response = await this._exchange(url, { method: "GET", signal }, turn);
      } catch (error) {
        if ((signal && signal.aborted) || ++failures >= PICKUP_TRIES) throw error;
        await sleep(PICKUP_BACKOFF_MS * 2 ** (failures - 1)); // a network blip, or a gateway restarting
        continue;
      }
      failures = 0;
      if (!response.headers.get(DEFERRED_HEADER)) {
        if (response.status !== 404) return response; // the bot's answer, whatever its status
        const body = await parsed(response.clone()).catch(() => null);
        if (body && body.error && body.error.code === "deferred_not_found") {
          throw new SessionClientError("the deferred answer is gone (expired or taken)", response, body);
        }
        return response; // the bot's own 404
      }
      // Still running. The gateway held this poll for deferred.poll_wait; one that answers sooner is paced
      // by its Retry-After.
      await response.arrayBuffer().catch(() => {});
      const pause = retryAfterMs(response) - (Date.now() - started);
      if (pause > 0) await sleep(pause);
    }
  }

  async _remember(response, turn) {
    const headers = response.headers;
    const reason = headers.get("X-Session-New");
    const pair = headers.get("X-Gateway-Session");
    let id = headers.get("X-Session-Id");
    if (!id && isJson(response)) {
      // A Teneo engine without the gateway (or an older one) tells the id in its JSON only.
      const body = await response.clone().json().catch(() => null);
      if (response.status === 400 && body && body.error && body.error.code === "bad_session_header") {
        this.forget(); // what we carry is unusable: start afresh rather than fail forever
        return;
      }
      if (body && typeof body.sessionId === "string" && body.sessionId) id = body.sessionId;
    }
    const previous = turn.previous;
    if (pair !== null) this._state.pair = pair.split(";")[0].trim() || null;
    if (id) this._state = { ...this._state, id, ended: null };
    this._save();
    if (reason && this.onNewSession && !turn.signalled) {
      turn.signalled = true;
      try {
        this.onNewSession({ reason, sessionId: id || null, previousSessionId: previous || null });
      } catch (error) {
        console.error("session-client: onNewSession failed", error);
      }
    }
  }

  _load() {
    if (!this._storage) return emptyState();
    try {
      const saved = JSON.parse(this._storage.getItem(this.storageKey) || "null");
      return saved && typeof saved === "object" ? { ...emptyState(), ...saved } : emptyState();
    } catch {
      return emptyState();
    }
  }

  _save() {
    if (!this._storage) return;
    try {
      this._storage.setItem(this.storageKey, JSON.stringify(this._state));
    } catch {
      // quota or revoked storage: keep going in memory
    }
  }
}
