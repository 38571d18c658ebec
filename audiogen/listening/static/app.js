// audiogen listening test: the participant's side. No framework; every control is a native
// button, radio, slider or link, so the whole flow works with the keyboard alone.
// Flow: consent -> headphone screening -> volume calibration -> practice -> trials (catch
// trials mixed in) -> completion code. The session token lives in localStorage, so a reload
// or a closed tab resumes where the participant stopped.
"use strict";

const KEY = "audiogen-listen:" + location.pathname;
const $ = (sel, el = document) => el.querySelector(sel);
const main = $("#main");
let S = null;            // the session view from the server
let current = null;      // {step, players, answer}

function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "text") el.textContent = v;
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v != null) el.setAttribute(k, v);
  }
  for (const kid of kids.flat()) if (kid != null) el.append(kid.nodeType ? kid : document.createTextNode(kid));
  return el;
}

function status(msg) { $("#status").textContent = msg || ""; }

async function api(method, path, body, {retries = 8} = {}) {
  const headers = {"content-type": "application/json"};
  if (S && S.token) headers["x-session"] = S.token;
  for (let attempt = 0; ; attempt++) {
    let r;
    try {
      r = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
    } catch (e) { r = null; }
    if (r && r.status < 500 && r.status !== 429) {
      status("");
      const data = await r.json().catch(() => ({}));
      return {status: r.status, data};
    }
    if (attempt >= retries) throw new Error("The server cannot be reached. Your answers so far are saved; please reload the page in a minute.");
    status("Connection problem, retrying…");
    await new Promise(res => setTimeout(res, Math.min(8000, 400 * 2 ** attempt)));
  }
}

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
  const a = new Uint8Array(16); crypto.getRandomValues(a);
  return Array.from(a, b => b.toString(16).padStart(2, "0")).join("");
}

function progress() {
  const total = S.steps.length, done = S.answered.length;
  const pct = Math.round(100 * done / total);
  $("#bar").style.width = pct + "%";
  $("#progress").setAttribute("aria-valuenow", String(pct));
  $("#progress-text").textContent = `${done} of ${total} steps done`;
}

// ------------------------------------------------------------------ start, consent, resume

async function start() {
  const token = localStorage.getItem(KEY);
  if (token) {
    S = {token};
    const r = await api("GET", "/api/session");
    if (r.status === 200) { S = r.data; document.title = $("#title").textContent = S.title; return next(); }
    localStorage.removeItem(KEY); S = null;
  }
  const info = (await api("GET", "/api/info")).data;
  document.title = $("#title").textContent = info.title;
  const agree = h("button", {class: "primary", id: "consent-yes", on: {click: () => consent(agree)}}, "I agree, start");
  render(h("section", {class: "card"},
    h("h2", {tabindex: "-1"}, "Before you start"),
    h("p", {}, info.consent),
    h("p", {class: "muted"}, "Please use headphones in a quiet place. The test takes about 10–20 minutes; you can close the page and come back later."),
    h("div", {class: "nav"}, agree)));
}

async function consent(btn) {
  btn.disabled = true;
  const params = new URLSearchParams(location.search);
  const ext = params.get("PROLIFIC_PID") || params.get("workerId") || params.get("participant") || params.get("pid");
  // consent comes first: the server makes a session (and its plan) only for a participant who agreed
  const r = await api("POST", "/api/session", ext ? {consent: true, external_id: ext} : {consent: true});
  if (r.status !== 200) { status(r.data.detail || "Could not start the session."); btn.disabled = false; return; }
  S = r.data;
  localStorage.setItem(KEY, S.token);
  next();
}

function render(node) {
  for (const a of document.querySelectorAll("audio")) { a.pause(); a.remove(); }
  main.replaceChildren(node);
  const heading = $("h2", main);
  (heading || main).focus();
}

function next() {
  progress();
  if (!S.consented) {  // a session from before consent came first: consent, then read the plan
    api("POST", "/api/consent").then(() => api("GET", "/api/session")).then(r => { S = r.data; next(); });
    return;
  }
  const step = S.steps.find(s => !S.answered.includes(s.slot));
  if (!step) return finish();
  showStep(step);
}

