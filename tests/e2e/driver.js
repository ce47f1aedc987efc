#!/usr/bin/env node
// Drives pusher-js (the official browser/Node client) for kanal's end-to-end tests.
//
// Newline-delimited JSON commands on stdin, newline-delimited JSON records on stdout (console
// output goes to stderr). Every command {"cmd","id",...} gets one record
// {"type":"ack","id","cmd","ok":true,"result"} or {..."ok":false,"error"} once carried out.
// Commands ("client" names a pusher-js instance):
//   connect {client,key,port,host?,secret?,appId?,options?,presence?,userAuth?,masterKey?,
//     authError?,authSecret?,authKey?,authResponse?,userAuthError?,userAuthResponse?,frames?,
//     autoConnect?,clientActivityTimeout?,transport?}  (transport: "ws" (default),
//     "xhr_streaming" or "xhr_polling": pusher-js's enabledTransports, against host:port)
//   subscribe {client,channel,presence?,authError?,authSecret?,authKey?,authResponse?}
//   unsubscribe {client,channel}   trigger {client,channel,event,data}
//   signin {client,userAuth?,userAuthError?,userAuthResponse?}   send_raw {client,event,data,
//     channel?}   send_text {client,text}   members / channel_state {client,channel}
//   disconnect / reconnect / drop / forget {client}   exit
// Records (all but ready/ack/exit/driver_error carry "client"):
//   ready {pusher_js,node}  exit {code}  driver_error {error}
//   state {previous,current,at}  connected {socket_id}  connecting_in {delay}  error {error}
//   socket {event:"created"|"open"|"close"|"error",url?,code?,reason?,message?,at}
//   (at: the driver's performance.now() in ms, for measuring pusher-js's own delays)
//   frame {dir:"in"|"out",data}        (raw message text, WebSocket or HTTP; connect frames:true)
//   message {event,channel,data,user_id}       (every message pusher-js decodes, data parsed)
//   event {channel,event,data,metadata,user_id}  (everything a channel emits, pusher:* too)
//   subscribed {channel,data,members}  subscription_error {channel,status,error}
//   member_added / member_removed {channel,member:{id,info},members}
//   members {id,channel,count,me,myID,members}  trigger_result {id,channel,event,ok,error}
//   auth_request {kind:"channel"|"user",channel?,socket_id}  auth_exception {channel?,error}
//   signin_success {user_data,raw}  signin_error {status,error}  user_event {event,data}
//   watchlist {name:"online"|"offline",user_ids,event}
// members = {count,me:{id,info},myID,members:{user_id:user_info}} (pusher-js's Members).
// options go verbatim into new Pusher(key, options) over the defaults below: e.g. wsPath, and
//   channelAuthorization / userAuthentication {endpoint, transport: "ajax", headers} to use a
//   real auth endpoint instead of the driver's own signer (a Cookie header is allowed).
// clientActivityTimeout (ms): once connected, pusher-js pings only after this much silence
//   instead of min(its option, the server's activity_timeout), as clients that ignore the
//   server's value do (pusher-websocket-java); lets tests see the server's own heartbeat.
'use strict';

const http = require('http');
const readline = require('readline');
const PusherJS = require('pusher-js'); // Node build: already PusherWithEncryption (tweetnacl)
const PusherServer = require('pusher'); // Node server SDK: computes real auth signatures

for (const name of ['log', 'info', 'warn', 'error', 'debug']) {
  console[name] = (...args) => process.stderr.write(`[driver ${name}] ${args.map(String).join(' ')}\n`);
}
if (process.env.KANAL_E2E_PUSHER_LOG) {
  PusherJS.log = (msg) => process.stderr.write(`[pusher-js] ${msg}\n`);
}

// JSON-safe copy: Errors keep name/message/own fields, cycles and deep nesting are cut.
function safe(value, depth = 0, path = []) {
  if (value === undefined) return null;
  if (value === null || typeof value !== 'object') {
    return typeof value === 'function' || typeof value === 'symbol' ? String(value) : value;
  }
  if (path.includes(value)) return '[cycle]';
  if (depth > 12) return '[too deep]';
  if (value instanceof Uint8Array) return Buffer.from(value).toString('base64');
  const inner = path.concat([value]);
  if (Array.isArray(value)) return value.map((v) => safe(v, depth + 1, inner));
  const out = value instanceof Error ? { name: value.name, message: value.message } : {};
  for (const k of Object.keys(value)) {
    if (k === 'target' || k === 'currentTarget') continue; // faye events point at the socket
    out[k] = safe(value[k], depth + 1, inner);
  }
  return out;
}

