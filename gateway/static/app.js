// app.js: Longtail's web chat. Plain ES modules, no framework, no build step.
//
// The page loads its state through the REST API, then keeps it current from the push
// stream, which one tab per browser holds for all (tabs.js). Message bodies are only ever
// put on the page as text; links are made from http(s) URLs alone.

import { SharedFeed } from "./tabs.js";

const $ = (id) => document.getElementById(id);
const TYPING_SHOWN_MS = 4000;
const TYPING_SENT_EVERY_MS = 2500;
const URL_PATTERN = /\bhttps?:\/\/[^\s<>"']+/g;

const state = {
  me: null,
  friends: { friends: [], incoming: [], outgoing: [] },
  online: new Set(),
  conversations: [],
  current: null, // the open conversation's id
  room: null, // the open room's details (members), when it is a room
  messages: new Map(), // conversation id -> messages, oldest first
  older: new Map(), // conversation id -> `before` for the previous page, or null
  pending: new Map(), // client_id -> {conversationId, body, to, failed}
  typing: new Map(), // conversation id -> {name, until}
  seen: new Map(), // conversation id -> the newest message id the other side has read
  readUpTo: new Map(), // conversation id -> the newest message id we told the server we read
  lastTypingSent: 0,
  feed: null,
};

// -- the API --------------------------------------------------------------------------

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(answer.error?.message || `HTTP ${response.status}`);
    error.status = response.status;
    error.code = answer.error?.code;
    throw error;
  }
  return answer;
}

// -- start ----------------------------------------------------------------------------

async function boot() {
  try {
    state.me = await api("GET", "/api/me");
  } catch {
    return showAuth();
  }
  await showChat();
}

function showAuth() {
  $("auth").hidden = false;
  $("chat").hidden = true;
  document.title = "Longtail";
}

async function showChat() {
  $("auth").hidden = true;
  $("chat").hidden = false;
  $("me-name").textContent = state.me.username;
  const { cursor } = await api("GET", "/api/events");
  await Promise.all([loadFriends(), loadConversations()]);
  const feed = (state.feed = new SharedFeed({ name: `longtail-${state.me.id}` }));
  feed.on("*", onEvent);
  feed.on("status", (s) => ($("connection").textContent = s.state === "open" ? `live · ${s.transport}` : s.state));
  feed.on("role", (role) => (document.body.dataset.role = role));
  feed.start(cursor);
  window.longtailFeed = feed; // for the console, and the browser tests
  document.addEventListener("visibilitychange", () => !document.hidden && markRead());
}

for (const [form, path] of [["login-form", "/api/login"], ["register-form", "/api/register"]]) {
  $(form).addEventListener("submit", async (submit) => {
    submit.preventDefault();
    const data = Object.fromEntries(new FormData(submit.target));
    const error = submit.target.querySelector(".error");
    error.textContent = "";
    try {
      await api("POST", path, data);
      if (path === "/api/register") await api("POST", "/api/login", data);
      state.me = await api("GET", "/api/me");
      await showChat();
    } catch (failure) {
      error.textContent = failure.message;
    }
  });
}

$("logout").addEventListener("click", async () => {
  await api("POST", "/api/logout").catch(() => {});
  location.reload();
});

$("notify").addEventListener("click", async () => {
  if ("Notification" in window) await Notification.requestPermission();
  $("notify").hidden = Notification.permission === "granted";
});

// -- friends ----------------------------------------------------------------------------

async function loadFriends() {
  state.friends = await api("GET", "/api/friends");
  state.online = new Set(state.friends.friends.filter((f) => f.online).map((f) => f.id));
  renderFriends();
}

