// The HTTP API, as the page uses it. The access token lives in this module's memory only (never
// in localStorage); the refresh token is an HttpOnly cookie the page cannot read, sent only to
// the token routes. A reload or a new tab gets a fresh access token from that cookie.

let access = null;
let refreshing = null;
const listeners = new Set();

// Cookie-authenticated token routes refuse requests without this header: a form or an image
// on another site cannot set it, so they cannot make the browser refresh or log out.
const CSRF = { "X-Requested-With": "imagegate" };

export class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export function signedIn() {
  return access !== null;
}

export function onSessionChange(listener) {
  listeners.add(listener);
}

function setAccess(token) {
  const changed = (token === null) !== (access === null);
  access = token;
  if (changed) listeners.forEach((listener) => listener(token !== null));
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
  } catch {
    // not JSON: the status line says it
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError(response.status, message, Number.isFinite(retry) ? retry : null);
}

async function tokenCall(path, init) {
  const response = await fetch(path, {
    ...init,
    credentials: "same-origin",
    headers: { Accept: "application/json", ...CSRF, ...(init.headers || {}) },
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// A new access token from the refresh cookie; false when there is no session to resume.
export async function resume() {
  if (!refreshing) {
    refreshing = tokenCall("/v1/token/refresh?refresh=cookie", { method: "POST" })
      .then((body) => {
        setAccess(body.access_token);
        return true;
      })
      .catch((error) => {
        if (error.status === 401 || error.status === 400) {
          setAccess(null);
          return false;
        }
        throw error;
      })
      .finally(() => {
        refreshing = null;
      });
  }
  return refreshing;
}

export async function signIn(login, password) {
  const body = await tokenCall("/v1/token?refresh=cookie", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ login, password }),
  });
  setAccess(body.access_token);
}

// Every other session ends; this one goes on with the new tokens (the cookie replaced).
export async function changePassword(current, fresh) {
  const body = await call("PUT", "/v1/user/password?refresh=cookie", {
    json: { current_password: current, new_password: fresh },
  });
  setAccess(body.access_token);
}

export async function register(login, password) {
  await call("POST", "/v1/register", { json: { login, password }, anonymous: true });
}

export async function signOut(everywhere = false) {
  try {
    await call("POST", `/v1/logout${everywhere ? "?all=true" : ""}`, { headers: CSRF });
  } finally {
    setAccess(null);
  }
}

// One API call with the access token; a 401 is retried once after a refresh from the cookie.
export async function call(method, path, options = {}) {
  const { json, body, headers = {}, anonymous = false, raw = false } = options;
  const send = () => {
    const all = { Accept: "application/json", ...headers };
    if (!anonymous && access) all.Authorization = `Bearer ${access}`;
    if (json !== undefined) all["Content-Type"] = "application/json";
    return fetch(path, {
      method,
      headers: all,
      body: json !== undefined ? JSON.stringify(json) : body,
      credentials: "same-origin",
    });
  };
  let response = await send();
  if (response.status === 401 && !anonymous && (await resume())) response = await send();
  if (response.status === 401 && !anonymous) setAccess(null);
  if (!response.ok) throw await errorOf(response);
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

// An upload with progress events (fetch has none for request bodies): resolves with the API's
// answer (201 stored, 200 already there), rejects with an ApiError carrying its message.
export function upload(file, visibility, onProgress) {
  const attempt = () =>
    new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/v1/upload?visibility=${encodeURIComponent(visibility)}`);
      xhr.setRequestHeader("Authorization", `Bearer ${access}`);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      });
      xhr.addEventListener("load", () => {
        let answer = null;
        try {
          answer = JSON.parse(xhr.responseText);
        } catch {
          // not JSON
        }
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve(answer);
          return;
        }
        const message = answer && answer.error ? answer.error : `${xhr.status} ${xhr.statusText}`;
        const retry = Number.parseInt(xhr.getResponseHeader("Retry-After") || "", 10);
        reject(new ApiError(xhr.status, message, Number.isFinite(retry) ? retry : null));
      });
      xhr.addEventListener("error", () => reject(new ApiError(0, "the connection failed")));
      xhr.send(file);
    });
  return attempt().catch(async (error) => {
    if (error.status === 401 && (await resume())) return attempt();
    throw error;
  });
}

// A private image (or variant) as a blob: URL: an <img> cannot send the token itself.
export async function objectUrl(path) {
  const response = await call("GET", path, { raw: true, headers: { Accept: "image/avif,image/webp,*/*" } });
  return URL.createObjectURL(await response.blob());
}