// ------------------------------------------------------------------ audio players

function player(sid, label, {loop = false} = {}) {
  const audio = h("audio", {preload: "auto", src: `/audio/${sid}`});
  if (loop) audio.loop = true;
  const p = {sid, audio, plays: 0, listened: 0, last: null};
  const info = h("span", {class: "playinfo"}, "not played yet");
  const btn = h("button", {type: "button", class: "play", "data-sid": sid, "aria-label": `Play ${label}`,
                           on: {click: () => toggle(p)}}, "▶ Play");
  const box = h("div", {class: "player", "data-sid": sid}, h("span", {class: "label"}, label), btn, info, audio);
  p.box = box; p.btn = btn;
  audio.addEventListener("play", () => {
    p.plays += 1; p.last = audio.currentTime; box.classList.add("playing"); btn.textContent = "■ Stop";
    btn.setAttribute("aria-label", `Stop ${label}`); update();
  });
  const stopped = () => { box.classList.remove("playing"); btn.textContent = "▶ Play"; btn.setAttribute("aria-label", `Play ${label}`); p.last = null; };
  audio.addEventListener("pause", stopped);
  audio.addEventListener("ended", stopped);
  audio.addEventListener("timeupdate", () => {
    if (p.last !== null && !audio.paused) {
      const d = audio.currentTime - p.last;
      if (d > 0 && d < 1.5) p.listened += d;  // seeks and loops do not count as listening
      p.last = audio.currentTime;
    }
    box.dataset.listened = p.listened.toFixed(2);
    info.textContent = `played ${p.plays}×, ${p.listened.toFixed(1)} s heard`;
  });
  audio.addEventListener("error", () => status("This sound could not be loaded; please reload the page."));
  return p;
}

function toggle(p) {
  for (const q of current.players) if (q !== p) q.audio.pause();
  if (p.audio.paused) {
    if (p.audio.ended) p.audio.currentTime = 0;
    p.audio.play().catch(() => status("Your browser blocked playback; press Play again."));
  } else p.audio.pause();
}

// ------------------------------------------------------------------ steps

const LETTERS = "ABCDEFGHIJ";

function choiceGroup(name, legend, options, onChange) {
  return h("fieldset", {},
    h("legend", {}, legend),
    h("div", {class: "choices", role: "radiogroup"},
      options.map(([value, text]) => h("label", {},
        h("input", {type: "radio", name, value, on: {change: () => onChange(value)}}), text))));
}

