// The demo chat widget. Plain ES module, no build step.
// ?mode=cookies: the comparison widget that relies on cookies alone (plain fetch, no session client).
// ?endpoint=<url>: the bot endpoint behind the gateway (default: this origin's "/").
// ?endOnPageHide=1: end the session when the page goes away (also on reload).
// ?bot=rasa-rest: speak Rasa's REST channel ({"message"} in, a list of bot messages out) instead of Teneo's.
// A slow answer (the gateway's [deferred]; type "think" to the demo bot) shows the gateway's interim line first.
import { SessionClient } from "session-client";

const params = new URLSearchParams(location.search);
const mode = params.get("mode") === "cookies" ? "cookies" : "client";
const endpoint = new URL(params.get("endpoint") || "/", location.href);
const rasa = params.get("bot") === "rasa-rest";

const DEFERRED_HEADER = "X-Session-Deferred";
const STILL_WORKING = "The bot is still working on your answer…";

const NOTICES = {
  first: ["A new conversation started.", "info"],
  expired: ["Your previous conversation timed out. This is a new one.", "warn"],
  lifetime: ["Your previous conversation reached its time limit. This is a new one.", "warn"],
  ended: ["Your previous conversation was ended. This is a new one.", "info"],
  unknown: ["Your previous conversation could not be found. This is a new one.", "warn"],
  upstream: ["The bot started a new conversation.", "warn"],
};

const transcript = document.getElementById("transcript");
const form = document.getElementById("composer");
const input = document.getElementById("message");
const sendButton = document.getElementById("send");
const endButton = document.getElementById("end-chat");
const typing = document.getElementById("typing");

// The transcript survives a reload of the tab like the session does (when the browser allows storage).
const historyKey = `demo-widget:${mode}`;
let history = [];
try {
  history = JSON.parse(sessionStorage.getItem(historyKey) || "[]");
} catch {
  history = [];
}

function saveHistory() {
  try {
    sessionStorage.setItem(historyKey, JSON.stringify(history.slice(-100)));
  } catch {
    // storage denied to this iframe: the transcript lives as long as the page
  }
}

function render(entry) {
  const item = document.createElement("li");
  if (entry.kind === "notice") {
    item.className = `notice ${entry.tone || "info"}`;
    item.textContent = entry.text;
    if (entry.reason) item.dataset.reason = entry.reason;
  } else {
    item.className = `msg ${entry.kind}`;
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = entry.text;
    item.append(bubble);
    if (entry.kind === "bot" || entry.kind === "interim") {
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = entry.kind === "bot" ? `Demo bot · turn ${entry.turn}` : "Demo bot · still working";
      if (entry.kind === "bot") item.dataset.turn = entry.turn;
      item.append(meta);
    }
  }
  transcript.append(item);
  transcript.scrollTop = transcript.scrollHeight;
}

function add(entry) {
  history.push(entry);
  saveHistory();
  render(entry);
}

function notice(reason) {
  const [text, tone] = NOTICES[reason] || [`A new conversation started (${reason}).`, "info"];
  add({ kind: "notice", text, tone, reason });
}

// The gateway's interim answer for a slow bot: its text (a Teneo-shaped interim), or a line of our own.
function interim(answer) {
  const text = answer && answer.output && answer.output.text;
  add({ kind: "interim", text: typeof text === "string" && text ? text : STILL_WORKING });
}

const client = new SessionClient({
  endpoint,
  onNewSession: ({ reason }) => notice(reason),
  onInterim: interim, // the client then picks the answer up itself (deferred: "wait")
  endOnPageHide: params.get("endOnPageHide") === "1",
});

// What one message looks like on the wire, for the bot this widget talks to.
function request(text) {
  if (rasa) {
    // The gateway puts the conversation's id in `sender` (session.place_json): the widget never picks one.
    return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ message: text }) };
  }
  return { method: "POST", body: new URLSearchParams({ userinput: text }) };
}

// The bot's answer as {text, turn}.
function reply(data) {
  if (rasa) {
    const texts = data.filter((m) => typeof m.text === "string").map((m) => m.text);
    const custom = data.find((m) => m.custom) || { custom: {} };
    return { text: texts.join("\n"), turn: custom.custom.turn };
  }
  return { text: data.output.text, turn: data.output.parameters.turn };
}

async function sendWithClient(text) {
  const response = await client.fetch("", request(text));
  if (!response.ok) throw new Error(`the chat service answered ${response.status}`);
  return response.json();
}

// The comparison: what a widget does without the client. Its cookie never comes back in a third-party iframe.
async function sendWithCookiesOnly(text) {
  let response = await fetch(endpoint, { ...request(text), credentials: "include" });
  // A slow answer, picked up by hand. (The gateway binds it to the session, which only the cookie carries here.)
  for (let token, first = true; (token = response.headers.get(DEFERRED_HEADER)); first = false) {
    if (first) interim(await response.json().catch(() => null));
    const pickUp = new URL(`/_gateway/deferred/${encodeURIComponent(token)}`, endpoint);
    response = await fetch(pickUp, { credentials: "include" });
  }
  const reason = response.headers.get("X-Session-New");
  if (reason) notice(reason);
  if (!response.ok) throw new Error(`the chat service answered ${response.status}`);
  return response.json();
}

async function endWithCookiesOnly() {
  const url = new URL(endpoint.pathname.replace(/\/?$/, "/") + "endsession", endpoint);
  return fetch(url, { method: "POST", credentials: "include" });
}

function setBusy(busy) {
  sendButton.disabled = busy;
  typing.hidden = !busy;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || sendButton.disabled) return;
  add({ kind: "user", text });
  input.value = "";
  setBusy(true);
  try {
    const answer = reply(mode === "cookies" ? await sendWithCookiesOnly(text) : await sendWithClient(text));
    add({ kind: "bot", text: answer.text, turn: answer.turn });
  } catch (error) {
    add({ kind: "notice", tone: "error", text: "The message could not be delivered. Please try again." });
    console.error(error);
  } finally {
    setBusy(false);
    input.focus();
  }
});

endButton.addEventListener("click", async () => {
  endButton.disabled = true;
  try {
    await (mode === "cookies" ? endWithCookiesOnly() : client.end());
    add({ kind: "notice", tone: "info", text: "You ended the chat. Send a message to start a new one.", ended: true });
  } catch (error) {
    add({ kind: "notice", tone: "error", text: "The chat could not be ended. Please try again." });
    console.error(error);
  } finally {
    endButton.disabled = false;
    input.focus();
  }
});

if (mode === "cookies") {
  document.body.classList.add("cookies-only");
  document.getElementById("chat-mode").textContent = "Cookies only, no session client";
}
history.forEach(render);
if (!history.length) {
  render({ kind: "notice", tone: "info", text: "Ask the demo bot anything. It counts the turns of the conversation." });
}
document.documentElement.dataset.ready = "true";
