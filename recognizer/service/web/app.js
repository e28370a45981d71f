// Shared by every page: the navigation bar, the write token (kept in this browser's localStorage),
// fetch helpers that turn the API's JSON errors into messages, and images fetched with the token.
"use strict";
const TOKEN_KEY = "recognizer.token";
const token = () => localStorage.getItem(TOKEN_KEY) || "";
function authHeaders() { return token() ? { Authorization: "Bearer " + token() } : {}; }

function nav(here) {
  const pages = [["items", "Items"], ["live", "Live"], ["check", "Check"], ["report", "Report"]];
  const bar = document.createElement("nav");
  for (const [page, title] of pages) {
    const a = document.createElement("a");
    a.href = "/app/" + page + ".html"; a.textContent = title; a.id = "nav-" + page;
    if (page === here) a.className = "here";
    bar.appendChild(a);
  }
  const t = document.createElement("span");
  t.className = "token";
  t.innerHTML = 'token <input id="token" type="password" autocomplete="off" placeholder="for enrol, rename, remove"> <a href="/docs">API</a>';
  bar.appendChild(t);
  document.body.prepend(bar);
  const input = document.getElementById("token");
  input.value = token();
  input.addEventListener("change", () => localStorage.setItem(TOKEN_KEY, input.value.trim()));
}

async function api(method, path, body) {
  const opts = { method, headers: authHeaders() };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || (r.status + " " + r.statusText));
  return data;
}

async function setImage(img, url) {
  // images go through fetch so that a token-protected server still shows them
  try {
    const r = await fetch(url, { headers: authHeaders() });
    if (!r.ok) throw new Error(String(r.status));
    img.src = URL.createObjectURL(await r.blob());
  } catch (e) {
    img.alt = "no photo"; img.title = "no stored photo for this item";
    img.src = "data:image/svg+xml," + encodeURIComponent('<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120"><rect width="160" height="120" fill="#e4e4e4"/><text x="80" y="64" font-size="14" text-anchor="middle" fill="#888">no photo</text></svg>');
  }
}

function show(el, text, cls) { el.textContent = text; el.className = "status " + (cls || ""); }
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
