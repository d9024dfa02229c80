// The playground: pick a mixture, ask, and watch every agent of every layer answer live.
// It reads POST /api/runs, a stream of the engine's RunEvents (see the README's event format).
import { el, fmt, api, apiJSON, gateScore, programBlock } from "/static/util.js";

const $ = (id) => document.getElementById(id);
const state = { mixtures: {}, history: [], conversationId: null, run: null, loaded: false };

export function initPlayground() {
  $("ask").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newConversation);
  $("mixture").addEventListener("change", () => {
    localStorage.setItem("mixkit.mixture", $("mixture").value);
    describeMixture();
  });
}

export async function showPlayground() {
  $("view-play").hidden = false;
  if (!state.loaded) await loadMixtures();
  $("prompt").focus();
}

async function loadMixtures() {
  const body = await apiJSON("/api/mixtures");
  const select = $("mixture");
  select.replaceChildren();
  for (const m of body.mixtures) {
    state.mixtures[m.name] = m;
    select.append(el("option", { value: m.name }, m.name));
  }
  const saved = localStorage.getItem("mixkit.mixture");
  if (saved && state.mixtures[saved]) select.value = saved;
  state.logging = body.logging;
  state.loaded = true;
  describeMixture();
}

function describeMixture() {
  const m = state.mixtures[$("mixture").value];
  if (!m) return;
  const shape = m.layers.map((l) => l.join(", ")).concat([`aggregator ${m.aggregator}`]);
  $("mixture-info").textContent = `${m.description || m.name} · ${shape.join(" → ")} · deadline ${m.deadline_s} s per call`;
}

function newConversation() {
  if (state.run) stop();
  state.history = [];
  state.conversationId = null;
  $("conversation").replaceChildren();
  $("live").replaceChildren();
  $("prompt").focus();
}

function setRunning(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("mixture").disabled = on;
}

function stop() {
  const run = state.run;
  if (!run) return;
  run.stopped = true;
  run.controller.abort(); // closing the stream is what cancels the run on the server
  finish(run, "cancelled", "stopped by you");
}

async function send() {
  const text = $("prompt").value.trim();
  if (!text || state.run) return;
  const model = $("mixture").value;
  const messages = [...state.history, { role: "user", content: text }];
  $("prompt").value = "";
  const turn = el("div.turn", {}, el("div.user", {}, text), el("div.assistant.pending", {}, "answering (the agents are below)…"));
  $("conversation").append(turn);
  const run = newRunView(text, model, turn);
  state.run = run;
  setRunning(true);
  let response;
  try {
    response = await api("/api/runs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages, conversation_id: state.conversationId || undefined }),
      signal: run.controller.signal,
    });
  } catch (err) {
    if (!run.stopped) finish(run, "error", String(err));
    return;
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    finish(run, "error", body.error ? body.error.message : `HTTP ${response.status}`);
    return;
  }
  try {
    await readEvents(response.body, (type, ev) => handle(run, type, ev));
    if (!run.done) finish(run, "error", "the stream ended before the run did");
  } catch (err) {
    if (!run.stopped) finish(run, "error", `stream broken: ${err}`);
  }
  run.messages = messages;
}

// Parse a text/event-stream body: call onEvent(type, parsedData) for each event.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(type, JSON.parse(data.join("\n")));
    }
  }
}

function newRunView(question, model, turn) {
  const status = el("span.badge.running", {}, "running");
  const stats = el("span.muted.small", {}, "");
  const head = el("div.run-head", {}, el("strong", {}, model), status, stats);
  const rows = el("div.rows");
  $("live").replaceChildren(head, rows);
  return {
    controller: new AbortController(), model, question, turn, status, stats, rows,
    layers: new Map(), cards: new Map(), answer: null, answerText: "", done: false, runId: null,
    finalLayer: null, aggregator: "answer",
  };
}

function layerRow(run, layer, title) {
  if (!run.layers.has(layer)) {
    const note = el("span.muted.small", {}, "");
    const gate = el("span.muted.small.gate-note", {}, "");
    const cards = el("div.cards");
    const row = el("div.layer", { dataset: { layer } },
      el("div.layer-title", {}, title, " ", note, " ", gate), cards);
    run.rows.append(row);
    run.layers.set(layer, { row, cards, note, gate });
  }
  return run.layers.get(layer);
}

function card(run, layer, agent) {
  const key = `${layer}/${agent}`;
  if (!run.cards.has(key)) {
    const final = layer === run.finalLayer;
    const text = document.createTextNode("");
    const reasoning = el("div.reasoning", { hidden: true }); // a program agent's program, dim
    const body = el(final ? "div.body.answer" : "div.body", {}, reasoning, text);
    const status = el("span.badge", {}, "waiting");
    const score = el("span.score", { hidden: true });
    const foot = el("div.foot.muted.small", {}, "");
    const node = el(final ? "div.card.final" : "div.card", { dataset: { layer, agent } },
      el("div.head", {}, el("strong", {}, agent), score, status), body, foot);
    const row = layerRow(run, layer, final ? "answer" : `layer ${layer}`);
    row.cards.append(node);
    run.cards.set(key, { node, body, text, reasoning, status, score, foot });
  }
  return run.cards.get(key);
}

function append(c, text) {
  const stick = c.body.scrollTop + c.body.clientHeight >= c.body.scrollHeight - 4;
  c.text.data += text;
  if (stick) c.body.scrollTop = c.body.scrollHeight;
}

function setStatus(c, outcome) {
  c.status.textContent = outcome;
  c.status.className = `badge ${outcome}`;
  c.node.classList.remove("running", "ok", "error", "cancelled");
  c.node.classList.add(outcome);
}

