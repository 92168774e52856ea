// fleetgate console: the little behaviour the server-rendered pages need. No inline script anywhere
// (the CSP forbids it): everything hangs on data-* attributes. Text from the gateway is only ever
// placed with textContent, never parsed as HTML.
"use strict";

function post(url, body, totp) {
  const headers = { "Content-Type": "application/json" };
  if (totp) headers["X-Fleetgate-TOTP"] = totp;
  return fetch(url, { method: "POST", headers, body: JSON.stringify(body), credentials: "same-origin" })
    .then((r) => r.json().then((data) => ({ ok: r.ok, status: r.status, data })));
}

function ago(since) {
  const seconds = Math.max(0, Date.now() / 1000 - since);
  return seconds < 120 ? `${seconds.toFixed(0)} s ago` : `${(seconds / 60).toFixed(0)} min ago`;
}

function ticking() {
  setInterval(() => {
    document.querySelectorAll("[data-since]").forEach((s) => { s.textContent = ago(parseFloat(s.dataset.since)); });
  }, 1000);
}

// The unit page: state and control liveness refreshed every second; a changed state (a detector or
// another operator acted) reloads the page so its facts and buttons match.
function unitLive() {
  const control = document.getElementById("control");
  const mode = document.getElementById("mode");
  if (!control || !mode) return;
  const last = document.getElementById("control-last");
  setInterval(() => {
    fetch(control.dataset.live, { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : null)).then((live) => {
      if (!live) return;
      if (live.state !== mode.dataset.mode) { window.location.reload(); return; }
      if (live.control_at === null) return;
      const span = document.createElement("span");
      span.dataset.since = live.control_at.toFixed(3);
      span.textContent = ago(live.control_at);
      last.replaceChildren("last control message ", span, `: ${live.control_topic} from ${live.control_sender}`);
    }, () => {});
  }, 1000);
}

function unitActions() {
  const form = document.querySelector("[data-unit-action]");
  if (!form) return;
  const result = form.querySelector("#result");
  form.addEventListener("submit", (e) => e.preventDefault());
  form.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", () => {
      const reason = form.querySelector("#reason");
      const totp = form.querySelector("#totp");
      const body = {};
      if (button.dataset.action === "quarantine") {
        if (!reason.value.trim()) { result.textContent = "Give a reason first."; reason.focus(); return; }
        body.reason = reason.value;
      }
      if (totp && !/^[0-9]{6}$/.test(totp.value.trim())) {
        result.textContent = "Enter the 6-digit TOTP code."; totp.focus(); return;
      }
      button.disabled = true;
      result.textContent = "Working…";
      post(button.dataset.url, body, totp ? totp.value.trim() : "").then(({ ok, data }) => {
        if (ok) { result.textContent = `Done: ${data.state}.`; window.location.reload(); return; }
        result.textContent = `Refused: ${data.error} (${data.code})`;
        button.disabled = false;
      }, () => { result.textContent = "The gateway did not answer."; button.disabled = false; });
    });
  });
}

function events() {
  const list = document.getElementById("events");
  if (!list || !window.EventSource) return;
  const state = document.getElementById("ev-state");
  const source = new EventSource(list.dataset.stream);
  source.onopen = () => { state.textContent = "following the gateway's events"; };
  source.onerror = () => { state.textContent = "reconnecting…"; };
  const seen = new Set();  // a reconnect replays from the page's start: show each record once
  source.addEventListener("audit", (e) => {
    if (seen.has(e.lastEventId)) return;
    seen.add(e.lastEventId);
    const r = JSON.parse(e.data);  // the gateway sends fleet events only (console.fleet_event)
    const li = document.createElement("li");
    li.className = `event outcome-${r.outcome}`;
    li.textContent = `${r.at.slice(11, 19)} ${r.action} ${r.subject} ${r.outcome}` +
      (r.reason ? ` (${r.reason})` : "") + ` by ${r.actor}`;
    list.prepend(li);
    while (list.children.length > 100) list.lastChild.remove();
  });
}

function partnerCut() {
  const panel = document.getElementById("cut");
  if (!panel) return;
  const totp = document.getElementById("cut-totp");
  const out = document.getElementById("cut-result");
  const dry = document.getElementById("cut-dry");
  const go = document.getElementById("cut-go");
  let url = "";
  document.querySelectorAll("button[data-partner]").forEach((b) => b.addEventListener("click", () => {
    url = b.dataset.url;
    panel.hidden = false; go.disabled = true; out.textContent = ""; totp.value = "";
    document.getElementById("cut-t").textContent = `Disconnect partner ${b.dataset.partner}`;
    totp.focus();
  }));
  document.getElementById("cut-cancel").addEventListener("click", () => { panel.hidden = true; });
  const send = (dryRun) => post(url, { dry_run: dryRun }, totp.value.trim()).then(({ ok, data }) => {
    if (!ok) { out.textContent = `Refused: ${data.error} (${data.code})`; return; }
    out.textContent = (dryRun ? "Would revoke and close:\n" : "Done:\n") +
      `identities: ${data.identities.join(", ")}\ncertificates: ${data.certificates}\n` +
      `tokens: ${data.tokens}\nlive sessions: ${data.sessions}\nsubscriptions: ${data.subscriptions}\n` +
      `offline sessions: ${data.offline_sessions}` + (dryRun ? "\nEnter the next TOTP code to confirm." : "");
    totp.value = "";
    go.disabled = !dryRun;
    if (!dryRun) window.setTimeout(() => window.location.reload(), 1500);
  });
  dry.addEventListener("click", () => send(true));
  go.addEventListener("click", () => send(false));
}

document.addEventListener("DOMContentLoaded", () => { ticking(); unitLive(); unitActions(); events(); partnerCut(); });
