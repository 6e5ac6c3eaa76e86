// longtail.js: Longtail's browser client. A plain ES module, no build step.
//
//   import { Longtail } from "/longtail.js";
//   const lt = new Longtail();                 // same origin, session cookie
//   lt.on("message", (event) => show(event.message));
//   await lt.start();                          // resolves once a transport is open
//   await lt.send(friendId, "hello");          // retried safely with one client_id
//                                              // (on the WebSocket when one is open)
//
// Transports, best first: WebSocket, Server-Sent Events, XHR streaming, long-poll, then
// JSONP script tags and a forever iframe. A transport that errors, or that does not
// deliver its first `ready` message in time (a proxy buffering the stream), is dropped
// for the next one. Force one with `new Longtail({ transport: "sse" })` or `?transport=sse`
// in the page URL. Every connection resumes from the cursor (the last seq received), and
// events at or below it are dropped, so each event reaches `on()` once, in order.

export const LADDER = ["websocket", "sse", "xhr", "longpoll", "jsonp", "iframe"];
export const TRANSPORTS = [...LADDER, "multipart"];

const JSON_HEADERS = { "Content-Type": "application/json" };
const CONTROL = new Set(["ready", "heartbeat", "close", "sent", "send_failed", "error"]);
// A send on the WebSocket not answered this soon is tried again (by POST, same client_id).
const SOCKET_SEND_TIMEOUT = 10000;

export class Longtail {
  constructor(options = {}) {
    const forced = new URLSearchParams(globalThis.location?.search || "").get("transport");
    this.base = (options.base || "").replace(/\/$/, "");
    this.token = options.token || null;
    this.transport = options.transport || forced || "auto";
    if (this.transport !== "auto" && !TRANSPORTS.includes(this.transport)) {
      throw new Error(`unknown transport ${this.transport}; one of ${TRANSPORTS.join(", ")}`);
    }
    this.cursor = options.cursor ?? null;
    // A stream must show life this soon after opening, and between heartbeats (the
    // server beats every 15 s by default).
    this.firstByteTimeout = options.firstByteTimeout ?? 5000;
    this.idleTimeout = options.idleTimeout ?? 45000;
    this.pollTimeout = options.pollTimeout ?? 25;
    this.backoff = { base: 250, cap: 15000, ...options.backoff };
    this.listeners = new Map();
    this.active = null; // the name of the transport in use
    this.running = false;
    this.failures = 0;
    this.rung = 0; // position on the ladder in auto mode
    this.worked = new Set(); // transports that opened at least once
    this.connection = null;
    this.isOpen = false;
    this.watchdog = null; // fails a connection that shows no life
    this.retry = null; // the pending reconnect
    this.sequence = 0;
    this.pending = new Map(); // client_id -> the send awaiting its answer on the socket
  }

  // -- public API ---------------------------------------------------------------------

