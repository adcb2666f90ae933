// The conversation: show a session's active branch, run turns over the socket, resume one after a reload or
// a dropped connection (docs/protocol.md section 5.2), stop, edit, regenerate, switch branches.
import { api, sessions } from "./api.js";
import { AnswerView, element, messageElement, quietButton, userBody } from "./render.js";

const STICK_PX = 48; // this close to the bottom, the log follows the answer

export class Chat {
  /**
   * @param {import("./socket.js").ChatSocket} socket
   * @param {{alert: (text: string) => void, clearAlerts: () => void, sessionChanged: (id: string | null, title: string) => void,
   *          listChanged: () => void, settings: () => object | null}} on
   */
  constructor(socket, on) {
    this.socket = socket;
    this.on = on;
    this.log = document.getElementById("log");
    this.box = document.getElementById("message");
    this.sendButton = document.getElementById("send");
    this.stopButton = document.getElementById("stop");
    this.editingBar = document.getElementById("editing");
    this.session = null;
    this.turn = null;
    this.editing = null;
    this.stick = true;
    this.scrollPending = false;
    this.watchScrolling();
    this.stopButton.addEventListener("click", () => this.stop());
    document.getElementById("cancel-edit").addEventListener("click", () => {
      this.endEdit();
      this.box.value = "";
    });
  }

  /**
   * The log follows the answer until the reader scrolls up (a wheel, a finger, a key, the scrollbar), and
   * again once they scroll back down to its end. Scroll events alone cannot tell: they come a frame late,
   * when the answer may have grown under them, and the page's own scrolling makes them too.
   */
  watchScrolling() {
    const log = this.log;
    const away = () => { this.stick = false; };
    log.addEventListener("wheel", (event) => { if (event.deltaY < 0) away(); }, { passive: true });
    log.addEventListener("touchmove", away, { passive: true });
    log.addEventListener("keydown", (event) => { if (["ArrowUp", "PageUp", "Home"].includes(event.key)) away(); });
    log.addEventListener("pointerdown", (event) => { if (event.offsetX > log.clientWidth) away(); }); // the scrollbar
    let lastTop = 0;
    log.addEventListener("scroll", () => {
      const down = log.scrollTop > lastTop;
      lastTop = log.scrollTop;
      if (down && log.scrollHeight - log.scrollTop - log.clientHeight < STICK_PX) this.stick = true;
    });
  }

  // --- showing a session ------------------------------------------------------------------------------

  clear() {
    this.turn = null;
    this.session = null;
    this.endEdit();
    this.log.replaceChildren();
    this.setBusy(false);
  }

  /** Open a session from REST; an answer still streaming is shown so far, then followed live. */
  async open(id, follow = true) {
    let view;
    try {
      view = await sessions.get(id);
    } catch (error) {
      if (error.status === 404) {
        this.on.alert("That session does not exist, or it is not one of yours.");
        this.clear();
        this.on.sessionChanged(null, "New chat");
        return;
      }
      throw error;
    }
    this.show(view, follow);
  }

  show(view, follow = true) {
    const top = this.log.scrollTop;
    const stick = this.stick || view.id !== this.session; // another session opens at its end
    this.turn = null;
    this.session = view.id;
    this.endEdit(); // the message being edited may not be on the page any more
    this.log.replaceChildren();
    for (const message of view.messages) this.log.append(this.stored(message).parentElement);
    this.on.sessionChanged(view.id, view.title);
    const live = view.messages.findLast((m) => m.role === "assistant" && m.status === "streaming" && m.request_id);
    if (live && follow) this.follow(live);
    this.setBusy(Boolean(this.turn));
    this.stick = stick;
    if (stick) this.scrollSoon();
    else this.log.scrollTop = top;
  }

  stored(message) {
    const article = messageElement(message.role, message.status, message.id);
    if (message.role === "user") {
      userBody(article, message.content);
    } else {
      const answer = new AnswerView(article, () => this.scrollSoon());
      article.answer = answer;
      // Streaming with no seq yet: the resume replays it from the start, so show nothing of it twice.
      if (!(message.status === "streaming" && message.seq === null)) answer.showStored(message);
      if (message.status !== "streaming") answer.close();
      if (message.error_code) article.dataset.errorCode = message.error_code;
    }
    this.footer(article, message);
    return article;
  }