function showStep(step) {
  const players = [];
  const answer = {};
  current = {step, players, answer, t0: performance.now()};
  const body = [];
  const nScreen = S.steps.filter(s => s.kind === "screening");
  const kindText = {
    screening: `Headphone check ${nScreen.indexOf(step) + 1} of ${nScreen.length}`,
    calibration: "Volume", practice: "Practice (not scored)", trial: "Question", catch: "Question",
  };
  const trialNo = S.steps.filter(s => s.kind === "trial" || s.kind === "catch").indexOf(step) + 1;
  const nTrials = S.steps.filter(s => s.kind === "trial" || s.kind === "catch").length;
  const title = (step.kind === "trial" || step.kind === "catch") ? `Question ${trialNo} of ${nTrials}` : kindText[step.kind];

  if (step.design === "screening") {
    players.push(player(step.stimuli[0], "Tones"));
    body.push(h("p", {}, "You will hear three tones. Which one is the quietest?"));
    body.push(h("div", {class: "players"}, players[0].box));
    body.push(choiceGroup("choice", "The quietest tone was", [[1, "First"], [2, "Second"], [3, "Third"]],
                          v => { answer.choice = Number(v); update(); }));
  } else if (step.design === "calibration") {
    players.push(player(step.stimuli[0], "Noise", {loop: true}));
    body.push(h("p", {}, "Play the noise and set your device's volume to a comfortable level. Please do not change the volume after this step."));
    body.push(h("div", {class: "players"}, players[0].box));
    body.push(h("label", {class: "choices"}, h("input", {type: "checkbox", id: "calibrated",
      on: {change: e => { answer.confirmed = e.target.checked || undefined; update(); }}}), "The volume is comfortable"));
  } else if (step.design === "count") {
    players.push(player(step.stimuli[0], "Sound"));
    body.push(h("p", {}, "Listen carefully: how many beeps do you hear?"));
    body.push(h("div", {class: "players"}, players[0].box));
    body.push(choiceGroup("count", "Number of beeps", [1, 2, 3, 4, 5, 6].map(n => [n, String(n)]),
                          v => { answer.count = Number(v); update(); }));
  } else if (step.design === "2afc") {
    step.stimuli.forEach((sid, i) => players.push(player(sid, `Clip ${LETTERS[i]}`)));
    body.push(h("p", {}, "One of these two clips was made by a human, the other was generated by AI. Which one is AI-generated?"));
    body.push(h("div", {class: "players"}, players.map(p => p.box)));
    body.push(choiceGroup("choice", "AI-generated is", [["A", "Clip A"], ["B", "Clip B"]], v => { answer.choice = v; update(); }));
  } else if (step.design === "single") {
    players.push(player(step.stimuli[0], "Clip"));
    body.push(h("p", {}, "Was this music made by a human or generated by AI?"));
    body.push(h("div", {class: "players"}, players[0].box));
    body.push(choiceGroup("origin", "Made by", [["human", "A human"], ["ai", "AI"]], v => { answer.origin = v; update(); }));
    body.push(choiceGroup("confidence", "How sure are you? (1 = guessing, 5 = certain)",
                          [1, 2, 3, 4, 5].map(n => [n, String(n)]), v => { answer.confidence = Number(v); update(); }));
  } else if (step.design === "mos") {
    players.push(player(step.stimuli[0], "Clip"));
    body.push(h("p", {}, "How good is the overall quality of this music?"));
    body.push(h("div", {class: "players"}, players[0].box));
    body.push(choiceGroup("rating", "Quality", [[1, "1 Bad"], [2, "2 Poor"], [3, "3 Fair"], [4, "4 Good"], [5, "5 Excellent"]],
                          v => { answer.rating = Number(v); update(); }));
  } else if (step.design === "mushra") {
    const ref = player(step.reference, "Reference");
    players.push(ref);
    body.push(h("p", {}, "Rate how close each clip is to the reference (0 = bad, 100 = excellent). One of the clips is the reference itself."));
    body.push(h("div", {class: "players"}, ref.box));
    answer.ratings = {};
    step.stimuli.forEach((sid, i) => {
      const p = player(sid, `Clip ${LETTERS[i]}`);
      players.push(p);
      const out = h("output", {}, "–");
      const slider = h("input", {type: "range", min: 0, max: 100, step: 1, value: 50, "aria-label": `Rating of clip ${LETTERS[i]}`,
        "data-sid": sid, on: {input: e => { answer.ratings[sid] = Number(e.target.value); out.textContent = e.target.value; update(); }}});
      body.push(h("div", {class: "mushra-row"}, h("div", {class: "cond"}, p.box), slider, out));
    });
    body.push(h("div", {class: "scale", "aria-hidden": "true"}, h("span", {}, "Bad"), h("span", {}, "Poor"), h("span", {}, "Fair"),
      h("span", {}, "Good"), h("span", {}, "Excellent")));
  }
  if (step.kind === "trial" && S.questions.length) {
    answer.questions = {};
    for (const q of S.questions) {
      if (q.type === "choice") body.push(choiceGroup("q-" + q.id, q.text, q.options.map(o => [o, o]), v => { answer.questions[q.id] = v; update(); }));
      else body.push(h("label", {}, q.text, h("textarea", {maxlength: 1000, on: {input: e => { answer.questions[q.id] = e.target.value; update(); }}})));
    }
  }
  const nextBtn = h("button", {class: "primary", id: "next", disabled: true, on: {click: () => submit(nextBtn)}}, "Next");
  current.nextBtn = nextBtn;
  current.hint = h("p", {class: "muted", id: "hint"});
  render(h("section", {class: "card", "data-slot": step.slot, "data-kind": step.kind, "data-design": step.design},
    h("h2", {tabindex: "-1"}, title),
    S.instructions && step.kind === "trial" ? h("p", {class: "muted"}, S.instructions) : null,
    body, current.hint, h("div", {class: "nav"}, nextBtn)));
  update();
}

