// The run browser: logged runs (search, filters), and one run as a Gantt timeline of its calls.
import { el, fmt, apiJSON, gateScore, programBlock } from "/static/util.js";

const $ = (id) => document.getElementById(id);
const list = { oldest: null, timer: null, seq: 0 };

export function initRuns() {
  $("run-filters").addEventListener("submit", (e) => e.preventDefault());
  $("run-q").addEventListener("input", () => {
    clearTimeout(list.timer);
    list.timer = setTimeout(() => loadRuns(true), 250);
  });
  $("run-mixture").addEventListener("change", () => loadRuns(true));
  $("run-outcome").addEventListener("change", () => loadRuns(true));
  $("run-more").addEventListener("click", () => loadRuns(false));
}

export function showRuns() {
  $("view-runs").hidden = false;
  loadRuns(true);
}

async function loadRuns(reset) {
  const params = new URLSearchParams({ limit: "50" });
  for (const [name, id] of [["q", "run-q"], ["mixture", "run-mixture"], ["outcome", "run-outcome"]]) {
    if ($(id).value) params.set(name, $(id).value);
  }
  if (!reset && list.oldest !== null) params.set("before", String(list.oldest));
  const seq = ++list.seq;
  const body = await apiJSON(`/api/runs?${params}`);
  if (seq !== list.seq) return; // a newer search was typed meanwhile: its answer wins
  const tbody = $("run-table").querySelector("tbody");
  if (reset) tbody.replaceChildren();
  for (const r of body.runs) tbody.append(runRow(r));
  list.oldest = body.runs.length ? body.runs[body.runs.length - 1].started_at : list.oldest;
  $("run-more").hidden = body.runs.length < 50;
  const mixture = $("run-mixture");
  const chosen = mixture.value;
  mixture.replaceChildren(el("option", { value: "" }, "all mixtures"),
    ...body.mixtures.map((m) => el("option", { value: m }, m)));
  mixture.value = chosen;
  const empty = $("run-empty");
  empty.hidden = tbody.children.length > 0;
  empty.textContent = body.logging ? "No runs match." : "This server does not log runs (--no-log).";
}

function runRow(r) {
  const href = `#/runs/${encodeURIComponent(r.id)}`;
  const row = el("tr", { dataset: { run: r.id }, onclick: () => { location.hash = href; } },
    el("td.nowrap", {}, fmt.when(r.started_at)),
    el("td", {}, r.preset),
    el("td", {}, el(`span.badge.${r.outcome}`, {}, r.outcome)),
    el("td.question", {}, el("a", { href }, r.question)),
    el("td.num", {}, fmt.s(r.wall_s)),
    el("td.num", {}, fmt.s(r.ttft_s)),
    el("td.num", {}, `${r.calls_ok}/${r.calls}`),
    el("td.num", {}, `${r.prompt_tokens + r.completion_tokens}`));
  return row;
}

export async function showRun(runId, callId) {
  $("view-run").hidden = false;
  $("call-detail").hidden = true;
  $("timeline").replaceChildren();
  let body;
  try {
    body = await apiJSON(`/api/runs/${encodeURIComponent(runId)}`);
  } catch (err) {
    $("run-head").replaceChildren(el("p.error", {}, String(err.message || err)));
    return;
  }
  $("run-head").replaceChildren(runHead(body));
  $("timeline").replaceChildren(timeline(body));
  if (callId) showCall(runId, Number(callId));
}

function runHead({ run, calls, conversation, gate, early_exit: early, structured }) {
  const tokensIn = calls.reduce((n, c) => n + (c.prompt_tokens || 0), 0);
  const tokensOut = calls.reduce((n, c) => n + (c.completion_tokens || 0), 0);
  const link = `${location.origin}${location.pathname}#/runs/${encodeURIComponent(run.id)}`;
  const turns = conversation.length > 1
    ? el("div.small", {}, "conversation: ", ...conversation.map((t, i) =>
      t.id === run.id ? el("strong", {}, ` turn ${i + 1} `)
        : el("a", { href: `#/runs/${encodeURIComponent(t.id)}`, title: t.question }, ` turn ${i + 1} `)))
    : null;
  return el("div.run-summary", {},
    el("div", {}, el("a", { href: "#/runs" }, "← runs"), " ",
      el("strong", {}, run.preset), " ", el(`span.badge.${run.outcome}`, {}, run.outcome), " ",
      el("span.muted.small", {}, fmt.when(run.started_at)), " ",
      el("a.small.permalink", { href: link }, "permalink")),
    el("div.q", {}, run.question),
    run.error ? el("div.error", {}, run.error) : null,
    gate ? el("div.small", {}, `gate (${gate.strategy}): chose ${(gate.chosen || []).join(", ")}`
      + ((gate.skipped || []).length ? `, skipped ${gate.skipped.join(", ")}` : "")) : null,
    early ? el("div.small", {}, `early exit after layer ${early.layer}: ${early.answers} answers agreed`) : null,
    structuredLine(structured),
    el("div.muted.small", {},
      `wall ${fmt.s(run.wall_s)} s · TTFT ${fmt.s(run.ttft_s)} s · critical path ${fmt.s(run.critical_path_s)} s`
      + ` · ${tokensIn} tokens in / ${tokensOut} out · ${calls.length} calls`
      + (run.cost_usd ? ` · $${Number(run.cost_usd).toFixed(4)}` : "")),
    turns);
}