  /** Edit / Regenerate under a message (no text of their own), the branch switcher beside it. */
  footer(article, message) {
    const foot = article.querySelector(".msg-foot");
    const slot = article.parentElement.querySelector(".switcher-slot");
    foot.replaceChildren();
    slot.replaceChildren();
    const siblings = message.sibling_ids ?? [];
    if (siblings.length > 1) {
      const at = siblings.indexOf(message.id);
      const step = (by) => () => this.switchTo(siblings[at + by]);
      const previous = quietButton("Previous branch", step(-1), "‹");
      const next = quietButton("Next branch", step(1), "›");
      if (at === 0) previous.dataset.off = "";
      if (at === siblings.length - 1) next.dataset.off = "";
      slot.append(element("span", { class: "switcher" },
        previous, element("span", { class: "position", text: `${at + 1}/${siblings.length}` }), next));
    }
    if (message.role === "user") foot.append(quietButton("Edit", () => this.startEdit(article, message)));
    else if (message.status !== "streaming") foot.append(quietButton("Regenerate", () => this.regenerate(article)));
  }

  async switchTo(messageId) {
    if (!this.session || this.turn) return;
    try {
      this.show(await sessions.switchTo(this.session, messageId));
    } catch (error) {
      this.on.alert(error.message);
    }
  }

  // --- running a turn -----------------------------------------------------------------------------------

  /** Send the message box's text as a new turn (or as the edit of a message). */
  send() {
    const prompt = this.box.value;
    if (this.turn || !prompt.trim()) return;
    const settings = this.on.settings();
    if (!settings) return;
    const input = { prompt, session_id: this.session ?? "" };
    if (this.editing) {
      input.edit_of = this.editing.id;
      this.cut(this.editing.article);
      this.endEdit();
    }
    const user = messageElement("user", "completed");
    userBody(user, prompt);
    this.log.append(user.parentElement);
    this.box.value = "";
    this.start(input, settings, user, prompt);
  }

  /** A new answer to the question above `article` (an answer), beside it. */
  regenerate(article) {
    if (this.turn || !this.session || !article.dataset.messageId) return;
    const settings = this.on.settings();
    if (!settings) return;
    const input = { session_id: this.session, regenerate: article.dataset.messageId };
    this.cut(article);
    this.start(input, settings, null, null);
  }

  start(input, settings, user, prompt) {
    this.on.clearAlerts();
    const requestId = crypto.randomUUID();
    const article = messageElement("assistant", "streaming");
    this.log.append(article.parentElement);
    this.turn = {
      requestId, article, user, prompt, lastSeq: -1, sent: false, stored: false,
      answer: new AnswerView(article, () => this.scrollSoon()),
    };
    const turn = this.turn;
    this.stick = true;
    this.scrollSoon();
    this.setBusy(true);
    const frame = { request_type: "text", request_id: requestId, user_input: input, user_settings: { text: settings } };
    this.socket.send(frame, () => { turn.sent = true; });
  }

  /** Follow a stored answer still streaming: what REST showed, then the events after its seq. */
  follow(message) {
    const article = this.log.querySelector(`[data-message-id="${message.id}"]`);
    const fromStart = message.seq === null;
    this.turn = {
      requestId: message.request_id, article, user: null, prompt: null, sent: true, stored: true,
      lastSeq: fromStart ? -1 : message.seq, answer: article.answer,
    };
    this.resume();
  }

  resume() {
    this.socket.sendNow({ type: "resume", request_id: this.turn.requestId, after_seq: this.turn.lastSeq });
  }

  /** The socket is (again) connected: pick up the turn that was streaming when it dropped. */
  reconnected() {
    if (this.turn?.sent) this.resume();
  }

  stop() {
    if (!this.turn) return;
    const { requestId } = this.turn;
    if (!this.socket.sendNow({ type: "cancel", request_id: requestId })) {
      api(`/turns/${encodeURIComponent(requestId)}/cancel`, { method: "POST" }).catch((e) => this.on.alert(e.message));
    }
  }

