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

// One refresh at a time across every tab of this site: a refresh token works once, and the
// server takes a second use for theft (ending the session). A tab that waited sends the cookie
// the first one got back.
function exclusively(work) {
  return navigator.locks ? navigator.locks.request("imagegate-refresh", work) : work();
}

// A new access token from the refresh cookie; false when there is no session to resume.
export async function resume() {
  if (!refreshing) {
    refreshing = exclusively(() => tokenCall("/v1/token/refresh?refresh=cookie", { method: "POST" }))
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
    headers: CSRF,
    checksPassword: true,
  });
  setAccess(body.access_token);
}

export async function register(login, password) {
  await call("POST", "/v1/register", { json: { login, password }, anonymous: true });
}

// Signed out only once the server says so: on a shared computer, a "signed out" page whose
// session still lives would let the next person in by reloading.
export async function signOut(everywhere = false) {
  try {
    await call("POST", `/v1/logout${everywhere ? "?all=true" : ""}`, { headers: CSRF });
  } catch (error) {
    if (everywhere) throw error;
    // No usable access token (or the API failed): end this session by its cookie instead.
    await tokenCall("/v1/token/revoke", { method: "POST" });
  }
  setAccess(null);
}

// One API call with the access token; a 401 is retried once after a refresh from the cookie.
// With ``checksPassword`` a 401 is about the password given, not the token: it is shown, never
// retried (that would count a second failed attempt) and never signs the person out.
export async function call(method, path, options = {}) {
  const { json, body, headers = {}, anonymous = false, raw = false, checksPassword = false } =
    options;
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
  const tokenRefused = () => response.status === 401 && !anonymous && !checksPassword;
  if (tokenRefused() && (await resume())) response = await send();
  if (tokenRefused()) setAccess(null);
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
          // 200: the same bytes were uploaded before; that image, as it is (visibility too).
          resolve({ image: answer, existing: xhr.status === 200 });
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