function emit(record) {
  process.stdout.write(JSON.stringify(safe(record)) + '\n');
}

const clients = new Map(); // name -> client state
const byTimeline = new Map(); // pusher.timeline -> client name (attributes sockets)

// Raw socket tap: every socket pusher-js opens goes through its transport's getSocket hook;
// the strategy options carry the instance's timeline, which tells us which client owns it.
function socketOwner(options) {
  const name = options && byTimeline.get(options.timeline);
  const state = name && clients.get(name);
  return state ? [name, state] : [null, null];
}

const wsHooks = PusherJS.Runtime.Transports.ws.hooks;
const originalGetSocket = wsHooks.getSocket;
wsHooks.getSocket = function (url, options) {
  const socket = originalGetSocket.call(this, url, options);
  const [name, state] = socketOwner(options);
  if (!state) return socket;
  emit({ client: name, type: 'socket', event: 'created', url, at: performance.now() });
  const dispatch = socket.dispatchEvent;
  socket.dispatchEvent = function (event) {
    if (event.type === 'message') {
      if (state.frames) emit({ client: name, type: 'frame', dir: 'in', data: event.data });
    } else if (event.type === 'close') {
      emit({ client: name, type: 'socket', event: 'close', code: event.code, reason: event.reason,
        at: performance.now() });
    } else {
      emit({ client: name, type: 'socket', event: event.type, message: event.message,
        at: performance.now() });
    }
    return dispatch.call(this, event);
  };
  tapSend(socket, name, state);
  return socket;
};

function tapSend(socket, name, state) {
  const send = socket.send;
  socket.send = function (data, ...rest) {
    if (state.frames) emit({ client: name, type: 'frame', dir: 'out', data });
    return send.call(this, data, ...rest);
  };
}

// The HTTP transports' sockets (pusher-js's HTTPSocket, core/http/http_socket.ts) emit
// the same records: their messages arrive through onEvent, their opening and closing through
// onOpen and onClose (with the code of kanal's c[...] frame, or 1006).
for (const transport of ['xhr_streaming', 'xhr_polling']) {
  const hooks = PusherJS.Runtime.Transports[transport].hooks;
  const getSocket = hooks.getSocket;
  hooks.getSocket = function (url, options) {
    const socket = getSocket.call(this, url, options);
    const [name, state] = socketOwner(options);
    if (!state) return socket;
    emit({ client: name, type: 'socket', event: 'created', url, at: performance.now() });
    const { onEvent, onOpen, onClose } = socket;
    socket.onEvent = function (event) {
      if (state.frames && this.readyState === 1) {
        emit({ client: name, type: 'frame', dir: 'in', data: event });
      }
      return onEvent.call(this, event);
    };
    socket.onOpen = function (...args) {
      if (this.readyState === 0) emit({ client: name, type: 'socket', event: 'open', at: performance.now() });
      return onOpen.apply(this, args);
    };
    socket.onClose = function (code, reason, wasClean) {
      if (this.readyState !== 3) {
        emit({ client: name, type: 'socket', event: 'close', code, reason, at: performance.now() });
      }
      return onClose.call(this, code, reason, wasClean);
    };
    tapSend(socket, name, state);
    return socket;
  };
}

// A browser sends the page's cookies with pusher-js's auth requests (transport "ajax") by
// itself; Node has no cookie jar, and the XMLHttpRequest polyfill pusher-js uses there refuses
// a Cookie header. Lift that check, so that a test can hand the session cookie a browser would
// send to a real auth endpoint: options.channelAuthorization.headers = {Cookie: "..."}.
const createXHR = PusherJS.Runtime.createXHR;
PusherJS.Runtime.createXHR = function () {
  const xhr = createXHR.call(this);
  if (typeof xhr.setDisableHeaderCheck === 'function') xhr.setDisableHeaderCheck(true);
  return xhr;
};