function complete(step, a) {
  switch (step.design) {
    case "screening": case "2afc": return a.choice !== undefined;
    case "calibration": return a.confirmed === true;
    case "count": return a.count !== undefined;
    case "single": return a.origin !== undefined && a.confidence !== undefined;
    case "mos": return a.rating !== undefined;
    case "mushra": return step.stimuli.every(s => a.ratings[s] !== undefined);
  }
  return false;
}

function update() {
  if (!current || !current.nextBtn) return;
  const {step, players, answer} = current;
  const need = step.design === "calibration" ? 1 : S.min_plays;
  const unplayed = players.filter(p => p.plays < need).length;
  const reqQ = step.kind === "trial" ? S.questions.filter(q => q.required && !(answer.questions || {})[q.id]) : [];
  const ok = unplayed === 0 && complete(step, answer) && reqQ.length === 0;
  current.nextBtn.disabled = !ok;
  current.hint.textContent = unplayed ? `Play every sound before answering (${unplayed} not played yet).`
    : (!ok ? "Answer the question to continue." : "");
}

async function submit(btn) {
  const {step, players, answer} = current;
  btn.disabled = true;
  for (const p of players) p.audio.pause();
  // the same id across retries and reloads: the server stores an answer once
  const idKey = `${KEY}:answer:${S.token}:${step.slot}`;
  const answerId = sessionStorage.getItem(idKey) || newId();
  sessionStorage.setItem(idKey, answerId);
  const response = {...answer};
  if (response.questions) for (const k of Object.keys(response.questions)) if (response.questions[k] === "") delete response.questions[k];
  if (step.kind !== "trial") delete response.questions;
  const plays = {}, listened = {};
  for (const p of players) if (step.stimuli.includes(p.sid)) { plays[p.sid] = p.plays; listened[p.sid] = Math.round(p.listened * 1000) / 1000; }
  try {
    const r = await api("POST", "/api/answer", {answer_id: answerId, slot: step.slot, response, plays, listened,
                                                client_ms: Math.round(performance.now() - current.t0)});
    if (r.status !== 200 && r.status !== 409) { status(r.data.detail ? JSON.stringify(r.data.detail) : "Answer refused."); btn.disabled = false; return; }
  } catch (e) { status(e.message); btn.disabled = false; return; }
  S.answered.push(step.slot);
  next();
}

async function finish() {
  const r = await api("POST", "/api/complete");
  if (r.status !== 200) { status(r.data.detail || "Could not complete."); return; }
  const {completion_code: code, redirect_url: url} = r.data;
  render(h("section", {class: "card", id: "done"},
    h("h2", {tabindex: "-1"}, "Thank you!"),
    h("p", {}, "You have finished the listening test. Your completion code is:"),
    h("p", {}, h("span", {class: "code", id: "completion-code"}, code)),
    url ? h("p", {}, h("a", {class: "button primary", href: url, id: "return-link"}, "Return to the study platform")) : null,
    h("p", {class: "muted"}, "You can close this page now.")));
  $("#progress-text").textContent = "Finished";
}

document.addEventListener("keydown", e => {
  // a/b/c…: play clip A/B/C…; r: play the reference. Not while typing in a text field.
  if (!current || e.target.matches("textarea, input[type=text]") || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key.toLowerCase();
  const labels = current.step.design === "mushra" ? ["r", ...LETTERS.toLowerCase()] : LETTERS.toLowerCase().split("");
  const i = labels.indexOf(k);
  if (i >= 0 && i < current.players.length) { toggle(current.players[i]); e.preventDefault(); }
});

start().catch(e => status(e.message));