  /** One event from the socket. */
  event(frame) {
    const turn = this.turn;
    if (!turn || frame.request_id !== turn.requestId) {
      if (frame.type === "error" && !frame.request_id) this.on.alert(frame.content);
      return;
    }
    if (typeof frame.seq === "number") {
      if (frame.seq <= turn.lastSeq) return; // already shown (a resume overlapping what we had)
      turn.lastSeq = frame.seq;
    }
    if (frame.session_id && !this.session) {
      // A new session exists from the turn's first events on: name it in the URL now, so a reload finds it.
      this.session = frame.session_id;
      this.on.sessionChanged(this.session, turn.prompt ?? "");
      this.on.listChanged();
    }
    const { answer } = turn;
    switch (frame.type) {
      case "text": answer.appendText(frame.content); break;
      case "reasoning": answer.appendReasoning(frame.content); break;
      case "toolUse": answer.toolUse(frame.content); break;
      case "toolResult": answer.toolResult(frame.content); break;
      case "cancelled": answer.close(); answer.status = "cancelled"; break; // no text follows it
      case "error": this.failed(turn, frame); break;
      case "dbOperationExecuted": this.saved(turn, frame); break;
      case "fullProcessComplete": this.ended(turn, frame.status); break;
    }
  }

  failed(turn, frame) {
    if (frame.code === "stream_expired") {
      // The turn ended and was forgotten (or its server is gone): what it stored is the answer.
      this.turn = null;
      this.setBusy(false);
      if (this.session) {
        this.open(this.session, false).catch((e) => this.on.alert(e.message));
      } else {
        // Lost before the server said anything of it: nothing of it is known to have been kept.
        turn.answer.status = "error";
        if (turn.prompt && !this.box.value) this.box.value = turn.prompt;
        this.on.alert("The connection was lost before the server answered; send the message again.");
      }
      return;
    }
    turn.answer.close(); // Markdown held back for the next delta (none comes) is shown now
    turn.answer.status = "error";
    this.on.alert(frame.content || "The answer failed.");
  }

  saved(turn, frame) {
    let ids;
    try {
      ids = JSON.parse(frame.content);
    } catch {
      return;
    }
    turn.stored = true;
    turn.article.dataset.messageId = ids.ai_message_id;
    if (turn.user) turn.user.dataset.messageId = ids.user_message_id;
    this.on.listChanged();
  }

  ended(turn, status) {
    turn.answer.close();
    turn.answer.status = status;
    this.turn = null;
    this.setBusy(false);
    if (!turn.stored && turn.prompt && !this.box.value) this.box.value = turn.prompt; // refused: nothing kept
    if (this.session) this.settle().catch((e) => this.on.alert(e.message));
    else if (!turn.stored) this.log.replaceChildren();
  }

  /**
   * After a turn: the session as stored gives the branch switchers and statuses. The messages on the page
   * stay as they streamed (they are what was stored: the answer is the concatenation of its deltas), unless
   * the page and the store disagree on which messages there are; then the stored ones are shown.
   */
  async settle() {
    const session = this.session;
    const view = await sessions.get(session);
    if (this.turn || session !== this.session) return; // the reader moved on meanwhile
    const articles = [...this.log.querySelectorAll("[data-role]")];
    const same = articles.length === view.messages.length &&
      view.messages.every((m, i) => articles[i].dataset.messageId === m.id);
    if (!same) return this.show(view);
    view.messages.forEach((message, i) => {
      articles[i].dataset.status = message.status;
      this.footer(articles[i], message);
    });
    this.setBusy(false);
  }

  // --- editing ------------------------------------------------------------------------------------------

  startEdit(article, message) {
    if (this.turn) return;
    this.editing = { id: message.id, article };
    this.box.value = message.content;
    this.editingBar.hidden = false;
    article.classList.add("being-edited");
    this.box.focus();
  }

  endEdit() {
    this.editing?.article.classList.remove("being-edited");
    this.editing = null;
    this.editingBar.hidden = true;
  }

  /** Remove `article` and everything after it: a new branch replaces them on the page. */
  cut(article) {
    const entry = article.parentElement;
    while (entry.nextSibling) entry.nextSibling.remove();
    entry.remove();
  }

  // --- the page around it -------------------------------------------------------------------------------

  setBusy(busy) {
    this.sendButton.hidden = this.sendButton.disabled = busy;
    this.stopButton.hidden = this.stopButton.disabled = !busy;
    for (const button of this.log.querySelectorAll(".entry button")) button.disabled = busy || button.hasAttribute("data-off");
  }

  /** Follow the answer down, once per frame, unless the reader scrolled up. */
  scrollSoon() {
    if (!this.stick || this.scrollPending) return;
    this.scrollPending = true;
    requestAnimationFrame(() => {
      this.scrollPending = false;
      if (this.stick) this.log.scrollTop = this.log.scrollHeight;
    });
  }
}
