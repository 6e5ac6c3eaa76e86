// tabs.js: one push connection per browser, however many tabs are open.
//
// The tabs of one origin elect a leader with the Web Locks API: the tab holding the lock
// runs the only Longtail connection and re-broadcasts every event on a BroadcastChannel;
// the others listen. When the leader closes (or crashes) its lock is released and the
// next tab in line takes over, starting from the last seq it saw, so the new connection
// catches up whatever arrived in between: nothing is lost, nothing is shown twice.

import { Longtail } from "./longtail.js";

export class SharedFeed {
  constructor({ name = "longtail", options = {} } = {}) {
    this.name = name;
    this.options = options;
    this.listeners = new Map();
    this.cursor = null; // the last seq this tab has seen, wherever it came from
    this.role = "starting";
    this.client = null;
    this.channel = null;
  }

  on(type, handler) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(handler);
    return () => this.listeners.get(type).delete(handler);
  }

  /** Join the tabs of this browser. `cursor` is where this page's own data was loaded
   * from (GET /api/events without a cursor): should this tab lead, it starts there. */
  start(cursor) {
    this.cursor = cursor ?? null;
    this.channel = new BroadcastChannel(`${this.name}-events`);
    this.channel.onmessage = ({ data }) => {
      if (data.kind === "event") this.receive(data.event);
      else if (data.kind === "status") this.emit("status", data.status);
    };
    this.role = "follower";
    this.emit("role", this.role);
    // Waits in line for the lock; the callback runs while this tab is the leader.
    navigator.locks.request(`${this.name}-leader`, () => this.lead());
  }

  async lead() {
    this.role = "leader";
    this.emit("role", this.role);
    const client = (this.client = new Longtail({ ...this.options, cursor: this.cursor }));
    client.on("*", (event) => {
      this.channel.postMessage({ kind: "event", event });
      this.receive(event);
    });
    client.on("status", (status) => {
      this.channel.postMessage({ kind: "status", status });
      this.emit("status", status);
    });
    await client.start();
    // Hold the lock for the life of the tab: closing it hands the connection on.
    await new Promise(() => {});
  }

  receive(event) {
    if (event.seq !== undefined) {
      if (this.cursor !== null && event.seq <= this.cursor) return;
      this.cursor = event.seq;
    }
    this.emit(event.type, event);
    this.emit("*", event);
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
}
