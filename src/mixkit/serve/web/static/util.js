// Shared by the views: DOM helpers, number formats, and the API client with the bearer key.
// Every piece of model output and user text reaches the page through text nodes, never as HTML.
export const KEY = "mixkit.apiKey";

// el("div.card.ok", {title: "x"}, "text", child) -> an element; strings become text nodes.
export function el(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export const fmt = {
  s: (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d)),
  when: (unix) => new Date(unix * 1000).toLocaleString(),
};

export function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// Wait for the user to give a key (the dialog), then resolve.
export let keyWaiters = [];
export function keyGiven() {
  const waiters = keyWaiters;
  keyWaiters = [];
  for (const w of waiters) w();
}
function askForKey(message) {
  const dialog = document.getElementById("key-dialog");
  const error = document.getElementById("key-error");
  error.hidden = !message;
  error.textContent = message || "";
  if (!dialog.open) dialog.showModal();
  document.getElementById("key-input").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

// fetch() against our own /api with the key; on 401 ask for the key and try again.
export async function api(path, options = {}) {
  for (;;) {
    const headers = { ...(options.headers || {}), ...authHeaders() };
    const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
    if (response.status !== 401) return response;
    const hadKey = Boolean(sessionStorage.getItem(KEY));
    sessionStorage.removeItem(KEY);
    document.getElementById("forget-key").hidden = true;
    await askForKey(hadKey ? "That key was refused." : "");
  }
}

export async function apiJSON(path) {
  const response = await api(path);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

// A gate's score for a slot label ("qwen#2"): scores are keyed by agent ("qwen").
export function gateScore(scores, label) {
  const value = label in scores ? scores[label] : scores[label.split("#")[0]];
  return value === undefined || value === null ? null : Number(value);
}

// A program agent's attempts (CallRecord.programs): per attempt its status, sandbox mode and
// time, the program, and what it printed (or why it failed).
export function programBlock(programs) {
  if (!programs || !programs.length) return null;
  return el("div.programs", {}, ...programs.map((p) => el("div.program", { dataset: { status: p.status } },
    el("div.program-head.small", {}, `program ${p.attempt}: `, el(`span.badge.${p.status === "ok" ? "ok" : "error"}`, {}, p.status),
      ` ${p.mode || ""} · ${fmt.s(p.wall_s)} s`),
    el("pre.code", {}, p.program),
    p.status === "ok" ? el("pre.output", {}, `printed: ${p.output}`) : el("pre.output.error", {}, p.error || ""))));
}