  /** Listen for an event type ("message", "friend_request", ...), "*" for all events,
   * or "status" for {state, transport} changes. Returns a function that unsubscribes. */
  on(type, handler) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(handler);
    return () => this.listeners.get(type).delete(handler);
  }

  /** Start receiving; resolves when the first transport is open. */
  start() {
    this.running = true;
    const opened = new Promise((resolve) => {
      const off = this.on("status", (status) => {
        if (status.state === "open") {
          off();
          resolve(status.transport);
        }
      });
    });
    this.connect();
    return opened;
  }

  stop() {
    this.running = false;
    clearTimeout(this.watchdog);
    clearTimeout(this.retry);
    this.connection?.close();
    this.connection = null;
    this.status("closed");
  }

  /** Send a direct message: on the WebSocket when one is open (no HTTP request per
   * message), else by POST. Network failures and 5xx are retried with the same
   * client_id, so the message is stored once however often it is tried. */
  async send(to, body, { attempts = 5 } = {}) {
    const clientId = crypto.randomUUID();
    const message = { to, body, client_id: clientId };
    let lastError;
    for (let attempt = 0; attempt < attempts; attempt++) {
      try {
        const onSocket = this.isOpen && this.connection?.send && this.sendOnSocket(message);
        return onSocket ? await onSocket : (await this.request("POST", "/api/messages", message)).message;
      } catch (error) {
        lastError = error;
        if (error.status && error.status < 500) throw error; // the request itself is wrong
        await sleep(this.delay(attempt));
      }
    }
    throw lastError;
  }

  /** The socket's answer to `message`, or null if the socket cannot take it now. */
  sendOnSocket(message) {
    if (!this.connection.send({ type: "send", ...message })) return null;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(message.client_id);
        reject(new Error("no answer on the websocket"));
      }, SOCKET_SEND_TIMEOUT);
      this.pending.set(message.client_id, { resolve, reject, timer });
    });
  }

  answered(item) {
    const waiting = this.pending.get(item.client_id);
    if (!waiting) return;
    this.pending.delete(item.client_id);
    clearTimeout(waiting.timer);
    if (item.type === "sent") return waiting.resolve(item.message);
    const error = new Error(item.error?.message || `HTTP ${item.status}`);
    error.status = item.status;
    error.code = item.error?.code;
    waiting.reject(error);
  }

  /** Call the JSON API. Missed events ride along on the answer (piggyback). */
  async request(method, path, body) {
    const headers = { ...(body === undefined ? {} : JSON_HEADERS), ...this.authHeaders() };
    if (this.cursor !== null) headers["X-Longtail-Cursor"] = String(this.cursor);
    const response = await fetch(this.base + path, {
      method,
      headers,
      credentials: "include",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = response.status === 204 ? {} : await response.json();
    if (!response.ok) {
      const error = new Error(answer.error?.message || `HTTP ${response.status}`);
      error.status = response.status;
      error.code = answer.error?.code;
      throw error;
    }
    if (answer.piggyback?.events) this.deliverAll(answer.piggyback.events);
    return answer;
  }

  // -- delivery -------------------------------------------------------------------------

  deliverAll(events) {
    for (const event of events) this.deliver(event);
  }

  /** One message from any transport: a durable event (has a seq), an ephemeral one
   * (typing, presence: no seq, never replayed) or a control message. */
  deliver(item) {
    if (item.seq === undefined) {
      if (CONTROL.has(item.type)) return this.control(item);
      this.emit(item.type, item);
      return this.emit("*", item);
    }
    if (this.cursor !== null && item.seq <= this.cursor) return; // seen already
    this.cursor = item.seq;
    this.emit(item.type, item);
    this.emit("*", item);
  }

  control(item) {
    if (item.type === "ready") {
      if (this.cursor === null) this.cursor = item.cursor;
      this.opened();
    } else if (item.type === "close") {
      // The server ends streams (lifetime, drain): come back after its hint.
      this.reconnect(item.retry_ms ?? 1000);
    } else if (item.type === "sent" || item.type === "send_failed") {
      this.answered(item);
    } else if (item.type === "error") {
      console.error("longtail: the server refused a frame", item.error);
    }
  }

  emit(type, payload) {
    for (const handler of this.listeners.get(type) || []) {
      try {
        handler(payload);
      } catch (error) {
        console.error("longtail: a listener failed", error);
      }
    }
  }

  status(state) {
    this.emit("status", { state, transport: this.active, cursor: this.cursor });
  }

  // -- connection life ------------------------------------------------------------------

  connect() {
    if (!this.running) return;
    const name = this.transport === "auto" ? LADDER[this.rung] : this.transport;
    this.active = name;
    this.sequence += 1;
    const id = this.sequence;
    this.status(this.failures ? "reconnecting" : "connecting");
    // Callbacks of a replaced connection are ignored: only the current one may act.
    const current = () => id === this.sequence;
    const hooks = {
      deliver: (item) => {
        if (!current()) return;
        this.alive();
        this.deliver(item);
      },
      fail: (error) => current() && this.failed(error),
      // A stream that ends after `ready` is resumed at once; one that ends before it
      // (an error page, a proxy refusing) has failed.
      ended: () => current() && (this.isOpen ? this.reconnect(0) : this.failed(new Error("ended"))),
      alive: () => current() && this.alive(),
    };
    this.isOpen = false;
    this.connection = OPEN[name](this, hooks);
    this.watch(this.firstByteTimeout, "no first message");
  }

  opened() {
    if (!this.isOpen) {
      this.isOpen = true;
      this.failures = 0;
      this.worked.add(this.active);
      this.alive();
      this.status("open");
    }
  }

  /** Some life was seen: re-arm the watchdog, unless the stream has not opened yet. */
  alive() {
    if (this.isOpen) this.watch(this.idleTimeout, "stream went quiet");
  }

  /** Long-polls answer within their timeout and need no watchdog. */
  watch(ms, reason) {
    clearTimeout(this.watchdog);
    if (this.active === "longpoll" || this.active === "jsonp") return;
    this.watchdog = setTimeout(() => this.failed(new Error(reason)), ms);
  }

  failed(error) {
    if (!this.running) return;
    const neverOpened = !this.isOpen && !this.worked.has(this.active);
    this.failures += 1;
    if (error?.code === "cursor_ahead") {
      this.cursor = null; // the server forgot us (a reset database): start from now
    }
    if (this.transport === "auto" && neverOpened && this.rung < LADDER.length - 1) {
      // This transport does not get through here (blocked, or buffered by a proxy).
      this.rung += 1;
      this.emit("fallback", { from: this.active, to: LADDER[this.rung], reason: String(error) });
      this.reconnect(0);
      return;
    }
    this.reconnect(this.delay(this.failures));
  }

  reconnect(ms) {
    clearTimeout(this.watchdog);
    clearTimeout(this.retry);
    this.connection?.close();
    this.connection = null;
    this.sequence += 1; // silence the old connection's callbacks
    if (!this.running) return;
    this.retry = setTimeout(() => this.connect(), ms);
  }

  /** Exponential backoff with jitter, so a fleet of clients does not return in step. */
  delay(attempt) {
    const ceiling = Math.min(this.backoff.cap, this.backoff.base * 2 ** attempt);
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  authHeaders() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  url(path, params = {}) {
    const query = new URLSearchParams();
    if (this.cursor !== null) query.set("cursor", String(this.cursor));
    for (const [key, value] of Object.entries(params)) query.set(key, String(value));
    const text = query.toString();
    return `${this.base}${path}${text ? "?" + text : ""}`;
  }
}

// -- transports: open(client, hooks) returns an object with close() --------------------

const OPEN = {
  websocket(client, hooks) {
    const url = new URL(client.url("/api/events/ws"), globalThis.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    socket.onmessage = (message) => hooks.deliver(JSON.parse(message.data));
    socket.onclose = (closing) => {
      const error = new Error(`websocket closed ${closing.code} ${closing.reason}`);
      error.code = closing.reason;
      hooks.fail(error);
    };
    const send = (frame) => socket.readyState === WebSocket.OPEN && (socket.send(JSON.stringify(frame)), true);
    return { close: () => socket.close(), send };
  },

  sse(client, hooks) {
    const source = new EventSource(client.url("/api/events/stream"), { withCredentials: true });
    source.onmessage = (message) => hooks.deliver(JSON.parse(message.data));
    for (const kind of ["ready", "heartbeat", "close"]) {
      source.addEventListener(kind, (message) => hooks.deliver(JSON.parse(message.data)));
    }
    // EventSource would retry by itself; we reconnect with the cursor and backoff.
    source.onerror = () => hooks.fail(new Error("event stream failed"));
    return { close: () => source.close() };
  },

  xhr(client, hooks) {
    const xhr = new XMLHttpRequest();
    let seen = 0;
    const read = () => {
      const text = xhr.responseText;
      const end = text.lastIndexOf("\n") + 1;
      for (const line of text.slice(seen, end).split("\n")) {
        if (line.trim()) hooks.deliver(JSON.parse(line));
      }
      seen = Math.max(seen, end);
      if (end > 0) hooks.alive();
    };
    xhr.open("GET", client.url("/api/events/xhr"));
    xhr.withCredentials = true;
    for (const [name, value] of Object.entries(client.authHeaders())) xhr.setRequestHeader(name, value);
    xhr.onprogress = read; // readyState 3: the part received so far
    xhr.onload = () => {
      if (xhr.status !== 200) return hooks.fail(httpError(xhr.status, xhr.responseText));
      read();
      hooks.ended();
    };
    xhr.onerror = () => hooks.fail(new Error("xhr stream failed"));
    xhr.send();
    return { close: () => xhr.abort() };
  },

  multipart(client, hooks) {
    const controller = new AbortController();
    (async () => {
      const response = await fetch(client.url("/api/events/multipart"), {
        credentials: "include",
        headers: client.authHeaders(),
        signal: controller.signal,
      });
      if (response.status !== 200) throw httpError(response.status, await response.text());
      // Our parts are one line of JSON each; boundary and header lines are skipped.
      await readLines(response.body, (line) => {
        if (line.startsWith("{")) hooks.deliver(JSON.parse(line));
      });
      hooks.ended();
    })().catch((error) => controller.signal.aborted || hooks.fail(error));
    return { close: () => controller.abort() };
  },

  longpoll(client, hooks) {
    const controller = new AbortController();
    (async () => {
      // No cursor yet: this answers at once with the current one.
      while (!controller.signal.aborted) {
        const response = await fetch(client.url("/api/events", { timeout: client.pollTimeout }), {
          credentials: "include",
          headers: client.authHeaders(),
          signal: controller.signal,
        });
        const answer = await response.json();
        if (!response.ok) throw httpError(response.status, answer);
        hooks.deliver({ type: "ready", cursor: answer.cursor });
        for (const event of answer.events) hooks.deliver(event);
        if (client.cursor === null) client.cursor = answer.cursor;
      }
    })().catch((error) => controller.signal.aborted || hooks.fail(error));
    return { close: () => controller.abort() };
  },

  jsonp(client, hooks) {
    let closed = false;
    let script = null;
    const poll = () => {
      if (closed) return;
      const name = `__longtail_jsonp_${client.sequence}_${Math.random().toString(36).slice(2)}`;
      globalThis[name] = (answer) => {
        delete globalThis[name];
        script?.remove();
        if (closed) return;
        if (answer.error) {
          const error = new Error(answer.error.message);
          error.code = answer.error.code;
          return hooks.fail(error);
        }
        hooks.deliver({ type: "ready", cursor: answer.cursor });
        for (const event of answer.events) hooks.deliver(event);
        if (client.cursor === null) client.cursor = answer.cursor;
        poll();
      };
      const params = { callback: name, timeout: client.pollTimeout };
      if (client.token) params.token = client.token;
      script = document.createElement("script");
      script.src = client.url("/api/events/jsonp", params);
      // A 4xx answer still calls back with the error; a failed load does not.
      script.onerror = () => {
        setTimeout(() => globalThis[name] && hooks.fail(new Error("script poll failed")), 0);
      };
      document.head.appendChild(script);
    };
    poll();
    return {
      close: () => {
        closed = true;
        script?.remove();
      },
    };
  },

  iframe(client, hooks) {
    const name = `__longtail_iframe_${client.sequence}`;
    globalThis[name] = (item) => hooks.deliver(item);
    const frame = document.createElement("iframe");
    const params = { callback: name };
    if (client.token) params.token = client.token;
    frame.style.display = "none";
    frame.title = "longtail";
    frame.src = client.url("/api/events/iframe", params);
    // The document ends at the stream's end (lifetime, drain) or on an error page.
    frame.onload = () => hooks.ended();
    document.body.appendChild(frame);
    return {
      close: () => {
        delete globalThis[name];
        frame.remove();
      },
    };
  },
};

async function readLines(stream, onLine) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += decoder.decode(value, { stream: true });
    const lines = buffered.split(/\r?\n/);
    buffered = lines.pop();
    for (const line of lines) onLine(line);
  }
}

function httpError(status, body) {
  let parsed = body;
  try {
    parsed = typeof body === "string" ? JSON.parse(body) : body;
  } catch {
    parsed = {};
  }
  const error = new Error(parsed?.error?.message || `HTTP ${status}`);
  error.status = status;
  error.code = parsed?.error?.code;
  return error;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
