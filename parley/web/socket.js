// The WebSocket to /chat/ws: camel events, reconnects with backoff, frames sent while down wait for it.

const BACKOFF_MS = [250, 500, 1000, 2000, 4000];

export class ChatSocket {
  /**
   * @param {() => string | null} tokenOf  the token to connect with (read at each attempt)
   * @param {{ready: () => void, frame: (frame: object) => void, down: (attempt: number) => void}} on
   */
  constructor(tokenOf, on) {
    this.tokenOf = tokenOf;
    this.on = on;
    this.ws = null;
    this.ready = false;
    this.waiting = [];
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
  }

  url() {
    const base = new URL("chat/ws", location.href);
    base.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    base.search = new URLSearchParams({ token: this.tokenOf() ?? "", events: "camel" }).toString();
    return base.toString();
  }

  open() {
    this.stopped = false;
    clearTimeout(this.timer);
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onmessage = (event) => this.received(event.data);
    ws.onclose = () => this.closed(ws);
  }

  received(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "websocketReady") {
      this.ready = true;
      this.attempt = 0;
      this.on.ready(); // first: the page resumes the turns it had sent before the drop
      for (const [waiting, sent] of this.waiting.splice(0)) {
        this.ws.send(JSON.stringify(waiting));
        sent();
      }
      return;
    }
    this.on.frame(frame);
  }

  closed(ws) {
    if (ws !== this.ws) return;
    this.ready = false;
    this.ws = null;
    if (this.stopped) return;
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.on.down(this.attempt);
    this.timer = setTimeout(() => this.open(), delay * (0.75 + Math.random() / 2));
  }

  /** Send now if connected, else as soon as the next connection is ready; `sent` is called then. */
  send(frame, sent = () => {}) {
    if (this.sendNow(frame)) sent();
    else this.waiting.push([frame, sent]);
  }

  /** Send only if connected: for frames that mean nothing later (a resume is sent again on reconnect). */
  sendNow(frame) {
    if (!this.ready || this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.waiting = [];
    this.ws?.close();
    this.ws = null;
    this.ready = false;
  }
}
