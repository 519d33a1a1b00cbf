// Types for session-client.js, the session-gateway client for chat widgets in cookie-blocked iframes.

/** Why the gateway started a new conversation (the X-Session-New response header). */
export type NewSessionReason = "first" | "expired" | "lifetime" | "ended" | "unknown" | "upstream";

export interface NewSessionEvent {
  /** The X-Session-New value; a reason added by a later gateway arrives as its plain string. */
  reason: NewSessionReason | (string & {});
  /** The new session's id (X-Session-Id, or the Teneo JSON `sessionId`), or null if the answer had none. */
  sessionId: string | null;
  /** The id the client carried before (live, expired or ended), or null. */
  previousSessionId: string | null;
}

/** The subset of the Web Storage API the client uses (sessionStorage by default). */
export interface SessionStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface SessionClientOptions {
  /** The bot's endpoint behind the gateway, absolute or relative to the page: "https://chat.example/engine/". */
  endpoint: string | URL;
  /** The bot's session cookie (the gateway's `session.cookie`). Default "JSESSIONID". */
  cookieName?: string;
  /** The request header carrying the session (the gateway's `session.header`). Default "X-Teneo-Session". */
  headerName?: string;
  /** The last path segment that ends a session (the gateway's `session.end_path`). Default "endsession". */
  endPath?: string;
  /** fetch credentials mode. Default "include", so cookies still work where the browser allows them;
   * use "omit" or "same-origin" when the gateway's `cors.allow_origins` is ["*"]. */
  credentials?: RequestCredentials;
  /** Called once per new session, with the reason the gateway gave. */
  onNewSession?: (event: NewSessionEvent) => void;
  /** Called once when the bot is slow and the gateway answers for it (a response with X-Session-Deferred; the
   * gateway's `[deferred]` section), with the parsed interim body: a TeneoAnswer whose `output.text` is the
   * gateway's `deferred.message` (format "teneo"), a DeferredInterim (format "json"), or what the format gives. */
  onInterim?: (answer: unknown) => void;
  /** What fetch() and send() do with an interim answer. "wait" (default): poll
   * `<endpoint's origin>/_gateway/deferred/<token>` with the session until the bot's answer is there and resolve
   * with that; a token the gateway no longer knows rejects with a SessionClientError (status 404), and network
   * errors are retried 4 times (0.25 s to 2 s apart). "interim": resolve with the interim; the caller picks up. */
  deferred?: DeferredMode;
  /** End the session on `pagehide` with a keepalive request. Also ends it on reload. Default false. */
  endOnPageHide?: boolean;
  /** Where the session is remembered. Default: the tab's sessionStorage, or memory when it is denied. */
  storage?: SessionStorageLike | null;
  /** The fetch implementation. Default globalThis.fetch. */
  fetch?: typeof fetch;
}

/** What fetch() and send() do when the gateway answers for a slow bot (see SessionClientOptions.deferred). */
export type DeferredMode = "wait" | "interim";

/** The interim body of the gateway's `deferred.format = "json"` (status 202). */
export interface DeferredInterim {
  deferred: { token: string; poll: string };
}

/** Thrown by send() when the answer is an HTTP error, and by fetch() and send() when a deferred answer is gone
 * (404, `body.error.code` "deferred_not_found"). */
export class SessionClientError extends Error {
  constructor(message: string, response: Response, body: unknown);
  readonly name: "SessionClientError";
  readonly status: number;
  readonly response: Response;
  /** The parsed JSON body, or the text. */
  readonly body: unknown;
}

/** The shape of a Teneo engine answer (the demo bot's too); other bots answer what they answer. */
export interface TeneoAnswer {
  status: number;
  input: { text: string; parameters: Record<string, string> };
  output: { text: string; emotion: string; link: string; parameters: Record<string, string> };
  sessionId: string;
}

export class SessionClient {
  constructor(options: SessionClientOptions);
  readonly endpoint: URL;
  readonly cookieName: string;
  readonly headerName: string;
  readonly endPath: string;
  readonly credentials: RequestCredentials;
  /** The key under which the session is stored: "session-gateway:" + the endpoint's origin. */
  readonly storageKey: string;
  onNewSession: ((event: NewSessionEvent) => void) | null;
  onInterim: ((answer: unknown) => void) | null;
  readonly deferred: DeferredMode;
  /** The current session id, or null before the first answer and after end(). */
  readonly sessionId: string | null;
  /** True when the session survives a reload of the tab (sessionStorage is available). */
  readonly persistent: boolean;
  /** The X-Teneo-Session value the next request carries, or null. */
  sessionHeader(): string | null;
  /** fetch() for the endpoint, or a URL relative to it, with the session attached and remembered. With
   * `deferred: "wait"` a deferred answer is picked up: this resolves with the bot's answer, not the interim. */
  fetch(path?: string | URL, init?: RequestInit): Promise<Response>;
  /** POST a Teneo-style message (`userinput` plus parameters); resolves with the parsed JSON answer (the bot's,
   * after an interim one, with `deferred: "wait"`). */
  send<T = TeneoAnswer>(text: string, parameters?: Record<string, string>): Promise<T>;
  /** POST <endpoint>/endsession and forget the session; resolves with the response, or null if there was none. */
  end(options?: { keepalive?: boolean }): Promise<Response | null>;
  /** Forget the session without telling the gateway. */
  forget(): void;
}
