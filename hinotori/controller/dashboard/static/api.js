// The page's side of the controller API and of its sign-in.
//
// `hinotori dashboard` prints a link ending in #ticket=…; the fragment never reaches a server
// log. The page trades the ticket, once, for a session token, removes the ticket from the
// address bar and keeps the session in sessionStorage (this tab only, gone when it closes).
// Every /v1 call sends the session as a bearer token; a 401 means signed out. A session from
// `hinotori dashboard --operate` may act too: it comes with a CSRF token that every change
// sends as X-Hinotori-CSRF (the browser adds Origin itself; the controller checks both).

const KEY = "hinotori.session";
const CSRF = "hinotori.csrf";
const OPERATE = "hinotori.operate";

export class SignedOut extends Error {}
export class Missing extends Error {}  // an endpoint this controller does not have (404)

export async function signIn() {
  const ticket = new URLSearchParams(location.hash.slice(1)).get("ticket");
  if (ticket) {
    history.replaceState(null, "", location.pathname + location.search);
    const response = await fetch("/ui/session", {
      method: "POST", cache: "no-store", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ticket }),
    });
    if (!response.ok) {
      sessionStorage.removeItem(KEY);
      throw new SignedOut(await reason(response, "This sign-in link was not accepted."));
    }
    const session = await response.json();
    sessionStorage.setItem(KEY, session.token);
    sessionStorage.setItem(CSRF, session.csrf || "");
    sessionStorage.setItem(OPERATE, session.operate ? "1" : "");
  }
  if (!sessionStorage.getItem(KEY)) throw new SignedOut("This page has no sign-in yet.");
}

export async function get(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const response = await fetch(url, {
    cache: "no-store", headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` },
  });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    // Not the API's own message: it speaks of the CLI's token file, which a browser never uses.
    throw new SignedOut("The controller does not accept this tab's sign-in (it expired, or the "
                        + "controller restarted since).");
  }
  if (response.status === 404 && !(await isHinotoriError(response.clone()))) {
    throw new Missing(`${path} is not served by this controller`);
  }
  if (!response.ok) throw new Error(await reason(response, `${path}: HTTP ${response.status}`));
  return response.json();
}

// True when this tab's sign-in may act (the controller decides; this only hides buttons).
export function canOperate() {
  return sessionStorage.getItem(OPERATE) === "1";
}

// A change: POST with the session, its CSRF token and a JSON body; the answer's JSON, or an
// Error carrying the controller's own message.
export async function post(path, body = {}) {
  const response = await fetch(new URL(path, location.origin), {
    method: "POST", cache: "no-store",
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}`,
               "X-Hinotori-CSRF": sessionStorage.getItem(CSRF) || "",
               "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    throw new SignedOut("The controller does not accept this tab's sign-in (it expired, or the "
                        + "controller restarted since).");
  }
  if (!response.ok) throw new Error(await reason(response, `${path}: HTTP ${response.status}`));
  return response.json();
}

async function isHinotoriError(response) {
  try { return "hint" in (await response.json()); } catch { return false; }
}

async function reason(response, fallback) {
  try {
    const body = await response.json();
    // The sign-in panel already says what to do, so the error alone, as a sentence.
    if (body && body.error) return `${body.error[0].toUpperCase()}${body.error.slice(1)}.`;
  } catch { /* not JSON */ }
  return fallback;
}