// A local HTTP endpoint that refuses with a given status, so that refusals travel through
// pusher-js's own ajax authorizer and surface exactly as a real refusing endpoint would
// (HTTPAuthError -> subscription_error / signin_error carrying "status").
let refuseServer = null;
function refuseUrl(status) {
  if (!refuseServer) {
    refuseServer = http.createServer((req, res) => {
      const code = Number(req.url.split('/').pop()) || 403;
      req.resume();
      req.on('end', () => res.writeHead(code, { 'Content-Type': 'text/plain' }).end('refused'));
    });
    refuseServer.unref();
    return new Promise((resolve) => {
      refuseServer.listen(0, '127.0.0.1', () => resolve(refuseUrl(status)));
    });
  }
  return Promise.resolve(`http://127.0.0.1:${refuseServer.address().port}/refuse/${status}`);
}

function refuse(status, query, type, callback) {
  refuseUrl(status).then(
    (endpoint) => PusherJS.Runtime.getAuthorizers().ajax(
      PusherJS.Runtime, query, { endpoint, headers: {} }, type, callback),
    (err) => callback(err, null),
  );
}

function signer(state, o) {
  return new PusherServer({ appId: state.appId, key: o.authKey || state.key,
    secret: o.authSecret || state.secret, encryptionMasterKeyBase64: state.masterKey || undefined });
}

function channelAuthorizer(state) {
  return (params, callback) => {
    const o = Object.assign({}, state, state.overrides.get(params.channelName) || {});
    emit({ client: state.name, type: 'auth_request', kind: 'channel', channel: params.channelName,
      socket_id: params.socketId });
    if (o.authError) {
      const query = `socket_id=${encodeURIComponent(params.socketId)}` +
        `&channel_name=${encodeURIComponent(params.channelName)}`;
      refuse(o.authError, query, 'channel-authorization', callback);
      return;
    }
    if (o.authResponse) { callback(null, o.authResponse); return; }
    try {
      const presence = params.channelName.startsWith('presence-') ? o.presence : undefined;
      callback(null, signer(state, o).authorizeChannel(
        params.socketId, params.channelName, presence || undefined));
    } catch (err) {
      emit({ client: state.name, type: 'auth_exception', channel: params.channelName, error: err });
      callback(err, null);
    }
  };
}

function userAuthenticator(state) {
  return (params, callback) => {
    emit({ client: state.name, type: 'auth_request', kind: 'user', socket_id: params.socketId });
    if (state.userAuthError) {
      const query = `socket_id=${encodeURIComponent(params.socketId)}`;
      refuse(state.userAuthError, query, 'user-authentication', callback);
      return;
    }
    if (state.userAuthResponse) { callback(null, state.userAuthResponse); return; }
    try {
      if (!state.userAuth) throw new Error('no userAuth given to connect or signin');
      callback(null, signer(state, state).authenticateUser(params.socketId, state.userAuth));
    } catch (err) {
      emit({ client: state.name, type: 'auth_exception', kind: 'user', error: err });
      callback(err, null);
    }
  };
}

function describeMembers(m) {
  return { count: m.count, me: m.me, myID: m.myID, members: m.members };
}

function tapChannel(state, channel) {
  if (channel.__kanalTapped) return channel;
  channel.__kanalTapped = true;
  const client = state.name;
  const name = channel.name;
  const isPresence = name.startsWith('presence-');
  const originalEmit = channel.emit;
  channel.emit = function (event, data, metadata) {
    const shown = isPresence && data === channel.members ? describeMembers(data) : data;
    emit({ client, type: 'event', channel: name, event, data: shown,
      metadata: metadata || null, user_id: (metadata && metadata.user_id) || null });
    if (event === 'pusher:subscription_succeeded') {
      emit({ client, type: 'subscribed', channel: name, data: shown,
        members: isPresence ? describeMembers(channel.members) : null });
    } else if (event === 'pusher:subscription_error') {
      emit({ client, type: 'subscription_error', channel: name, status: (data && data.status) || null,
        error: data });
    } else if (event === 'pusher:member_added' || event === 'pusher:member_removed') {
      emit({ client, type: event.slice(7), channel: name, member: data,
        members: describeMembers(channel.members) });
    }
    return originalEmit.call(this, event, data, metadata);
  };
  return channel;
}