// What a run with structured output or tools was asked for, and how its answer fared.
function structuredLine(s) {
  if (!s) return null;
  const parts = [];
  const rf = s.response_format || {};
  if (rf.type === "json_schema") parts.push(`JSON schema ${(rf.json_schema || {}).name || ""}`);
  else if (rf.type === "json_object") parts.push("JSON object");
  if (s.tools) parts.push(`tools ${s.tools.map((t) => t.function.name).join(", ")} (choice ${JSON.stringify(s.tool_choice)})`);
  if (s.votes) parts.push(`votes ${Object.entries(s.votes).map(([k, v]) => `${k}: ${v}`).join(", ")}`);
  for (const c of s.tool_calls || []) parts.push(`called ${c.function.name}(${c.function.arguments})`);
  parts.push(s.validated === true ? "validated" : s.validated === false ? "NOT valid" : "not checked");
  if (s.repairs) parts.push(`${s.repairs} repair`);
  if ((s.errors || []).length) parts.push(`errors: ${s.errors.join("; ")}`);
  return el("div.small.structured", {}, "structured output: " + parts.join(" · "));
}

// Per layer, the call that ended last held the layer up: it is on the critical path.
function criticalCalls(calls) {
  const slowest = new Map();
  for (const c of calls) {
    const best = slowest.get(c.layer);
    if (!best || (c.latency_s || 0) >= (best.latency_s || 0)) slowest.set(c.layer, c);
  }
  return new Set([...slowest.values()].map((c) => c.id));
}

function timeline(body) {
  const { run, calls, gate, deadline_s: deadline, deadline_from: from } = body;
  const t0 = run.started_at;
  const start = (c) => Math.max(0, (c.started_at || t0) - t0);
  const end = (c) => start(c) + (c.latency_s || 0);
  const layers = [...new Set(calls.map((c) => c.layer))].sort((a, b) => a - b);
  const final = layers.length ? layers[layers.length - 1] : 1;
  const layerStart = new Map(layers.map((l) =>
    [l, Math.min(...calls.filter((c) => c.layer === l).map(start))]));
  let span = Math.max(run.wall_s || 0, ...calls.map(end), 0.001);
  const deadlines = [];
  if (deadline) {
    for (const l of layers) {
      const at = layerStart.get(l) + deadline;
      if (at <= span * 1.5) deadlines.push([l, at]);
    }
    span = Math.max(span, ...deadlines.map(([, at]) => at));
  }
  const pct = (t) => `${(100 * t) / span}%`;
  const critical = criticalCalls(calls);
  const chart = el("div.gantt");
  chart.append(axis(span, pct));
  for (const l of layers) {
    // A gated run may answer without an aggregator (one agent alone, a vote, an early exit).
    const title = l === final && layers.length > 1 && !body.early_exit ? `aggregator (layer ${l})` : `layer ${l}`;
    chart.append(el("div.g-layer", {}, title));
    for (const c of calls.filter((x) => x.layer === l)) {
      chart.append(callRow(body, c, start(c), end(c), critical.has(c.id), pct));
    }
    for (const g of gateRows(gate, l)) chart.append(g);
  }
  const marks = el("div.g-marks");
  if (run.ttft_s !== null && run.ttft_s !== undefined) {
    marks.append(el("div.mark.ttft", { style: { left: pct(run.ttft_s) }, title: "time to the answer's first token" },
      el("span", {}, `TTFT ${fmt.s(run.ttft_s)} s`)));
  }
  for (const [l, at] of deadlines) {
    marks.append(el("div.mark.deadline", { style: { left: pct(at) }, title: `layer ${l}'s deadline` },
      el("span", {}, `deadline L${l}`)));
  }
  chart.append(marks);
  const legend = el("div.legend.small.muted", {},
    el("span.key.wait", {}), "waiting for the first token ",
    el("span.key.gen", {}), "generating ",
    el("span.key.crit", {}), "critical path ",
    el("span.key.err", {}), "failed ",
    el("span.key.cancel", {}), "cancelled",
    deadline && !deadlines.length ? ` · deadline ${deadline} s per call, beyond the chart` : "",
    from === "mixture" ? " · deadline: the served mixture's (this run predates logged deadlines)" : "",
    deadline ? "" : " · deadline unknown (not logged, and the mixture is not served here)");
  return el("div", {}, chart, legend);
}

