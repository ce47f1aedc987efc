// kanal's live console: plain JavaScript, no build step, nothing loaded from elsewhere.
// Every request carries the admin token as a bearer token; the token lives in this tab's
// sessionStorage only. Everything shown is set with textContent: channel names, event names,
// user_info and webhook bodies come from clients and must never become markup.
"use strict";

const TOKEN_KEY = "kanal-console-token";
const MAX_LOG = 500;        // rows kept in the page (the server keeps its own bounded ring)
const MAX_WEBHOOKS = 200;
const OVERVIEW_EVERY = 2000; // ms between count and channel refreshes
const MIN_POLL_GAP = 250;    // ms: at most four long polls a second under a busy log

const $ = (id) => document.getElementById(id);
const state = {
  app: null, cursor: { events: 0, webhooks: 0 }, log: [], held: [], webhooks: [],
  paused: false, generation: 0, lost: 0,
};

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + token(), ...(options.headers || {}) };
  const response = await fetch("api/" + path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
  return body;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function clock(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function setStatus(text) { $("status").textContent = text; }

// --- sign-in ---------------------------------------------------------------------------

function showLogin(message) {
  state.generation++; // stops the loops of the previous session
  sessionStorage.removeItem(TOKEN_KEY);
  $("console").hidden = true;
  $("sign-out").hidden = true;
  document.querySelector(".app-picker").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function start() {
  let listing;
  try {
    listing = await api("apps");
  } catch (error) {
    showLogin(error instanceof Unauthorized ? (token() ? "Wrong token." : "") : error.message);
    return;
  }
  $("login").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  const select = $("app");
  select.replaceChildren(...listing.apps.map((a) => {
    const option = el("option", a.id + " (" + a.key + ")" + (a.enabled ? "" : " disabled"));
    option.value = a.id;
    return option;
  }));
  const wanted = new URLSearchParams(location.hash.slice(1)).get("app");
  if (listing.apps.some((a) => a.id === wanted)) select.value = wanted;
  document.querySelector(".app-picker").hidden = false;
  const scope = $("scope");
  scope.hidden = false;
  scope.textContent = listing.cluster ? "cluster" : "single node";
  $("scope-note").textContent = listing.cluster
    ? "Cluster mode: connections, channels and members are the cluster's; rates, the event log and webhook deliveries are this node's."
    : "One node: everything shown is this server's.";
  selectApp(select.value);
}

function selectApp(appId) {
  state.app = appId;
  state.generation++;
  state.cursor = { events: 0, webhooks: 0 };
  state.log = []; state.held = []; state.webhooks = []; state.lost = 0;
  history.replaceState(null, "", "#app=" + encodeURIComponent(appId));
  renderLog(); renderWebhooks();
  const generation = state.generation;
  overviewLoop(generation);
  streamLoop(generation);
}

// --- counts and channels -----------------------------------------------------------------

async function overviewLoop(generation) {
  while (generation === state.generation) {
    try {
      renderOverview(await api("apps/" + encodeURIComponent(state.app) + "/overview"));
      setStatus("live");
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin("The token was refused.");
      setStatus("overview failed: " + error.message);
    }
    await new Promise((resolve) => setTimeout(resolve, OVERVIEW_EVERY));
  }
}

function plural(count, noun) { return count + " " + noun + (count === 1 ? "" : "s"); }

function rate(value) { return value === null || value === undefined ? "…" : value.toFixed(1); }

function renderOverview(view) {
  $("connections").textContent = view.connections;
  $("channels-count").textContent = view.channel_count;
  $("rate-in").textContent = rate(view.messages_in_per_second);
  $("rate-out").textContent = rate(view.messages_out_per_second);
  const list = $("channel-list");
  list.replaceChildren(...view.channels.map(channelItem));
  $("channels-empty").hidden = view.channels.length > 0;
  if (view.channel_count > view.channels.length) {
    list.append(el("li", "… and " + (view.channel_count - view.channels.length) + " more", "note"));
  }
}

function channelItem(channel) {
  const item = el("li");
  item.dataset.channel = channel.name;
  item.append(el("span", channel.name, "name"));
  const users = channel.user_count === undefined ? "" : " · " + plural(channel.user_count, "user");
  item.append(el("span", plural(channel.subscription_count, "subscriber") + users, "count"));
  if (channel.members) {
    const members = el("ul", null, "members");
    for (const member of channel.members) {
      const row = el("li");
      row.dataset.userId = member.user_id;
      row.append(el("span", member.user_id + " "));
      row.append(el("code", JSON.stringify(member.user_info ?? null)));
      members.append(row);
    }
    item.append(members);
  }
  return item;
}

// --- the live log (long poll) ----------------------------------------------------------

async function streamLoop(generation) {
  let last = 0;
  while (generation === state.generation) {
    const gap = MIN_POLL_GAP - (Date.now() - last);
    if (gap > 0) await new Promise((resolve) => setTimeout(resolve, gap));
    last = Date.now();
    const query = "events=" + state.cursor.events + "&webhooks=" + state.cursor.webhooks + "&wait=20";
    let page;
    try {
      page = await api("apps/" + encodeURIComponent(state.app) + "/stream?" + query);
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin("The token was refused.");
      setStatus("stream interrupted: " + error.message + "; retrying");
      await new Promise((resolve) => setTimeout(resolve, 2000));
      continue;
    }
    if (generation !== state.generation) return;
    state.cursor = { events: page.next_event, webhooks: page.next_webhook };
    if (page.lost) { state.lost += page.lost; }
    if (page.events.length) receiveEvents(page.events);
    if (page.webhooks.length) {
      state.webhooks = state.webhooks.concat(page.webhooks).slice(-MAX_WEBHOOKS);
      renderWebhooks();
    }
  }
}

function receiveEvents(events) {
  if (state.paused) {
    state.held = state.held.concat(events).slice(-MAX_LOG);
    $("pause").textContent = "Resume (" + state.held.length + " new)";
    return;
  }
  state.log = state.log.concat(events).slice(-MAX_LOG);
  renderLog();
}

function matches(record) {
  const kind = $("filter-kind").value;
  const channel = $("filter-channel").value.trim();
  const event = $("filter-event").value.trim();
  if (kind && record.kind !== kind) return false;
  const channels = record.channels || (record.channel ? [record.channel] : []);
  if (channel && !channels.some((c) => c.includes(channel))) return false;
  if (event && !(record.event || "").includes(event)) return false;
  return true;
}

function details(record) {
  switch (record.kind) {
    case "connected": return "origin " + (record.origin || "none");
    case "disconnected": return "close code " + (record.code ?? "none");
    case "subscribed": return record.user_id ? "user " + record.user_id : "";
    case "refused": return (record.code ?? "") + " " + record.message;
    case "api_message":
      return record.event + " · " + record.size + " B" + (record.socket_id ? " · excluding " + record.socket_id : "");
    case "client_event":
      return record.event + " · " + record.size + " B" + (record.user_id ? " · user " + record.user_id : "");
    case "signed_in": case "terminated": return "user " + record.user_id;
    default: return "";
  }
}

function renderLog() {
  const rows = state.log.filter(matches).reverse().map((record) => {
    const row = el("tr", null, "kind-" + record.kind);
    const channel = record.channels ? record.channels.join(", ") : record.channel || "";
    for (const text of [clock(record.time), record.kind.replace("_", " "), record.socket_id || "", channel, details(record)]) {
      row.append(el("td", text));
    }
    return row;
  });
  $("log").replaceChildren(...rows);
  $("log-count").textContent = rows.length + " shown";
  $("lost").hidden = !state.lost;
  $("lost").textContent = state.lost + " older records were overwritten on the server before this page read them.";
}

function renderWebhooks() {
  const items = state.webhooks.slice().reverse().map((record) => {
    const item = el("li");
    item.dataset.kind = record.kind;
    item.append(el("span", record.kind, "outcome outcome-" + record.kind));
    item.append(el("span", clock(record.time) + " · " + record.events.join(", ")));
    if (record.kind === "held") {
      item.append(el("div", record.channel + (record.user_id ? " · user " + record.user_id : "") +
        " · held by the grace period until " + clock(record.release_at), "note"));
    } else if (record.kind === "cancelled") {
      item.append(el("div", record.channel + (record.user_id ? " · user " + record.user_id : "") +
        " · cancelled: the user or channel came back within the grace period", "note"));
    } else {
      const status = record.status === null ? record.error : "HTTP " + record.status;
      let line = record.endpoint + " · " + status + " · " + record.duration_ms + " ms · attempt " + record.attempt;
      if (record.next_retry) line += " · next retry " + clock(record.next_retry);
      if (record.kind === "dropped") line += " · given up";
      item.append(el("div", line, "note"));
      const body = el("details");
      body.append(el("summary", "body" + (record.truncated ? " (first 4 KiB)" : "")));
      body.append(el("pre", record.body));
      item.append(body);
    }
    return item;
  });
  $("webhooks").replaceChildren(...items);
}

// --- the trigger form ------------------------------------------------------------------

async function trigger(event) {
  event.preventDefault();
  const result = $("trigger-result");
  result.textContent = "sending…";
  try {
    await api("apps/" + encodeURIComponent(state.app) + "/events", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        channels: [$("trigger-channel").value.trim()],
        name: $("trigger-event").value.trim(),
        data: $("trigger-data").value,
      }),
    });
    result.textContent = "sent at " + clock(Date.now());
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("The token was refused.");
    result.textContent = "refused: " + error.message;
  }
}

// --- wiring ----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    start();
  });
  $("sign-out").addEventListener("click", () => showLogin(""));
  $("app").addEventListener("change", (event) => selectApp(event.target.value));
  $("trigger-form").addEventListener("submit", trigger);
  for (const id of ["filter-kind", "filter-channel", "filter-event"]) {
    $(id).addEventListener("input", renderLog);
  }
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").setAttribute("aria-pressed", String(state.paused));
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    if (!state.paused && state.held.length) {
      state.log = state.log.concat(state.held).slice(-MAX_LOG);
      state.held = [];
    }
    renderLog();
  });
  $("clear-log").addEventListener("click", () => { state.log = []; state.held = []; state.lost = 0; renderLog(); });
  if (token()) start(); else showLogin("");
});
