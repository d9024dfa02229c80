// mixkit web app: the hash router (#/ playground, #/runs browser, #/runs/<id> one run).
import { showPlayground, initPlayground } from "/static/playground.js";
import { showRuns, showRun, initRuns } from "/static/runs.js";
import { KEY, keyGiven } from "/static/util.js";

function route() {
  const hash = location.hash || "#/";
  const parts = hash.slice(2).split("/").map(decodeURIComponent);
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  const nav = parts[0] === "runs" ? "runs" : "play";
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === nav);
  }
  if (parts[0] === "runs" && parts[1]) showRun(parts[1], parts[2]);
  else if (parts[0] === "runs") showRuns();
  else showPlayground();
}

function init() {
  document.getElementById("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = document.getElementById("key-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    document.getElementById("key-input").value = "";
    document.getElementById("key-dialog").close();
    document.getElementById("forget-key").hidden = false;
    keyGiven();
  });
  // Without a key nothing can be shown: Escape does not dismiss the key prompt.
  document.getElementById("key-dialog").addEventListener("cancel", (e) => e.preventDefault());
  const forget = document.getElementById("forget-key");
  forget.hidden = !sessionStorage.getItem(KEY);
  forget.addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });
  initPlayground();
  initRuns();
  window.addEventListener("hashchange", route);
  route();
}

init();
