// Admin page: live progress and exports. The token stays in this tab (sessionStorage) and
// travels only in the Authorization header, never in a URL the server logs.
"use strict";

const $ = s => document.querySelector(s);
let token = sessionStorage.getItem("audiogen-admin") || "";
let timer = null;

async function call(path) {
  const r = await fetch(path, {headers: {authorization: "Bearer " + token}});
  if (r.status === 401) throw new Error("Wrong admin token.");
  if (!r.ok) throw new Error(`Server error ${r.status}`);
  return r;
}

async function refresh() {
  try {
    const p = await (await call("/api/admin/progress")).json();
    $("#status").textContent = "";
    $("#login").hidden = true;
    $("#panel").hidden = false;
    $("#exp-name").textContent = `${p.experiment} (${p.design})`;
    const rows = [["Participants", p.participants], ["Consented", p.consented], ["Completed", p.completed],
                  ["Answers", p.answers], ["Last answer", p.last_answer_at ? new Date(p.last_answer_at * 1000).toLocaleString() : "–"]];
    const body = $("#progress-table tbody");
    body.replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th"); th.textContent = k; th.scope = "row";
      const td = document.createElement("td"); td.textContent = String(v); td.dataset.key = k.toLowerCase().replace(" ", "_");
      tr.append(th, td); return tr;
    }));
    $("#updated").textContent = "Updated " + new Date().toLocaleTimeString() + " (refreshes every 5 s)";
  } catch (e) {
    $("#status").textContent = e.message;
    $("#login").hidden = false;
    $("#panel").hidden = true;
    clearInterval(timer); timer = null;
  }
}

async function download(kind) {
  try {
    const r = await call(`/api/admin/export.${kind}`);
    const url = URL.createObjectURL(await r.blob());
    const a = document.createElement("a");
    a.href = url; a.download = `answers.${kind}`;
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { $("#status").textContent = e.message; }
}

$("#login-form").addEventListener("submit", e => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("audiogen-admin", token);
  refresh();
  if (!timer) timer = setInterval(refresh, 5000);
});
$("#export-csv").addEventListener("click", () => download("csv"));
$("#export-json").addEventListener("click", () => download("json"));
if (token) { refresh(); timer = setInterval(refresh, 5000); }