function renderFriends() {
  const { friends, incoming, outgoing } = state.friends;
  $("friends").replaceChildren(
    ...friends.map((friend) => {
      const remove = button("×", async (click) => {
        click.stopPropagation();
        if (confirm(`Remove ${friend.username} from your friends?`)) {
          await friendAction("DELETE", `/api/friends/${friend.id}`);
        }
      }, "link remove");
      remove.setAttribute("aria-label", `Remove ${friend.username}`);
      const item = row([dot(state.online.has(friend.id)), text("span", friend.username), remove]);
      item.classList.add("clickable");
      item.dataset.user = friend.id;
      item.tabIndex = 0;
      item.setAttribute("role", "button");
      item.setAttribute("aria-label", `Chat with ${friend.username}${state.online.has(friend.id) ? " (online)" : ""}`);
      const open = () => openDirect(friend);
      item.addEventListener("click", open);
      item.addEventListener("keydown", (key) => key.key === "Enter" && open());
      return item;
    }),
  );
  $("incoming").replaceChildren(
    ...incoming.map((user) =>
      row([
        text("span", `${user.username} wants to be friends`),
        button("Accept", () => friendAction("POST", "/api/friends", { username: user.username })),
        button("Decline", () => friendAction("DELETE", `/api/friends/${user.id}`), "link"),
      ]),
    ),
  );
  $("outgoing").replaceChildren(...outgoing.map((user) => row([text("span", `Asked ${user.username}`)])));
  // Friends and presence re-render this list at any time: keep what the user ticked.
  const ticked = new Set([...$("room-friends").querySelectorAll("input:checked")].map((box) => box.value));
  $("room-friends").replaceChildren(
    text("legend", "With"),
    ...friends.map((friend) => {
      const label = text("label", ` ${friend.username}`);
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "member";
      box.value = friend.id;
      box.checked = ticked.has(String(friend.id));
      box.style.width = "auto";
      label.prepend(box);
      return label;
    }),
  );
  renderMembers();
}

async function friendAction(method, path, body) {
  try {
    await api(method, path, body);
  } catch (failure) {
    $("friend-error").textContent = failure.message;
  }
}

$("add-friend").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  $("friend-error").textContent = "";
  await friendAction("POST", "/api/friends", { username: $("friend-name").value.trim() });
  $("friend-name").value = "";
});

// -- conversations ----------------------------------------------------------------------

async function loadConversations() {
  state.conversations = (await api("GET", "/api/conversations")).conversations;
  renderConversations();
}

function conversationName(conversation) {
  return conversation.kind === "group" ? `# ${conversation.name}` : conversation.with?.username || "…";
}

function renderConversations() {
  $("conversations").replaceChildren(
    ...state.conversations.map((conversation) => {
      const parts = [text("span", conversationName(conversation))];
      if (conversation.last_message) parts.push(text("span", conversation.last_message.body, "preview"));
      if (conversation.unread) parts.push(text("span", String(conversation.unread), "badge"));
      const item = row(parts);
      item.classList.add("clickable");
      item.classList.toggle("current", conversation.id === state.current);
      item.dataset.conversation = conversation.id;
      item.tabIndex = 0;
      item.setAttribute("role", "button");
      item.addEventListener("click", () => openConversation(conversation.id));
      item.addEventListener("keydown", (key) => key.key === "Enter" && openConversation(conversation.id));
      return item;
    }),
  );
  const unread = state.conversations.reduce((sum, c) => sum + c.unread, 0);
  document.title = unread ? `(${unread}) Longtail` : "Longtail";
}

function openDirect(friend) {
  const existing = state.conversations.find((c) => c.kind === "direct" && c.with?.id === friend.id);
  if (existing) openConversation(existing.id);
}

async function openConversation(id) {
  state.current = id;
  const conversation = state.conversations.find((c) => c.id === id);
  $("chat").classList.add("open");
  $("conversation-title").textContent = conversation ? conversationName(conversation) : "";
  $("composer").hidden = false;
  const isRoom = conversation?.kind === "group";
  $("invite").hidden = !isRoom;
  $("leave").hidden = !isRoom;
  state.room = isRoom ? await api("GET", `/api/rooms/${id}`) : null;
  renderMembers();
  if (!state.messages.has(id)) {
    const page = await api("GET", `/api/conversations/${id}/messages?limit=30`);
    state.messages.set(id, page.messages);
    state.older.set(id, page.before);
  }
  renderMessages({ toBottom: true });
  renderConversations();
  markRead();
  $("draft").focus();
}

$("back").addEventListener("click", () => {
  $("chat").classList.remove("open");
  state.current = null;
  renderConversations();
});

function renderMembers() {
  const members = state.room?.members || [];
  $("members").replaceChildren(
    ...members.map((member) => {
      const item = row([dot(member.id === state.me?.id || state.online.has(member.id)), text("span", member.username)]);
      item.dataset.user = member.id;
      return item;
    }),
  );
  const inside = new Set(members.map((m) => m.id));
  $("invite-who").replaceChildren(
    ...state.friends.friends
      .filter((f) => !inside.has(f.id))
      .map((f) => Object.assign(document.createElement("option"), { value: f.id, textContent: f.username })),
  );
}