function handle(run, type, ev) {
  const d = ev.data || {};
  // The final layer's calls (the aggregator, or its steps "agg@1", "agg@2" ... when the mixture
  // streams in a staircase) all feed the one answer card.
  const agent = ev.layer === run.finalLayer ? run.aggregator : ev.agent;
  if (type === "run_start") {
    run.runId = ev.run_id;
    run.finalLayer = d.layers.length + 1;
    run.aggregator = d.aggregator;
    d.layers.forEach((labels, i) => labels.forEach((a) => card(run, i + 1, a)));
    card(run, run.finalLayer, d.aggregator);
  } else if (type === "call_start") {
    const c = card(run, ev.layer, agent);
    setStatus(c, "running");
    c.foot.textContent = agent === ev.agent ? d.model || "" : `${ev.agent} · ${d.model || ""}`;
  } else if (type === "call_token") {
    if (ev.layer !== run.finalLayer) append(card(run, ev.layer, ev.agent), ev.text);
  } else if (type === "call_retry") {
    const c = card(run, ev.layer, agent);
    if (ev.layer !== run.finalLayer) c.text.data = ""; // the answer's own text is never taken back
    c.foot.textContent = `retry ${d.attempt}: ${d.error}`;
  } else if (type === "call_end") {
    const c = card(run, ev.layer, agent);
    setStatus(c, d.outcome);
    const tokens = `${d.prompt_tokens ?? "?"} → ${d.completion_tokens ?? "?"} tok`;
    const who = agent === ev.agent ? d.model : `${ev.agent} · ${d.model}`;
    c.foot.textContent = `${who} · ${fmt.s(d.latency_s)} s · TTFT ${fmt.s(d.ttft_s)} s · ${tokens}`;
    if (d.error) c.foot.append(el("div.error", {}, d.error));
    const programs = programBlock(d.programs);
    if (programs) c.foot.before(programs);
  } else if (type === "layer_end") {
    layerRow(run, ev.layer, `layer ${ev.layer}`).note.textContent = `${d.ok}/${d.calls} answered`;
  } else if (type === "gate") {
    showGate(run, ev, d);
  } else if (type === "early_exit") {
    layerRow(run, ev.layer, `layer ${ev.layer}`).gate.append(
      ` · early exit: ${d.answers} answers agreed`);
  } else if (type === "answer_reasoning") { // the program that makes the answer, as it is written
    const c = card(run, run.finalLayer, run.aggregator);
    c.reasoning.hidden = false;
    c.reasoning.append(ev.text);
  } else if (type === "answer_token") {
    run.answerText += ev.text;
    append(card(run, run.finalLayer, run.aggregator), ev.text);
  } else if (type === "run_end") {
    const stats = `wall ${fmt.s(d.wall_s)} s · TTFT ${fmt.s(d.ttft_s)} s · critical path ${fmt.s(d.critical_path_s)} s · ${d.prompt_tokens} in / ${d.completion_tokens} out`;
    run.stats.textContent = stats;
    finish(run, d.outcome, d.error);
  } else if (type === "error") {
    run.error = d.error ? d.error.message : "the run failed";
  }
}

// The gate's decision: every candidate's score on its card; skipped agents greyed out.
// Candidates are the first layer's slot labels ("qwen#2"); scores are per agent ("qwen") plus
// "mix", the predicted chance that combining the top ones is right.
function showGate(run, ev, d) {
  const layer = ev.layer || 1;
  const scores = d.scores || {};
  const skipped = d.skipped || [];
  for (const label of [...(d.chosen || []), ...skipped]) {
    const c = card(run, layer, label);
    const score = gateScore(scores, label);
    if (score !== null) {
      c.score.hidden = false;
      c.score.textContent = `score ${score.toFixed(2)}`;
    }
    if (skipped.includes(label)) {
      setStatus(c, "skipped");
      c.node.classList.add("skipped");
      c.foot.textContent = "skipped by the gate";
    }
  }
  const mix = "mix" in scores ? `, mix score ${Number(scores.mix).toFixed(2)}` : "";
  layerRow(run, layer, `layer ${layer}`).gate.textContent =
    `· gate (${d.strategy}): ${(d.chosen || []).length} chosen, ${skipped.length} skipped${mix}`;
}

function finish(run, outcome, error) {
  if (run.done) return;
  run.done = true;
  state.run = null;
  setRunning(false);
  run.status.textContent = outcome === "cancelled" && run.stopped ? "stopped" : outcome;
  run.status.className = `badge ${outcome}`;
  const reply = run.turn.querySelector(".assistant");
  reply.classList.remove("pending");
  if (outcome === "ok") {
    reply.textContent = run.answerText;
    state.history.push({ role: "user", content: run.question }, { role: "assistant", content: run.answerText });
    state.conversationId = state.conversationId || run.runId;
  } else {
    reply.classList.add("failed");
    reply.textContent = `(${run.stopped ? "stopped" : outcome}${error || run.error ? ": " + (run.error || error) : ""})`;
  }
  if (run.runId && state.logging) { // with --no-log there is no timeline to open
    run.stats.append(" · ", el("a", { href: `#/runs/${encodeURIComponent(run.runId)}` }, "timeline"));
  }
  for (const c of run.cards.values()) {
    const status = c.status.textContent;
    if (outcome !== "ok" && (status === "running" || status === "waiting")) setStatus(c, "cancelled");
    else if (status === "waiting") {
      // A gated run may answer without this call (one agent alone, a vote, an early exit).
      c.status.textContent = "not run";
      c.status.className = "badge cancelled";
      if (c.node.classList.contains("final")) c.foot.textContent = "answered without an aggregator call";
    }
  }
  $("prompt").focus();
}