function axis(span, pct) {
  const ticks = el("div.g-axis");
  const step = niceStep(span / 6);
  for (let t = 0; t <= span + 1e-9; t += step) {
    ticks.append(el("span.tick", { style: { left: pct(t) } }, `${+t.toFixed(3)} s`));
  }
  return el("div.g-row.g-head", {}, el("div.g-label", {}, "call"), ticks, el("span.g-info.small", {}, "latency"));
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function callRow(body, c, s, e, isCritical, pct) {
  const ttft = c.ttft_s === null || c.ttft_s === undefined ? null : Math.min(c.ttft_s, e - s);
  const bar = el(`div.bar.${c.outcome}${isCritical ? ".critical" : ""}`,
    { style: { left: pct(s), width: pct(Math.max(e - s, 0)) },
      title: `${c.agent}: ${fmt.s(c.latency_s)} s, TTFT ${fmt.s(c.ttft_s)} s` },
    ttft !== null ? el("span.wait", { style: { width: `${(100 * ttft) / Math.max(e - s, 1e-9)}%` } }) : null);
  const gate = body.gate && c.layer === (body.gate.layer ?? 1) ? gateScore(body.gate.scores || {}, c.agent) : null;
  const label = el("div.g-label", {}, el("span", {}, c.agent), el("span.muted.small", {}, ` ${c.model}`),
    c.programs ? el("span.score", { title: `program: ${c.programs[c.programs.length - 1].status}` }, "program") : null,
    gate === null ? null : el("span.score", {}, `score ${gate.toFixed(2)}`));
  const info = el("span.g-info.small", {}, `${fmt.s(c.latency_s)} s`);
  const row = el("div.g-row.call", {
    dataset: { call: c.id, outcome: c.outcome, critical: isCritical ? "1" : "0" },
    onclick: () => {
      history.replaceState(null, "", `#/runs/${encodeURIComponent(body.run.id)}/${c.id}`);
      showCall(body.run.id, c.id);
    },
  }, label, el("div.track", {}, bar), info);
  if (c.error) row.append(el("div.g-error.small", {}, `${c.outcome}: ${c.error}`));
  return row;
}

// The gate's skipped candidates of a layer, as greyed-out rows with their scores.
function gateRows(gate, layer) {
  if (!gate || (gate.layer ?? 1) !== layer) return [];
  return (gate.skipped || []).map((name) => {
    const score = gateScore(gate.scores || {}, name);
    return el("div.g-row.skipped", { dataset: { skipped: name } },
      el("div.g-label", {}, el("span", {}, name)),
      el("div.track.small", {},
        `skipped by the gate (${gate.strategy})${score === null ? "" : `, score ${score.toFixed(2)}`}`),
      el("span"));
  });
}

async function showCall(runId, callId) {
  const box = $("call-detail");
  box.hidden = false;
  box.replaceChildren(el("p.muted", {}, "loading…"));
  for (const r of document.querySelectorAll(".g-row.call")) {
    r.classList.toggle("selected", Number(r.dataset.call) === callId);
  }
  let body;
  try {
    body = await apiJSON(`/api/runs/${encodeURIComponent(runId)}/calls/${callId}`);
  } catch (err) {
    box.replaceChildren(el("p.error", {}, String(err.message || err)));
    return;
  }
  const c = body.call;
  const facts = [
    ["layer", c.layer], ["model", `${c.model} (${c.provider})`], ["outcome", c.outcome],
    ["latency", `${fmt.s(c.latency_s)} s`], ["TTFT", `${fmt.s(c.ttft_s)} s`],
    ["prompt tokens", c.prompt_tokens ?? "–"], ["completion tokens", c.completion_tokens ?? "–"],
    ["attempts", c.attempts],
  ];
  box.replaceChildren(el("div", {},
    el("h3", {}, c.agent),
    el("dl.facts", {}, ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
    c.error ? el("p.error", {}, c.error) : null,
    el("h4", {}, "prompt (rebuilt from the log)"),
    body.prompt_note ? el("p.muted.small.prompt-note", {}, body.prompt_note) : null,
    ...body.prompt.map((m) => el("div.msg", {}, el("div.role", {}, m.role), el("pre", {}, m.content))),
    c.programs ? el("h4", {}, "programs (run in the sandbox)") : null,
    programBlock(c.programs),
    el("h4", {}, "answer"),
    el("pre.answer-text", {}, c.response || "(nothing)")));
}
