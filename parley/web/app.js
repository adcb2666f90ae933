// The page: sign in (by itself on a dev server), then the session list, the conversation and the composer.
import { api, ApiError, devToken, token } from "./api.js";
import { Chat } from "./chat.js";
import { element } from "./render.js";
import { Sidebar } from "./sidebar.js";
import { ChatSocket } from "./socket.js";

const MODEL_KEY = "parley.model";
const $ = (id) => document.getElementById(id);

// --- alerts -------------------------------------------------------------------------------------------

function alertIn(container, text) {
  const dismiss = element("button", { type: "button", class: "quiet icon", "aria-label": "Dismiss", text: "✕" });
  const box = element("div", { class: "alert", role: "alert" }, element("span", { text }), dismiss);
  dismiss.addEventListener("click", () => box.remove());
  container.append(box);
  while (container.children.length > 3) container.firstChild.remove(); // the latest say enough
}

const showAlert = (text) => alertIn($("alerts"), text);
const clearAlerts = () => $("alerts").replaceChildren();

function explain(error) {
  if (error instanceof ApiError && error.status === 401) tokenRefused();
  else showAlert(error.message || String(error));
}

/** The token stopped working (it expired): a dev server gives a new one; elsewhere, sign in again. */
async function tokenRefused() {
  token.clear();
  socket?.close();
  const dev = await devToken();
  if (dev && (await accepted(dev).catch(() => false))) {
    token.set(dev);
    start();
    return;
  }
  chat?.clear();
  showSignIn("Your token is no longer accepted (expired, or signed with another secret). Sign in again.");
}

// --- sign-in ------------------------------------------------------------------------------------------

/** True if the server accepts `candidate`, false if it refuses it (401); throws when it cannot be asked. */
async function accepted(candidate) {
  try {
    await api("/models", { bearer: candidate });
    return true;
  } catch (error) {
    if (error.status === 401) return false;
    throw error;
  }
}

async function boot() {
  try {
    const saved = token.get();
    if (saved && (await accepted(saved))) return start();
    if (saved) token.clear();
    const dev = await devToken();
    if (dev && (await accepted(dev))) {
      token.set(dev);
      return start();
    }
    showSignIn(saved ? "The saved token is no longer accepted. Sign in again." : null);
  } catch (error) {
    showSignIn(error.message);
  }
}

function showSignIn(message) {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-alerts").replaceChildren();
  if (message) alertIn($("signin-alerts"), message);
  $("token").focus();
}

function signOut(message) {
  token.clear();
  socket?.close();
  chat?.clear();
  history.replaceState({}, "", location.pathname); // the next one to sign in starts from a new chat
  showSignIn(message);
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-alerts").replaceChildren();
  const candidate = $("token").value.trim();
  try {
    if (!(await accepted(candidate))) {
      alertIn($("signin-alerts"), "The server did not accept this token: it is malformed, expired, or signed with another secret.");
      return;
    }
  } catch (error) {
    alertIn($("signin-alerts"), error.message);
    return;
  }
  token.set(candidate);
  $("token").value = "";
  start();
});

// --- the chat -----------------------------------------------------------------------------------------

let socket = null;
let chat = null;
let sidebar = null;

function sessionFromUrl() {
  return new URLSearchParams(location.search).get("session");
}

function setUrl(id, push) {
  const url = id ? `?session=${encodeURIComponent(id)}` : location.pathname;
  if (sessionFromUrl() === id) return;
  if (push) history.pushState({}, "", url);
  else history.replaceState({}, "", url);
}

function sessionChanged(id, title) {
  setUrl(id, false);
  $("title").textContent = title || "New chat";
  document.title = title ? `${title} · Parley` : "Parley";
  sidebar.mark();
}

async function openSession(id, push = true) {
  setUrl(id, push);
  closeSidebar();
  if (!id) {
    chat.clear();
    sessionChanged(null, "");
    $("message").focus();
    return;
  }
  try {
    await chat.open(id);
  } catch (error) {
    explain(error);
  }
}

/** The request's text settings: model, system prompt, options and tools; null (with an alert) if invalid. */
function textSettings() {
  const settings = { model: $("model").value || "demo" };
  const system = $("system-prompt").value.trim();
  if (system) settings.system_prompt = system;
  const raw = $("options").value.trim();
  if (raw) {
    let options;
    try {
      options = JSON.parse(raw);
    } catch {
      options = null;
    }
    if (!options || typeof options !== "object" || Array.isArray(options)) {
      showAlert("Model options must be a JSON object, such as {\"delay_ms\": 50}.");
      return null;
    }
    settings.options = options;
  }
  const tools = [...document.querySelectorAll("#tools input:checked")].map((box) => box.value);
  if (tools.length) settings.tools = tools;
  return settings;
}

async function loadModels() {
  const { providers } = await api("/models");
  const names = [];
  for (const provider of providers) {
    if (!provider.served_by) continue;
    names.push(...provider.models.filter((m) => !m.includes("*")), ...Object.keys(provider.aliases));
  }
  const select = $("model");
  select.replaceChildren(...[...new Set(names)].map((name) => element("option", { value: name, text: name })));
  const saved = localStorage.getItem(MODEL_KEY);
  if (saved && names.includes(saved)) select.value = saved;
  else if (names.includes("demo")) select.value = "demo";
}

async function loadTools() {
  const { tools } = await api("/tools");
  $("tools").replaceChildren(...tools.map((tool) => element("label", { title: tool.description },
      element("input", { type: "checkbox", value: tool.name }), ` ${tool.name}`)));
}

function closeSidebar() {
  $("sidebar").classList.remove("open");
}

function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  if (!chat) build();
  socket.open();
  Promise.all([loadModels(), loadTools()]).catch(explain);
  sidebar.refresh();
  openSession(sessionFromUrl(), false);
}

/** The parts of the page, once: a later sign-in reuses them with the new token. */
function build() {
  socket = new ChatSocket(() => token.get(), {
    ready: () => {
      document.body.classList.remove("offline");
      chat.reconnected();
    },
    frame: (frame) => chat.event(frame),
    down: (attempt) => {
      if (attempt >= 2) document.body.classList.add("offline");
      if (attempt === 3) accepted(token.get()).then((ok) => ok || explain(new ApiError("", 401))).catch(() => {});
    },
  });
  chat = new Chat(socket, {
    alert: showAlert,
    clearAlerts,
    sessionChanged,
    listChanged: () => sidebar.refresh(),
    settings: textSettings,
  });
  sidebar = new Sidebar({
    open: (id) => openSession(id),
    deleted: (id) => { if (id === chat.session) openSession(null); },
    renamed: (id, title) => { if (id === chat.session) sessionChanged(id, title); },
    failed: explain,
    current: () => chat.session,
  });
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  chat?.send();
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    chat?.send();
  }
});
$("model").addEventListener("change", () => localStorage.setItem(MODEL_KEY, $("model").value));
$("new-chat").addEventListener("click", () => openSession(null));
$("sign-out").addEventListener("click", () => signOut(null));
$("open-sidebar").addEventListener("click", () => $("sidebar").classList.add("open"));
$("close-sidebar").addEventListener("click", closeSidebar);
window.addEventListener("popstate", () => chat && openSession(sessionFromUrl(), false));
// A failure nothing above expected still says so, rather than leaving the page silently half-done.
window.addEventListener("unhandledrejection", (event) => showAlert(event.reason?.message ?? String(event.reason)));

boot();
