// Messages on the page. An answer is built as it streams: Markdown through streaming-markdown, which
// appends to the DOM as text arrives (each delta costs its own length, never a re-parse of the message)
// and never parses HTML, so model output cannot add markup; link and image URLs are checked here.
import * as smd from "./vendor/streaming-markdown.js";

const SAFE_LINKS = new Set(["http:", "https:", "mailto:"]);
const SAFE_IMAGES = new Set(["http:", "https:"]);

/** The URL if its scheme is allowed for a link (or an image), else null. */
export function safeUrl(value, image = false) {
  let url;
  try {
    url = new URL(value, location.href);
  } catch {
    return null;
  }
  return (image ? SAFE_IMAGES : SAFE_LINKS).has(url.protocol) ? url.href : null;
}

/** A Markdown writer into `root`: write(delta) as often as needed, then end(). */
export function markdown(root) {
  const renderer = smd.default_renderer(root);
  const addToken = renderer.add_token;
  const setAttr = renderer.set_attr;
  renderer.add_token = (data, type) => {
    addToken(data, type);
    if (type === smd.LINK || type === smd.RAW_URL) {
      const link = data.nodes[data.index];
      link.rel = "noopener noreferrer nofollow";
      link.target = "_blank";
    }
  };
  renderer.set_attr = (data, type, value) => {
    if (type === smd.HREF || type === smd.SRC) {
      const safe = safeUrl(value, type === smd.SRC);
      if (safe === null) {
        data.nodes[data.index].dataset.blockedUrl = "";
        return;
      }
      value = safe;
    }
    setAttr(data, type, value);
  };
  const parser = smd.parser(renderer);
  return { write: (text) => smd.parser_write(parser, text), end: () => smd.parser_end(parser) };
}

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function pretty(value) {
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

/**
 * The element of one message (its body filled by the caller, or by an AnswerView), in an entry of the log
 * that also holds its branch switcher. The element's text is the message alone: its buttons (Edit,
 * Regenerate) and status note are labelled by CSS, and the switcher's "2/3" sits beside it, in the entry.
 */
export function messageElement(role, status, id) {
  const article = element("article", { class: `msg ${role}`, "data-role": role, "data-status": status });
  if (id) article.dataset.messageId = id;
  article.append(element("div", { class: "msg-body" }), element("div", { class: "msg-foot" }));
  element("div", { class: `entry ${role}` }, article, element("div", { class: "switcher-slot" }));
  return article;
}

/** A button whose label is drawn by CSS (data-label), so it adds no text to the message around it. */
export function quietButton(label, onclick, symbol = label) {
  return element("button", { type: "button", class: "quiet action", "aria-label": label, "data-label": symbol, onclick });
}

export function userBody(article, text) {
  article.querySelector(".msg-body").append(element("p", { class: "user-text", text }));
}

/** An answer as it streams, or as stored: text, reasoning and tool steps, in the order they came. */
export class AnswerView {
  constructor(article, onGrow) {
    this.article = article;
    this.body = article.querySelector(".msg-body");
    this.onGrow = onGrow;
    this.segment = null; // {kind: "text" | "reasoning", write, end}
    this.tools = new Map();
    this.text = "";
  }

  set status(value) {
    this.article.dataset.status = value;
  }

  appendText(delta) {
    const times = window.__parleyRenderTimes;
    const started = times ? performance.now() : 0;
    if (this.segment?.kind !== "text") {
      this.close();
      const root = element("div", { class: "md" });
      this.body.append(root);
      this.segment = { kind: "text", ...markdown(root) };
    }
    this.segment.write(delta);
    this.text += delta;
    this.onGrow();
    if (times) times.push(performance.now() - started);
  }

  appendReasoning(delta) {
    if (this.segment?.kind !== "reasoning") {
      this.close();
      const text = element("div", { class: "reasoning-text" });
      const block = element("details", { class: "reasoning", "data-kind": "reasoning" },
        element("summary", { text: "Reasoning" }), text);
      this.body.append(block);
      this.segment = { kind: "reasoning", write: (t) => text.append(t), end: () => {} };
    }
    this.segment.write(delta);
    this.onGrow();
  }

  toolUse({ call_id, name, input }) {
    this.close();
    const output = element("pre", { class: "tool-output", text: "running…" });
    const block = element("details", { class: "tool", "data-tool-name": name, "data-call-id": call_id },
      element("summary", {}, element("span", { class: "tool-label", text: "Tool" }), ` ${name}`),
      element("div", { class: "tool-part", text: "Input" }), element("pre", { class: "tool-input", text: pretty(input) }),
      element("div", { class: "tool-part", text: "Output" }), output);
    this.tools.set(call_id, { block, output });
    this.body.append(block);
    this.onGrow();
  }

  toolResult({ call_id, output, is_error }) {
    const tool = this.tools.get(call_id);
    if (!tool) return;
    tool.output.textContent = output;
    tool.block.dataset.status = is_error ? "error" : "ok";
    if (is_error) tool.block.querySelector("summary").append(element("span", { class: "tool-error", text: " failed" }));
  }

  close() {
    this.segment?.end();
    this.segment = null;
  }

  /** Show a stored answer at once: its reasoning, tool steps (with their texts), then the rest. */
  showStored(message) {
    if (message.reasoning) this.appendReasoning(message.reasoning);
    let used = 0;
    for (const step of message.tool_steps ?? []) {
      if (step.text) this.appendText(step.text);
      used += step.text.length;
      for (const call of step.calls) this.toolUse({ call_id: call.id, name: call.name, input: call.input });
      for (const result of step.results) this.toolResult(result);
    }
    const rest = message.content.slice(used);
    if (rest) this.appendText(rest);
  }
}