function need(cmd, field) {
  if (cmd[field] === undefined || cmd[field] === null) throw new Error(`'${field}' is required`);
  return cmd[field];
}

function getClient(cmd) {
  const state = clients.get(need(cmd, 'client'));
  if (!state) throw new Error(`unknown client ${JSON.stringify(cmd.client)}`);
  return state;
}

function getChannel(state, channelName) {
  const channel = state.pusher.channel(channelName);
  if (!channel) throw new Error(`client ${state.name} has no channel ${channelName}`);
  return channel;
}

const commands = {
  connect(cmd) {
    const name = need(cmd, 'client');
    if (clients.has(name)) throw new Error(`client ${name} already exists`);
    const state = { name, key: need(cmd, 'key'), appId: String(cmd.appId || '1'),
      frames: Boolean(cmd.frames), overrides: new Map(), pusher: null };
    for (const k of ['secret', 'masterKey', 'presence', 'userAuth', 'authError', 'authSecret',
      'authKey', 'authResponse', 'userAuthError', 'userAuthResponse']) state[k] = cmd[k] || null;
    const options = Object.assign({
      wsHost: cmd.host || '127.0.0.1',
      wsPort: need(cmd, 'port'),
      httpHost: cmd.host || '127.0.0.1',
      httpPort: need(cmd, 'port'),
      forceTLS: false,
      enabledTransports: [cmd.transport || 'ws'],
      cluster: 'mt1',
      disableStats: true,
      channelAuthorization: { customHandler: channelAuthorizer(state) },
      userAuthentication: { customHandler: userAuthenticator(state) },
    }, cmd.options || {});
    // The constructor connects at once when PusherJS.isReady; hold that back until every
    // listener (and the socket tap) is in place, so no state change or frame is missed.
    // (isReady is a static of the base class that PusherWithEncryption extends.)
    const Base = Object.prototype.hasOwnProperty.call(PusherJS, 'isReady')
      ? PusherJS : Object.getPrototypeOf(PusherJS);
    const wasReady = Base.isReady;
    let pusher;
    Base.isReady = false;
    try {
      pusher = new PusherJS(state.key, options);
    } finally {
      Base.isReady = wasReady;
    }
    state.pusher = pusher;
    clients.set(name, state);
    byTimeline.set(pusher.timeline, name);
    const conn = pusher.connection;
    conn.bind('state_change', (s) => emit({ client: name, type: 'state', previous: s.previous,
      current: s.current, at: performance.now() }));
    conn.bind('connected', () => {
      if (cmd.clientActivityTimeout) {
        // connection_manager.ts took min(...) and armed its timer just before "connected";
        // override the value and re-arm (resetActivityCheck is private in TS, public in JS).
        conn.activityTimeout = Number(cmd.clientActivityTimeout);
        conn.resetActivityCheck();
      }
      emit({ client: name, type: 'connected', socket_id: conn.socket_id });
    });
    conn.bind('connecting_in', (delay) => emit({ client: name, type: 'connecting_in', delay }));
    conn.bind('error', (error) => emit({ client: name, type: 'error', error }));
    conn.bind('message', (m) => {
      emit({ client: name, type: 'message', event: m.event, channel: m.channel === undefined
        ? null : m.channel, data: m.data, user_id: m.user_id || null });
      if (m.event === 'pusher:signin_success') {
        emit({ client: name, type: 'signin_success', user_data: pusher.user.user_data,
          raw: m.data });
      }
    });
    pusher.user.bind('pusher:signin_error', (e) => emit({ client: name, type: 'signin_error',
      status: (e && e.status) || null, error: e }));
    pusher.user.bind_global((event, data) => {
      if (event.startsWith('pusher:')) return;
      emit({ client: name, type: 'user_event', event, data });
    });
    for (const which of ['online', 'offline']) {
      pusher.user.watchlist.bind(which, (e) => emit({ client: name, type: 'watchlist', name: which,
        user_ids: e.user_ids, event: e }));
    }
    if (cmd.autoConnect !== false) pusher.connect();
  },

  subscribe(cmd) {
    const state = getClient(cmd);
    const channelName = need(cmd, 'channel');
    const override = {};
    for (const k of ['presence', 'authError', 'authSecret', 'authKey', 'authResponse']) {
      if (cmd[k] !== undefined) override[k] = cmd[k];
    }
    state.overrides.set(channelName, override);
    tapChannel(state, state.pusher.subscribe(channelName));
  },

  unsubscribe(cmd) { getClient(cmd).pusher.unsubscribe(need(cmd, 'channel')); },

  trigger(cmd) {
    const state = getClient(cmd);
    let ok = false;
    let error = null;
    try {
      ok = getChannel(state, need(cmd, 'channel')).trigger(need(cmd, 'event'), cmd.data);
    } catch (err) {
      error = err;
    }
    emit({ client: state.name, type: 'trigger_result', id: cmd.id, channel: cmd.channel,
      event: cmd.event, ok, error });
    return { ok, error };
  },

  signin(cmd) {
    const state = getClient(cmd);
    for (const k of ['userAuth', 'userAuthError', 'userAuthResponse']) {
      if (cmd[k] !== undefined) state[k] = cmd[k];
    }
    state.pusher.signin();
  },

  send_raw(cmd) {
    return { ok: getClient(cmd).pusher.connection.send_event(need(cmd, 'event'), cmd.data, cmd.channel) };
  },
  send_text(cmd) { return { ok: getClient(cmd).pusher.connection.send(need(cmd, 'text')) }; },

  members(cmd) {
    const state = getClient(cmd);
    const channel = getChannel(state, need(cmd, 'channel'));
    if (!channel.members) throw new Error(`${cmd.channel} is not a presence channel`);
    const record = Object.assign({ client: state.name, type: 'members', id: cmd.id,
      channel: cmd.channel }, describeMembers(channel.members));
    emit(record);
    return describeMembers(channel.members);
  },

  channel_state(cmd) {
    const channel = getChannel(getClient(cmd), need(cmd, 'channel'));
    return { subscribed: channel.subscribed, subscriptionPending: channel.subscriptionPending,
      subscriptionCount: channel.subscriptionCount === undefined ? null : channel.subscriptionCount };
  },

  disconnect(cmd) { getClient(cmd).pusher.disconnect(); },
  reconnect(cmd) { getClient(cmd).pusher.connect(); },

  drop(cmd) {
    // Close the underlying socket without telling pusher-js: as a network drop would, this
    // leads pusher-js into its reconnect path.
    const conn = getClient(cmd).pusher.connection.connection;
    if (!conn) throw new Error('not connected');
    conn.close();
  },

  forget(cmd) {
    const state = getClient(cmd);
    state.pusher.disconnect();
    byTimeline.delete(state.pusher.timeline);
    clients.delete(state.name);
  },

  exit() { shutdown(0); },
};

