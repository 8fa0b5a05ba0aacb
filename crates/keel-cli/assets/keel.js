// Keel's dashboard script: live parts, action buttons, a followed log. No framework, no build.
"use strict";

// Parts of a page marked data-live (each with an id) are fetched again every few seconds while
// the page is visible and its body says it is live, and replaced when they changed.
const REFRESH_MS = 3000;

async function refreshLiveParts() {
  if (document.hidden || document.body.dataset.livePage !== "on") return;
  let response;
  try {
    response = await fetch(location.href, { headers: { "Accept": "text/html" }, cache: "no-store" });
  } catch (_) {
    return; // serve restarting: try again on the next turn
  }
  if (!response.ok) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const part of document.querySelectorAll("[data-live][id]")) {
    const next = fresh.getElementById(part.id);
    if (next && next.innerHTML !== part.innerHTML) part.innerHTML = next.innerHTML;
  }
  if (fresh.body && fresh.body.dataset.livePage === "off") document.body.dataset.livePage = "off";
}

// The API token is kept in this browser only (localStorage), and sent only to this origin.
const TOKEN_KEY = "keel-api-token";

function token() {
  const field = document.getElementById("api-token");
  if (field && field.value.trim()) {
    localStorage.setItem(TOKEN_KEY, field.value.trim());
    field.value = "";
  }
  return localStorage.getItem(TOKEN_KEY) || "";
}

// A button with data-action="/api/..." POSTs its data-body (JSON) with the bearer token and
// shows the API's answer beside it.
async function act(button) {
  const out = document.getElementById("action-result");
  const say = (text, failed) => { if (out) { out.textContent = text; out.classList.toggle("error", !!failed); } };
  let body = button.dataset.body || "{}";
  const pick = button.dataset.tasksFrom && document.getElementById(button.dataset.tasksFrom);
  if (pick && pick.value.trim()) {
    body = JSON.stringify({ tasks: pick.value.split(",").map((t) => t.trim()).filter(Boolean) });
  }
  const secret = token();
  if (!secret) { say("enter the API token first (KEEL_API_TOKEN or the api-token file beside the state)", true); return; }
  say(button.textContent + "…");
  let response;
  try {
    response = await fetch(button.dataset.action, {
      method: "POST",
      headers: { "Authorization": "Bearer " + secret, "Content-Type": "application/json" },
      body,
    });
  } catch (error) {
    say("the request failed: " + error, true);
    return;
  }
  let answer = {};
  try { answer = await response.json(); } catch (_) { /* not JSON */ }
  if (response.status === 401) localStorage.removeItem(TOKEN_KEY);
  if (!response.ok) {
    say((answer.error || response.statusText) + (answer.hint ? " — " + answer.hint : ""), true);
    return;
  }
  say(answer.message || "done");
  document.body.dataset.livePage = "on";
  refreshLiveParts();
}

// A <pre data-follow="URL" data-from="N"> appends what the log gains past byte N while its
// attempt runs, through the API's followed log.
async function follow(pre) {
  const url = pre.dataset.follow + "?follow=true&from=" + encodeURIComponent(pre.dataset.from || "0");
  let response;
  try { response = await fetch(url); } catch (_) { return; }
  if (!response.ok || !response.body) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const status = document.getElementById("follow-status");
  if (status) status.textContent = "following";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(decoder.decode(value, { stream: true }));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
  if (status) status.textContent = "the attempt ended";
}

document.addEventListener("DOMContentLoaded", () => {
  setInterval(refreshLiveParts, REFRESH_MS);
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) { event.preventDefault(); act(button); }
  });
  const stored = document.getElementById("token-stored");
  if (stored) stored.textContent = localStorage.getItem(TOKEN_KEY) ? "token saved in this browser" : "";
  for (const pre of document.querySelectorAll("pre[data-follow]")) follow(pre);
});