$("new-room").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const form = submit.target;
  const members = [...form.querySelectorAll("input[name=member]:checked")].map((box) => Number(box.value));
  try {
    const room = await api("POST", "/api/rooms", { name: form.elements.name.value, members });
    form.reset();
    await loadConversations();
    await openConversation(room.id);
  } catch (failure) {
    form.querySelector(".error").textContent = failure.message;
  }
});

$("invite").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  await api("POST", `/api/rooms/${state.current}/members`, { user_id: Number($("invite-who").value) });
});

$("leave").addEventListener("click", async () => {
  await api("POST", `/api/rooms/${state.current}/leave`);
});

// -- messages -----------------------------------------------------------------------------

function renderMessages({ toBottom = false, keepFrom = null } = {}) {
  const list = $("messages");
  const items = (state.messages.get(state.current) || []).map(messageItem);
  for (const [clientId, pending] of state.pending) {
    if (pending.conversationId === state.current) items.push(pendingItem(clientId, pending));
  }
  const near = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.replaceChildren(...items);
  if (keepFrom !== null) list.scrollTop = list.scrollHeight - keepFrom;
  else if (toBottom || near) list.scrollTop = list.scrollHeight;
  renderTyping();
}

function messageItem(message) {
  const mine = message.sender.id === state.me.id;
  const item = document.createElement("li");
  item.className = `message${mine ? " mine" : ""}`;
  item.dataset.id = message.id;
  const time = new Date(message.created_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const meta = [text("span", mine ? "You" : message.sender.username), text("time", time)];
  const seen = state.seen.get(state.current) || 0;
  if (mine && message.id <= seen && message.id === lastOwnId()) meta.push(text("span", "Seen", "seen"));
  item.append(row(meta, "div", "meta"), linkified(message.body));
  return item;
}

function pendingItem(clientId, pending) {
  const item = document.createElement("li");
  item.className = `message mine ${pending.failed ? "failed" : "pending"}`;
  item.dataset.clientId = clientId;
  const meta = row([text("span", pending.failed ? "Not sent" : "Sending…")], "div", "meta");
  if (pending.failed) meta.append(button("Retry", () => deliver(clientId), "link"));
  item.append(meta, linkified(pending.body));
  return item;
}

function lastOwnId() {
  const mine = (state.messages.get(state.current) || []).filter((m) => m.sender.id === state.me.id);
  return mine.length ? mine[mine.length - 1].id : null;
}

/** Text with its http(s) URLs as links; everything else stays text. */
function linkified(body) {
  const node = document.createElement("div");
  node.className = "body";
  let at = 0;
  for (const match of body.matchAll(URL_PATTERN)) {
    node.append(document.createTextNode(body.slice(at, match.index)));
    const link = document.createElement("a");
    link.href = match[0];
    link.textContent = match[0];
    link.rel = "noopener noreferrer nofollow";
    link.target = "_blank";
    node.append(link);
    at = match.index + match[0].length;
  }
  node.append(document.createTextNode(body.slice(at)));
  return node;
}

$("messages").addEventListener("scroll", async () => {
  const list = $("messages");
  const before = state.older.get(state.current);
  if (list.scrollTop > 40 || !before || list.dataset.loading) return;
  list.dataset.loading = "1";
  try {
    const id = state.current;
    const page = await api("GET", `/api/conversations/${id}/messages?limit=30&before=${before}`);
    state.messages.set(id, [...page.messages, ...(state.messages.get(id) || [])]);
    state.older.set(id, page.before);
    if (id === state.current) renderMessages({ keepFrom: list.scrollHeight - list.scrollTop });
  } finally {
    delete list.dataset.loading;
  }
});

$("composer").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const body = $("draft").value;
  if (!body.trim() || state.current === null) return;
  const clientId = crypto.randomUUID();
  state.pending.set(clientId, { conversationId: state.current, body, failed: false });
  $("draft").value = "";
  renderMessages({ toBottom: true });
  deliver(clientId);
});

$("draft").addEventListener("keydown", (key) => {
  if (key.key === "Enter" && !key.shiftKey) {
    key.preventDefault();
    $("composer").requestSubmit();
  }
});

$("draft").addEventListener("input", () => {
  const now = Date.now();
  if (state.current === null || now - state.lastTypingSent < TYPING_SENT_EVERY_MS) return;
  state.lastTypingSent = now;
  api("POST", "/api/typing", { conversation_id: state.current }).catch(() => {});
});

