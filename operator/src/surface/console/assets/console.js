// The Cairn console's only script: live updates (EventSource), the question form (read back
// from the generated controls, checked, POSTed as JSON), the steering buttons, logs on demand.
// Pages work without it except for these. No framework, no build step.
'use strict';

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

function say(text, ok) {
  const out = $('#result');
  if (!out) return;
  out.textContent = text;
  out.dataset.state = ok ? 'ok' : 'error';
}

async function post(url, body) {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body === undefined ? null : body),
  });
  let data = {};
  try { data = await r.json(); } catch { /* not JSON */ }
  return { ok: r.ok, text: data.message || data.error || `${r.status} ${r.statusText}` };
}

// ---- JSON pointers ---------------------------------------------------------------------------
const parts = (ptr) => ptr === '' ? [] : ptr.slice(1).split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
function getAt(root, ptr) {
  return parts(ptr).reduce((v, k) => (v == null ? undefined : v[k]), root);
}
function setAt(root, ptr, value) {
  const ks = parts(ptr);
  if (ks.length === 0) return value;
  root = root ?? {};
  let o = root;
  ks.slice(0, -1).forEach((k) => { o = (o[k] ??= {}); });
  o[ks[ks.length - 1]] = value;
  return root;
}

// ---- the question form -----------------------------------------------------------------------
const filled = (el) => el.type === 'radio' || el.type === 'checkbox' ? el.checked : el.value.trim() !== '';

// A JSON Schema pattern as a RegExp: with Unicode if the browser takes it so, else without;
// one it cannot read at all is left to the server's check.
function regexp(pattern) {
  for (const flags of ['u', '']) {
    try { return new RegExp(pattern, flags); } catch { /* the next */ }
  }
  return null;
}

// What HTML5 constraints cannot say: JSON Schema patterns (unanchored), JSON parts, the
// required fields of an optional object once any of it is filled.
function check(form) {
  for (const el of $$('input, select, textarea', form)) {
    el.setCustomValidity('');
    const pattern = el.dataset.pattern && el.value !== '' && regexp(el.dataset.pattern);
    if (pattern && !pattern.test(el.value)) {
      el.setCustomValidity(`must match the pattern ${el.dataset.pattern}`);
    }
    if (el.dataset.kind === 'json' && el.value.trim() !== '') {
      try { JSON.parse(el.value); } catch (e) { el.setCustomValidity(`not JSON: ${e.message}`); }
    }
    if (el.dataset.needed && !filled(el)) {
      const group = el.closest('fieldset[data-kind=object]');
      if (group && $$('input, select, textarea', group).some(filled)) el.setCustomValidity('required here');
    }
  }
  return form.reportValidity();
}

function collect(form) {
  let root;
  const put = (path, v) => { root = setAt(root, path, v); };
  for (const el of $$('[data-kind]', form)) {
    const path = el.dataset.path;
    switch (el.dataset.kind) {
      case 'object': if (el.dataset.required === 'true' && getAt(root, path) === undefined) put(path, {}); break;
      case 'array': if (el.dataset.required === 'true' && getAt(root, path) === undefined) put(path, []); break;
      case 'string': if (el.value !== '') put(path, el.value); break;
      case 'integer': case 'number': if (el.value !== '') put(path, el.valueAsNumber); break;
      case 'literal': if ((el.type !== 'radio' || el.checked) && el.value !== '') put(path, JSON.parse(el.value)); break;
      case 'set': if (el.checked) put(path, [...(getAt(root, path) ?? []), JSON.parse(el.value)]); break;
      case 'lines': {
        const lines = el.value.split('\n').map((l) => l.trim()).filter(Boolean);
        if (lines.length || el.required) put(path, lines);
        break;
      }
      case 'json': if (el.value.trim() !== '') put(path, JSON.parse(el.value)); break;
    }
  }
  return root;
}

document.addEventListener('submit', async (e) => {
  const form = e.target.closest('form#question');
  if (!form) return;
  e.preventDefault();
  if (!check(form)) return;
  const payload = collect(form);
  $('#result').dataset.sent = JSON.stringify(payload ?? null);
  const r = await post(form.dataset.action, payload);
  say(r.text, r.ok);
});
// A problem shown goes when the field is edited.
document.addEventListener('input', (e) => e.target.setCustomValidity && e.target.setCustomValidity(''));

// ---- steering and logs -----------------------------------------------------------------------
document.addEventListener('click', async (e) => {
  const b = e.target.closest('button.steer');
  if (!b || !confirm(b.dataset.confirm)) return;
  const r = await post(b.dataset.action, b.dataset.body ? JSON.parse(b.dataset.body) : undefined);
  say(r.text, r.ok);
});
document.addEventListener('submit', async (e) => {
  const form = e.target.closest('form#budget');
  if (!form) return;
  e.preventDefault();
  const r = await post(form.dataset.action, { usd: $('#budget-usd', form).value });
  say(r.text, r.ok);
});
// Logs load when their <details> opens (toggle does not bubble: listen while capturing).
document.addEventListener('toggle', async (e) => {
  const d = e.target;
  if (!d.matches || !d.matches('details.logs') || !d.open) return;
  const r = await fetch(d.dataset.src);
  $('pre', d).textContent = await r.text();
}, true);

// ---- live updates ----------------------------------------------------------------------------
// A part is replaced only when its version changed: the question form only when the question
// did (what is typed in it stays), and an open log is opened (and fetched) again.
function replace(part, html, version) {
  if (part.dataset.version === version) return;
  const open = $$('details[open]', part).map((d) => d.dataset.src);
  part.innerHTML = html;
  part.dataset.version = version;
  for (const d of $$('details.logs', part)) if (open.includes(d.dataset.src)) d.open = true;
}

// One EventSource per page, closed while the tab is hidden: browsers allow 6 HTTP/1.1
// connections per origin, and every open console tab would hold one. A reopened stream says
// what the page shows now (`since`), so that it is sent what changed meanwhile.
function live(el) {
  let es;
  const url = new URL(el.dataset.live, location.href);
  const open = () => {
    es = new EventSource(url);
    es.onopen = () => document.body.classList.remove('offline');
    es.onerror = () => document.body.classList.add('offline');
    const seen = (m) => url.searchParams.set('since', m.lastEventId);
    es.addEventListener('runs', (m) => { el.innerHTML = m.data; seen(m); });
    es.addEventListener('run', (m) => {
      const p = JSON.parse(m.data);
      const phase = $('#phase');
      phase.textContent = phase.dataset.phase = p.phase;
      for (const [k, html] of Object.entries(p.parts)) replace($(`#${k}`), html, p.versions[k]);
      seen(m);
    });
  };
  open();
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) es.close(); else open();
  });
}
$$('[data-live]').forEach(live);
