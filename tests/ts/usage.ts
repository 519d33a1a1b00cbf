// Compiled (never run) by tests/test_client_node.py with `tsc --noEmit --strict` against the published package:
// every export of session-client.d.ts used as a widget would, and misuse that must not compile.
import {
  type DeferredInterim,
  type DeferredMode,
  type NewSessionEvent,
  type NewSessionReason,
  SessionClient,
  SessionClientError,
  type SessionClientOptions,
  type SessionStorageLike,
  type TeneoAnswer,
} from "session-gateway-client";

function exactly<T>(value: T): T {
  return value;
}

// Exact types where the client's behaviour fixes them (a wider or narrower declaration fails to compile).
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
function same<A, B>(proof: Equal<A, B>): void {
  void proof;
}
same<ReturnType<SessionClient["end"]>, Promise<Response | null>>(true); // null: there was no session to end
same<ReturnType<SessionClient["fetch"]>, Promise<Response>>(true);
same<ReturnType<SessionClient["sessionHeader"]>, string | null>(true);
same<SessionClient["sessionId"], string | null>(true);
same<SessionClient["persistent"], boolean>(true);
same<SessionClient["endpoint"], URL>(true);
same<NewSessionEvent["sessionId"], string | null>(true);
same<NewSessionEvent["previousSessionId"], string | null>(true);
same<DeferredMode, "wait" | "interim">(true);
same<NewSessionReason, "first" | "expired" | "lifetime" | "ended" | "unknown" | "upstream">(true);
same<SessionClientError["status"], number>(true);

const memory = new Map<string, string>();
const storage: SessionStorageLike = {
  getItem: (key) => memory.get(key) ?? null,
  setItem: (key, value) => void memory.set(key, value),
  removeItem: (key) => void memory.delete(key),
};
const reasons: NewSessionReason[] = ["first", "expired", "lifetime", "ended", "unknown", "upstream"];
const mode: DeferredMode = "interim";
const options: SessionClientOptions = {
  endpoint: new URL("https://chat.example/engine/"),
  cookieName: "JSESSIONID",
  headerName: "X-Teneo-Session",
  endPath: "endsession",
  credentials: "omit",
  onNewSession: (event: NewSessionEvent) => {
    const reason: string = event.reason;
    const id: string | null = event.sessionId;
    const previous: string | null = event.previousSessionId;
    console.log(reasons.includes(event.reason as NewSessionReason), reason, id, previous);
  },
  onInterim: (answer: unknown) => console.log((answer as DeferredInterim).deferred.poll),
  deferred: mode,
  endOnPageHide: true,
  storage,
  fetch: (input, init) => fetch(input, init),
};

export async function conversation(): Promise<void> {
  const chat = new SessionClient(options);
  const fromString = new SessionClient({ endpoint: "/engine/", storage: null });
  const endpoint: URL = chat.endpoint;
  const names: string[] = [chat.cookieName, chat.headerName, chat.endPath, chat.storageKey];
  const credentials: RequestCredentials = chat.credentials;
  const deferred: DeferredMode = chat.deferred;
  const id: string | null = chat.sessionId;
  const persistent: boolean = fromString.persistent;
  const carried: string | null = chat.sessionHeader();
  chat.onNewSession = null;
  chat.onInterim = (answer) => console.log(answer);
  console.log(endpoint, names, credentials, deferred, id, persistent, carried);

  const answer = exactly<TeneoAnswer>(await chat.send("Hello", { channel: "web" }));
  console.log(answer.output.text, answer.output.parameters.turn, answer.sessionId, answer.input.text);
  const custom = exactly<{ text: string }>(await chat.send<{ text: string }>("Hi"));
  const response = exactly<Response>(await chat.fetch("", { method: "POST", body: new URLSearchParams() }));
  const other = exactly<Response>(await chat.fetch(new URL("https://chat.example/other")));
  const ended = exactly<Response | null>(await chat.end({ keepalive: true }));
  exactly<Response | null>(await chat.end());
  chat.forget();
  console.log(custom.text, response.status, other.ok, ended?.status);

  try {
    await chat.send("think");
  } catch (error) {
    if (error instanceof SessionClientError) {
      const status: number = error.status;
      const failed: Response = error.response;
      const body: unknown = error.body;
      const name: "SessionClientError" = error.name;
      console.log(status, failed, body, name, error.message);
    }
  }
  const made = new SessionClientError("the chat service answered 500", new Response(null, { status: 500 }), null);
  exactly<Error>(made);

  // @ts-expect-error `endpoint` is required
  new SessionClient({});
  // @ts-expect-error `deferred` is "wait" or "interim"
  new SessionClient({ endpoint: "/engine/", deferred: "never" });
  // @ts-expect-error parameters are strings, as in a form
  await chat.send("Hello", { turn: 1 });
  // @ts-expect-error the session id is read-only: the answers set it
  chat.sessionId = "5E0C3E8A";
}
