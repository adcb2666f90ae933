// The REST side of the page: the token, and /api/v1 calls that throw ApiError with the server's sentence.

const TOKEN_KEY = "parley.token";

export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const token = {
  get: () => localStorage.getItem(TOKEN_KEY),
  set: (value) => localStorage.setItem(TOKEN_KEY, value),
  clear: () => localStorage.removeItem(TOKEN_KEY),
};

/** Call /api/v1 + path; JSON in and out; a non-2xx answer throws ApiError. */
export async function api(path, { method = "GET", body, bearer = token.get() } = {}) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("The server cannot be reached. Is it running?", 0, "network_error");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = data?.detail ?? `The server answered ${response.status}.`;
    throw new ApiError(typeof detail === "string" ? detail : JSON.stringify(detail), response.status, data?.code);
  }
  return data;
}

/** The dev server's own token (parley serve --dev), or null on any other server. */
export async function devToken() {
  try {
    const data = await api("/dev/token", { bearer: null });
    return data.token;
  } catch {
    return null;
  }
}

export const sessions = {
  list: (q) => api(`/sessions?${new URLSearchParams({ limit: "100", ...(q ? { q } : {}) })}`),
  search: (q) => api(`/search?${new URLSearchParams({ q, limit: "50" })}`),
  get: (id) => api(`/sessions/${encodeURIComponent(id)}`),
  rename: (id, title) => api(`/sessions/${encodeURIComponent(id)}`, { method: "PATCH", body: { title } }),
  remove: (id) => api(`/sessions/${encodeURIComponent(id)}`, { method: "DELETE" }),
  switchTo: (id, messageId) =>
    api(`/sessions/${encodeURIComponent(id)}/active-leaf`, { method: "PUT", body: { message_id: messageId } }),
};