function handleLine(line) {
  if (!line.trim()) return;
  let cmd = null;
  try {
    cmd = JSON.parse(line);
    const handler = Object.prototype.hasOwnProperty.call(commands, cmd.cmd) && commands[cmd.cmd];
    if (!handler) throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
    const result = handler(cmd) || {};
    if (cmd.cmd !== 'exit') {
      emit({ type: 'ack', id: cmd.id ?? null, cmd: cmd.cmd, client: cmd.client, ok: true, result });
    }
  } catch (err) {
    emit({ type: 'ack', id: (cmd && cmd.id) ?? null, cmd: cmd && cmd.cmd, client: cmd && cmd.client,
      ok: false, error: err instanceof Error ? err.message : String(err) });
  }
}

let exiting = false;
function shutdown(code) {
  if (exiting) return;
  exiting = true;
  for (const state of clients.values()) {
    try { state.pusher.disconnect(); } catch (_) { /* already gone */ }
  }
  emit({ type: 'exit', code });
  // Let stdout drain, then leave even if a socket is still closing.
  process.stdout.write('', () => process.exit(code));
}

process.on('uncaughtException', (err) => emit({ type: 'driver_error', error: err }));
process.on('unhandledRejection', (err) => emit({ type: 'driver_error', error: err }));
process.on('SIGTERM', () => shutdown(0));

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', handleLine);
rl.on('close', () => shutdown(0));
emit({ type: 'ready', pusher_js: require('pusher-js/package.json').version, node: process.version });
