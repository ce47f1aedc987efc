// The chat page: pusher-js on one presence channel. Who is online comes from the channel's
// members; messages are POSTed to the app, which publishes them for everyone but this socket
// (so this page adds its own message once, from the answer); "is typing" is a client event.
"use strict";

const $ = (id) => document.getElementById(id);
const TYPING_EVERY_MS = 2000; // at most one client-typing per 2 s while typing (limit: 10/s)
const TYPING_SHOWN_MS = 4000; // "… is typing" stays this long after the last one

function show(element, visible) {
  element.hidden = !visible;
}

function alertText(text) {
  $("status").textContent = text;
  show($("status"), Boolean(text));
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function addLine(kind, parts) {
  const item = document.createElement("li");
  item.className = kind;
  for (const [name, text] of parts) {
    const span = document.createElement("span");
    span.className = name;
    span.textContent = text; // never innerHTML: names and texts come from other users
    item.append(span);
  }
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
}

function addMessage(message, mine) {
  const kind = mine ? "message mine" : "message";
  addLine(kind, [["from", message.from], ["at", clock(message.at)], ["text", message.text]]);
}

function addNotice(text) {
  addLine("notice", [["text", text]]);
}

async function post(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
}

class Room {
  constructor(me, config) {
    this.me = me;
    this.config = config;
    this.typing = new Map(); // user id -> timer that hides their "is typing"
    this.lastTypingSent = 0;
    this.pusher = new Pusher(config.key, {
      // Embedded (no wsHost from the app): the page's own host, port and scheme.
      wsHost: location.hostname,
      wsPort: Number(location.port) || 80,
      wssPort: Number(location.port) || 443,
      forceTLS: location.protocol === "https:",
      ...config.options,
    });
    this.pusher.connection.bind("state_change", ({ current }) => {
      $("state").textContent = current;
      $("state").className = current;
    });
    this.channel = this.pusher.subscribe(config.room);
    this.bindChannel();
  }

  bindChannel() {
    const channel = this.channel;
    channel.bind("pusher:subscription_succeeded", () => {
      alertText("");
      this.showMembers();
      addNotice(`You joined as ${this.me}.`);
    });
    channel.bind("pusher:subscription_error", (error) => {
      // pusher-js passes the auth endpoint's HTTP status: 403 is the app's refusal.
      const status = error && error.status;
      alertText(status === 403 ? `You may not join this room (HTTP 403).`
        : `Could not join the room (${status || error.type || "error"}).`);
      show($("composer"), false);
    });
    channel.bind("pusher:member_added", (member) => {
      this.showMembers();
      addNotice(`${member.info.name} joined.`);
    });
    channel.bind("pusher:member_removed", (member) => {
      this.stopTyping(member.id);
      this.showMembers();
      addNotice(`${member.info.name} left.`);
    });
    channel.bind(this.config.message_event, (message) => {
      this.stopTyping(message.from);
      addMessage(message, false);
    });
    // Client events on presence channels carry the sender's user id, set by the server.
    channel.bind("client-typing", (_data, metadata) => this.startTyping(metadata.user_id));
  }

  showMembers() {
    const names = [];
    this.channel.members.each((member) => names.push(member.info.name));
    names.sort();
    $("online").replaceChildren(...names.map((name) => {
      const item = document.createElement("li");
      item.textContent = name;
      if (name === this.me) item.className = "me";
      return item;
    }));
    $("count").textContent = String(names.length);
  }

  startTyping(userId) {
    clearTimeout(this.typing.get(userId));
    this.typing.set(userId, setTimeout(() => this.stopTyping(userId), TYPING_SHOWN_MS));
    this.showTyping();
  }

  stopTyping(userId) {
    clearTimeout(this.typing.get(userId));
    if (this.typing.delete(userId)) this.showTyping();
  }

  showTyping() {
    const names = [...this.typing.keys()].sort();
    $("typing").textContent = names.length === 0 ? ""
      : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
  }

  sendTyping() {
    const now = Date.now();
    if (!this.channel.subscribed || now - this.lastTypingSent < TYPING_EVERY_MS) return;
    this.lastTypingSent = now;
    this.channel.trigger("client-typing", {});
  }

  async send(text) {
    const socket_id = this.pusher.connection.socket_id;
    const response = await post("/messages", { text, socket_id });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    this.lastTypingSent = 0; // the next keystroke is a new "is typing"
    addMessage(answer, true);
  }
}

let room = null;

function enter(name, config) {
  show($("login"), false);
  show($("account"), true);
  show($("room"), true);
  $("me").textContent = name;
  room = new Room(name, config);
  $("text").focus();
}

async function start() {
  if (typeof Pusher === "undefined") {
    // The app answers 503 with what to do when pusher-js is not installed.
    const response = await fetch("/pusher.min.js");
    alertText(`pusher-js did not load: ${await response.text()}`);
    return;
  }
  const [me, config] = await Promise.all([fetch("/me"), fetch("/config")]);
  const { name } = await me.json();
  if (name) enter(name, await config.json());
  else show($("login"), true);
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await post("/login", { name: $("name").value });
  const answer = await response.json();
  if (!response.ok) return alertText(answer.error);
  alertText("");
  enter(answer.name, await (await fetch("/config")).json());
});

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  try {
    await room.send(text);
    $("text").value = "";
    alertText("");
  } catch (error) {
    alertText(`Not sent: ${error.message}`);
  }
});

$("text").addEventListener("input", () => room && room.sendTyping());

$("logout").addEventListener("click", async () => {
  if (room) room.pusher.disconnect();
  await post("/logout");
  location.reload();
});

start();