/** Send (or re-send: same client_id, so it is stored once) a pending message. */
async function deliver(clientId) {
  const pending = state.pending.get(clientId);
  pending.failed = false;
  renderMessages();
  try {
    const { message } = await api("POST", "/api/messages", {
      conversation_id: pending.conversationId,
      body: pending.body,
      client_id: clientId,
    });
    state.pending.delete(clientId);
    addMessage(message);
  } catch {
    pending.failed = true;
    renderMessages();
  }
}

function addMessage(message) {
  const list = state.messages.get(message.conversation_id);
  if (list && !list.some((m) => m.id === message.id)) {
    list.push(message);
    list.sort((a, b) => a.id - b.id);
  }
  for (const [clientId, pending] of state.pending) {
    if (clientId === message.client_id && message.sender.id === state.me.id) state.pending.delete(clientId);
  }
  if (message.conversation_id === state.current) renderMessages();
}

let readTimer = null;
function markRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(async () => {
    const id = state.current;
    const conversation = state.conversations.find((c) => c.id === id);
    const list = state.messages.get(id) || [];
    if (document.hidden || !conversation || !list.length) return;
    const newest = list[list.length - 1].id;
    if (newest <= (state.readUpTo.get(id) || 0)) return;
    state.readUpTo.set(id, newest);
    conversation.unread = 0;
    renderConversations();
    await api("POST", `/api/conversations/${id}/read`, { message_id: newest }).catch(() => {});
  }, 300);
}

function renderTyping() {
  const typing = state.typing.get(state.current);
  $("typing").textContent = typing && typing.until > Date.now() ? `${typing.name} is typing…` : "";
}

// -- the push stream ---------------------------------------------------------------------

function onEvent(event) {
  const handle = HANDLERS[event.type];
  if (handle) handle(event);
}

const HANDLERS = {
  message(event) {
    const message = event.message;
    addMessage(message);
    const conversation = state.conversations.find((c) => c.id === message.conversation_id);
    if (!conversation) return loadConversations();
    conversation.last_message = message;
    const fromOther = message.sender.id !== state.me.id;
    if (fromOther) {
      state.typing.delete(message.conversation_id);
      if (message.conversation_id !== state.current || document.hidden) conversation.unread += 1;
      if (document.hidden) notify(message, conversation);
    }
    state.conversations.sort((a, b) => (b.last_message?.id || 0) - (a.last_message?.id || 0));
    renderConversations();
    if (message.conversation_id === state.current) markRead();
  },
  read(event) {
    if (event.user_id === state.me.id) return;
    const seen = Math.max(state.seen.get(event.conversation_id) || 0, event.message_id);
    state.seen.set(event.conversation_id, seen);
    if (event.conversation_id === state.current) renderMessages();
  },
  typing(event) {
    state.typing.set(event.conversation_id, { name: event.user.username, until: Date.now() + TYPING_SHOWN_MS });
    if (event.conversation_id === state.current) renderTyping();
    setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
  },
  presence(event) {
    if (event.online) state.online.add(event.user_id);
    else state.online.delete(event.user_id);
    renderFriends();
  },
  friend_request: () => loadFriends(),
  friend_accepted: () => Promise.all([loadFriends(), loadConversations()]),
  friend_removed: () => loadFriends(),
  room_joined: () => loadConversations(),
  room_left(event) {
    if (state.current === event.room.id) state.room = null;
    loadConversations();
  },
  async member_joined(event) {
    if (event.conversation_id === state.current) state.room = await api("GET", `/api/rooms/${state.current}`);
    renderMembers();
  },
  async member_left(event) {
    if (event.conversation_id === state.current) state.room = await api("GET", `/api/rooms/${state.current}`);
    renderMembers();
  },
};

function notify(message, conversation) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  // The text is set as text; a notification renders no markup.
  new Notification(`${message.sender.username} · ${conversationName(conversation)}`, { body: message.body });
}

// -- small DOM helpers --------------------------------------------------------------------

function text(tag, content, className) {
  const node = document.createElement(tag);
  node.textContent = content;
  if (className) node.className = className;
  return node;
}

function row(children, tag = "li", className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

function dot(online) {
  const node = document.createElement("span");
  node.className = `dot${online ? " online" : ""}`;
  node.setAttribute("aria-hidden", "true");
  return node;
}

function button(label, action, className) {
  const node = document.createElement("button");
  node.type = "button";
  node.textContent = label;
  if (className) node.className = className;
  node.addEventListener("click", action);
  return node;
}

boot();
