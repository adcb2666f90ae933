// The session list: newest first, search (titles, and the words of every message), rename, delete.
import { sessions } from "./api.js";
import { element } from "./render.js";

const SEARCH_DELAY_MS = 200;

export class Sidebar {
  /**
   * @param {{open: (id: string) => void, deleted: (id: string) => void, renamed: (id: string, title: string) => void,
   *          failed: (error: Error) => void, current: () => string | null}} on
   */
  constructor(on) {
    this.on = on;
    this.list = document.querySelector("#sessions ul");
    this.search = document.getElementById("search");
    this.timer = null;
    this.generation = 0;
    this.search.addEventListener("input", () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.refresh(), SEARCH_DELAY_MS);
    });
  }

  /** Load the list again (with the search box's words, if any). */
  async refresh() {
    const generation = ++this.generation;
    const q = this.search.value.trim();
    try {
      const items = q ? await this.matching(q) : (await sessions.list()).items;
      if (generation === this.generation) this.show(items);
    } catch (error) {
      this.on.failed(error);
    }
  }

  /** Sessions whose title holds `q`, then those with a message holding its words. */
  async matching(q) {
    const [titled, found] = await Promise.all([sessions.list(q), sessions.search(q)]);
    const items = [...titled.items];
    const seen = new Set(items.map((s) => s.id));
    for (const hit of found.items) {
      if (seen.has(hit.session_id)) continue;
      seen.add(hit.session_id);
      items.push({ id: hit.session_id, title: hit.session_title });
    }
    return items;
  }

  show(items) {
    this.list.replaceChildren(...items.map((item) => this.entry(item)));
    if (items.length === 0) {
      const empty = this.search.value.trim() ? "No session matches." : "No sessions yet.";
      this.list.append(element("li", { class: "empty", text: empty }));
    }
  }

  /** Mark the open session in the list. */
  mark() {
    for (const link of this.list.querySelectorAll("a")) {
      if (link.dataset.sessionId === this.on.current()) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  entry({ id, title }) {
    const link = element("a", { href: `?session=${encodeURIComponent(id)}`, "data-session-id": id, text: title });
    if (id === this.on.current()) link.setAttribute("aria-current", "page");
    link.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey) return; // a new tab opens it by its URL
      event.preventDefault();
      this.on.open(id);
    });
    const item = element("li", { "data-session-id": id }, link);
    const rename = element("button", { type: "button", class: "quiet icon", "aria-label": "Rename", title: "Rename", text: "✎" });
    const remove = element("button", { type: "button", class: "quiet icon", "aria-label": "Delete", title: "Delete", text: "✕" });
    rename.addEventListener("click", () => this.rename(item, link, id));
    remove.addEventListener("click", () => this.remove(id));
    item.append(element("span", { class: "entry-actions" }, rename, remove));
    return item;
  }

  rename(item, link, id) {
    const input = element("input", { "aria-label": "Session title", value: link.textContent, maxlength: "255" });
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== link.textContent) {
        try {
          await sessions.rename(id, title);
          this.on.renamed(id, title);
        } catch (error) {
          this.on.failed(error);
        }
      }
      await this.refresh();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
    link.replaceWith(input);
    input.focus();
    input.select();
  }

  async remove(id) {
    try {
      await sessions.remove(id);
      this.on.deleted(id);
    } catch (error) {
      this.on.failed(error);
    }
    await this.refresh();
  }
}
