// firmcast operator console. Plain JavaScript, no dependencies: the DOM is
// built with textContent only, and every call goes to /api/v1 with the
// session cookie (and the CSRF token on changes). See console/doc.go.
'use strict';

const $ = (id) => document.getElementById(id);
const loginToken = document.querySelector('meta[name="firmcast-login-token"]').content;
const deviceStates = ['queued', 'pending', 'downloading', 'staged', 'confirmed', 'failed', 'rolled-back', 'deferred', 'skipped', 'timed-out'];
const countStates = ['queued', 'pending', 'downloading', 'staged', 'confirmed', 'failed', 'rolled-back', 'deferred', 'skipped'];
const pageSize = 100;

let session = null; // GET /api/v1/session: name, scopes, csrf, can
let source = null; // the EventSource of the current view
let viewSeq = 0; // bumped on every navigation; stale async work checks it

// el builds an element: attrs are properties (class, text, href, ...) and
// kids are nodes or strings (as text).
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k === 'for') e.htmlFor = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k.startsWith('aria') || k.startsWith('data') || k === 'role') e.setAttribute(k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()), v);
    else e[k] = v;
  }
  for (const k of kids.flat()) {
    if (k === undefined || k === null || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

class APIError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

// clean turns a server error into a sentence for people.
function clean(msg) {
  return String(msg || '').replace(/^publisher: /, '').replace(/^(unauthorized|forbidden|not found|invalid request|wrong state): /, '');
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') opts.headers['X-CSRF-Token'] = session ? session.csrf : '';
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  let data = null;
  if (res.status !== 204) {
    try { data = await res.json(); } catch (e) { data = null; }
  }
  if (res.status === 401 && path !== '/api/v1/session') {
    signedOut(clean(data && data.error));
  }
  if (!res.ok) throw new APIError(res.status, clean(data && data.error) || res.statusText);
  return data;
}

function status(msg) { $('status').textContent = msg; }

function closeSource() {
  if (source) { source.close(); source = null; }
  $('status').classList.remove('live');
}

// live follows the event stream (optionally of one campaign) and calls
// onBatch with each snapshot or update.
function live(campaign, onBatch) {
  closeSource();
  const url = '/api/v1/events' + (campaign ? '?campaign=' + encodeURIComponent(campaign) : '');
  const es = new EventSource(url);
  source = es;
  const handle = (kind) => (ev) => {
    if (source !== es) return;
    let b;
    try { b = JSON.parse(ev.data); } catch (e) { return; }
    onBatch(kind, b);
  };
  es.addEventListener('snapshot', handle('snapshot'));
  es.addEventListener('update', handle('update'));
  es.addEventListener('end', (ev) => {
    es.close();
    let msg = 'the event stream ended';
    try { msg = clean(JSON.parse(ev.data).error); } catch (e) { /* keep */ }
    signedOut(msg);
  });
  es.onopen = () => { status('live'); $('status').classList.add('live'); };
  es.onerror = () => {
    $('status').classList.remove('live');
    status('reconnecting…');
    // A refused stream (signed out, revoked) is closed for good by the
    // browser: find out why.
    if (es.readyState === EventSource.CLOSED) checkSession();
  };
}

async function checkSession() {
  try {
    session = await api('GET', '/api/v1/session');
    return true;
  } catch (e) {
    signedOut(e.status === 401 ? '' : e.message);
    return false;
  }
}

function signedOut(msg) {
  closeSource();
  session = null;
  viewSeq++;
  $('nav').hidden = true;
  $('who').hidden = true;
  $('view').replaceChildren();
  $('signin').hidden = false;
  $('signin-error').textContent = msg ? 'Signed out: ' + msg : '';
  $('key').focus();
}

function showApp() {
  $('signin').hidden = true;
  $('signin-error').textContent = '';
  $('nav').hidden = false;
  $('who').hidden = false;
  $('who-name').textContent = 'Signed in as ' + session.name + ' (' + session.scopes.join(', ') + ')';
}

$('signin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const key = $('key').value.trim();
  $('key').value = '';
  let res, data = {};
  try {
    res = await fetch('/api/v1/session', {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': loginToken },
      body: JSON.stringify({ key }),
    });
    data = await res.json().catch(() => ({}));
  } catch (err) {
    $('signin-error').textContent = 'Sign-in failed: the server cannot be reached.';
    return;
  }
  if (!res.ok) {
    let msg = 'Sign-in refused: ' + clean(data.error) + '.';
    if (res.status === 401) msg = 'Sign-in refused: ' + clean(data.error) + '. Check the API key.';
    if (res.status === 403) msg = 'Sign-in refused: ' + clean(data.error) + '. Reload the page and try again.';
    $('signin-error').textContent = msg;
    $('key').focus();
    return;
  }
  session = data;
  showApp();
  if (!location.hash || location.hash === '#') location.hash = '#/campaigns';
  else route();
});

$('signout').addEventListener('click', async () => {
  try { await api('DELETE', '/api/v1/session'); } catch (e) { /* gone already */ }
  location.hash = '';
  location.reload(); // a fresh page brings a fresh sign-in token
});

// confirmAction asks in a modal dialog; resolves true on Confirm.
function confirmAction(text) {
  const d = $('confirm');
  $('confirm-text').textContent = text;
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
    d.returnValue = '';
    d.showModal();
    $('confirm-cancel').focus();
  });
}

function stateBadge(s) { return el('span', { class: 'state state-' + s, text: s }); }
function when(t) { return t && !t.startsWith('0001') ? new Date(t).toLocaleString() : ''; }
function short(d) { return d ? d.slice(0, 12) : ''; }
function link(href, text) { return el('a', { href, text }); }
function sum(o, keys) { return keys.reduce((n, k) => n + (o[k] || 0), 0); }

function table(head, rows, attrs) {
  return el('table', attrs || {},
    el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col', text: h, class: /^(Count|Devices|Size|Version)$/.test(h) ? 'num' : '' })))),
    el('tbody', {}, rows));
}

function setView(title, ...kids) {
  document.title = title + ' · firmcast console';
  $('view').replaceChildren(el('h2', { text: title }), ...kids);
  for (const a of document.querySelectorAll('nav a')) {
    if (location.hash.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function failure(err) {
  setView('Error', el('p', { class: 'error', role: 'alert', text: err.message }));
}

// ---- Campaigns

function campaignRow(s) {
  const confirmed = s.counts.confirmed || 0;
  const failed = sum(s.counts, ['failed', 'rolled-back']);
  return el('tr', { id: 'camp-' + s.id },
    el('td', {}, link('#/campaign/' + s.id, s.name || s.id)),
    el('td', {}, stateBadge(s.state)),
    el('td', {}, el('progress', { max: Math.max(s.targets, 1), value: confirmed, ariaLabel: 'confirmed ' + confirmed + ' of ' + s.targets }), ' ', confirmed + ' / ' + s.targets),
    el('td', { class: 'num', text: failed }),
    el('td', { text: when(s.created) }));
}

async function viewCampaigns(seq) {
  const list = await api('GET', '/api/v1/campaigns');
  if (seq !== viewSeq) return;
  const body = el('tbody', {}, list.map(campaignRow));
  const tbl = el('table', { id: 'campaigns' },
    el('thead', {}, el('tr', {}, ['Campaign', 'State', 'Confirmed', 'Failed', 'Created'].map((h) => el('th', { scope: 'col', text: h })))),
    body);
  const kids = [];
  if (session.can.campaign) kids.push(await createForm(seq));
  kids.push(list.length ? tbl : el('p', { class: 'muted', text: 'No campaigns yet.' }));
  setView('Campaigns', ...kids);
  live('', (kind, b) => {
    for (const s of b.campaigns || []) {
      const row = $('camp-' + s.id);
      if (row) row.replaceWith(campaignRow(s));
      else body.prepend(campaignRow(s));
    }
  });
}

async function createForm(seq) {
  const imgs = await api('GET', '/api/v1/images');
  if (seq !== viewSeq) return el('div');
  const field = (id, label, input) => el('div', {}, el('label', { for: id, text: label }), input);
  const err = el('p', { class: 'error', role: 'alert' });
  const form = el('form', { id: 'create-form' },
    field('c-image', 'Image', el('select', { id: 'c-image', required: true },
      imgs.map((i) => el('option', { value: i.digest, text: (i.name || short(i.digest)) + (i.version ? ' ' + i.version : '') })))),
    field('c-name', 'Name', el('input', { id: 'c-name', maxLength: 128 })),
    el('fieldset', {}, el('legend', { text: 'Targets (any of)' }),
      field('c-devices', 'Devices (comma separated)', el('input', { id: 'c-devices', size: 40 })),
      field('c-groups', 'Groups', el('input', { id: 'c-groups' })),
      field('c-class', 'Class', el('input', { id: 'c-class' })),
      field('c-version', 'On version', el('input', { id: 'c-version', type: 'number', min: 0 }))),
    field('c-phases', 'Phases (cumulative %)', el('input', { id: 'c-phases', value: '100', pattern: '[0-9, ]+' })),
    field('c-success', 'Success threshold %', el('input', { id: 'c-success', type: 'number', min: 0, max: 100, step: '0.1' })),
    field('c-fail', 'Failure threshold %', el('input', { id: 'c-fail', type: 'number', min: 0, max: 100, step: '0.1' })),
    el('div', {}, el('input', { id: 'c-start', type: 'checkbox', checked: true }), el('label', { for: 'c-start', text: 'Start at once' })),
    el('button', { type: 'submit', class: 'primary', id: 'c-submit', text: 'Create campaign' }),
    err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const list = (id) => $(id).value.split(',').map((s) => s.trim()).filter(Boolean);
    const req = { image: $('c-image').value, name: $('c-name').value.trim() || undefined, start: $('c-start').checked };
    if (list('c-devices').length) req.devices = list('c-devices');
    if (list('c-groups').length) req.groups = list('c-groups');
    if ($('c-class').value.trim()) req.class = $('c-class').value.trim();
    if ($('c-version').value !== '') req.on_version = Number($('c-version').value);
    req.phases = list('c-phases').map(Number);
    if ($('c-success').value) req.success_permille = Math.round(Number($('c-success').value) * 10);
    if ($('c-fail').value) req.fail_permille = Math.round(Number($('c-fail').value) * 10);
    try {
      const s = await api('POST', '/api/v1/campaigns', req);
      location.hash = '#/campaign/' + s.id;
    } catch (ex) {
      err.textContent = 'Not created: ' + ex.message;
    }
  });
  return el('details', { id: 'create' }, el('summary', { text: 'New campaign' }), form);
}

// ---- One campaign, live

async function viewCampaign(seq, id) {
  let st = await api('GET', '/api/v1/campaigns/' + encodeURIComponent(id));
  if (seq !== viewSeq) return;
  const filter = { state: '', phase: '', reason: '', after: '', pages: [] };
  const rows = new Map(); // device -> tr
  const head = el('p', {});
  const actions = el('div', { class: 'actions', role: 'group', ariaLabel: 'Campaign actions' });
  const phases = el('div', { id: 'phases', class: 'bars' });
  const counts = el('tbody', {});
  const failures = el('div', { id: 'failures', class: 'bars' });
  const devBody = el('tbody', {});
  const devTotal = el('p', { id: 'dev-total', class: 'muted' });
  const prev = el('button', { type: 'button', text: 'Previous page', id: 'dev-prev' });
  const next = el('button', { type: 'button', text: 'Next page', id: 'dev-next' });

  const stateSel = el('select', { id: 'f-state' }, el('option', { value: '', text: 'any' }), deviceStates.map((s) => el('option', { value: s, text: s })));
  const phaseSel = el('select', { id: 'f-phase' }, el('option', { value: '', text: 'any' }), st.phases.map((p, i) => el('option', { value: String(i), text: String(i + 1) })));
  const reasonIn = el('input', { id: 'f-reason', size: 16, placeholder: 'failure code' });
  const filters = el('form', { class: 'filters', id: 'dev-filters', role: 'search' },
    el('label', { for: 'f-state', text: 'State' }), stateSel,
    el('label', { for: 'f-phase', text: 'Phase' }), phaseSel,
    el('label', { for: 'f-reason', text: 'Reason' }), reasonIn,
    el('button', { type: 'submit', text: 'Filter' }));

  function drawHead() {
    head.replaceChildren('State ', stateBadge(st.state), st.reason ? ' — ' + st.reason : '', ' · image ', el('code', { text: short(st.image) }),
      ' · ' + st.targets + ' targets, ' + st.opened + ' in open phases');
    head.id = 'camp-state';
    head.dataset.state = st.state;
  }
  let actionsFor = null; // the state the buttons were drawn for
  function drawActions() {
    // Redrawn only when the state changes, so that a button keeps its
    // place (and focus) while live updates arrive.
    if (actionsFor === st.state) return;
    actionsFor = st.state;
    actions.replaceChildren();
    if (!session.can.campaign) return;
    const act = (name, label, cls, confirmText) => el('button', {
      type: 'button', id: 'action-' + name, class: cls, text: label,
      onclick: async () => {
        if (confirmText && !(await confirmAction(confirmText))) return;
        try {
          st = await api('POST', '/api/v1/campaigns/' + encodeURIComponent(id) + '/' + name);
          draw();
          status(label + ': done');
        } catch (e) { status(label + ' refused: ' + e.message); }
      },
    });
    if (st.state === 'created') actions.append(act('start', 'Start', 'primary'));
    if (st.state === 'running') actions.append(act('pause', 'Pause'));
    if (st.state === 'paused') actions.append(act('resume', 'Resume', 'primary'));
    if (['created', 'running', 'paused'].includes(st.state)) {
      actions.append(act('abort', 'Abort', 'danger', 'Abort campaign ' + (st.name || st.id) + '? Devices that have not installed it stop; this cannot be undone.'));
    }
  }
  function drawPhases() {
    const confirmed = st.counts.confirmed || 0;
    let prevEnd = 0;
    phases.replaceChildren();
    st.phases.forEach((pct, i) => {
      const end = i === st.phases.length - 1 ? st.targets : Math.ceil(st.targets * pct / 100);
      const size = Math.max(end - prevEnd, 0);
      const done = Math.min(Math.max(confirmed - prevEnd, 0), size);
      const open = i <= st.phase;
      phases.append(
        el('span', { text: 'Phase ' + (i + 1) + ' (' + pct + '%)' + (open ? '' : ', waiting') }),
        el('progress', { max: Math.max(size, 1), value: done, ariaLabel: 'phase ' + (i + 1) + ': ' + done + ' of ' + size + ' confirmed' }),
        el('span', { class: 'num', text: done + ' / ' + size }));
      prevEnd = end;
    });
  }
  function drawCounts() {
    counts.replaceChildren(...countStates.map((s) => el('tr', {},
      el('th', { scope: 'row' }, stateBadge(s)),
      el('td', {}, el('progress', { max: Math.max(st.targets, 1), value: st.counts[s] || 0, ariaLabel: s })),
      el('td', { class: 'num', id: 'count-' + s, text: st.counts[s] || 0 }))));
  }
  function draw() { drawHead(); drawActions(); drawPhases(); drawCounts(); }

  let failTimer = null;
  let lastFailed = -1;
  async function loadFailures() {
    const groups = await api('GET', '/api/v1/campaigns/' + encodeURIComponent(id) + '/failures');
    if (seq !== viewSeq) return;
    const most = Math.max(1, ...groups.map((g) => g.count));
    failures.replaceChildren();
    if (!groups.length) failures.append(el('span', { class: 'muted', text: 'No failures.' }));
    for (const g of groups) {
      const bar = el('div', { class: 'bar', role: 'img', ariaLabel: g.reason + ': ' + g.count });
      bar.style.width = (100 * g.count / most) + '%'; // CSSOM: allowed by the CSP
      failures.append(el('a', { href: '#', text: g.reason, title: g.text || '', onclick: (e) => { e.preventDefault(); reasonIn.value = g.reason; stateSel.value = ''; applyFilter(); } }),
        bar, el('span', { class: 'num', text: String(g.count) }));
    }
  }
  function failuresSoon() {
    const failed = sum(st.counts, ['failed', 'rolled-back']);
    if (failed === lastFailed || failTimer) return;
    lastFailed = failed;
    failTimer = setTimeout(() => { failTimer = null; loadFailures().catch(() => {}); }, 1000);
  }

  function devRow(d) {
    const pct = d.bytes_total ? Math.floor(100 * d.bytes_done / d.bytes_total) + '%' : '';
    return el('tr', { dataDevice: d.device },
      el('td', {}, link('#/device/' + encodeURIComponent(d.device), d.device)),
      el('td', { class: 'num', text: d.phase + 1 }),
      el('td', {}, stateBadge(d.state)),
      el('td', { class: 'num', text: pct }),
      el('td', { text: d.code ? d.code + (d.text ? ': ' + d.text : '') : '' }),
      el('td', { text: when(d.updated) }));
  }
  async function loadDevices() {
    const q = new URLSearchParams({ limit: String(pageSize) });
    for (const k of ['state', 'phase', 'reason', 'after']) if (filter[k] !== '') q.set(k, filter[k]);
    const pg = await api('GET', '/api/v1/campaigns/' + encodeURIComponent(id) + '/devices?' + q);
    if (seq !== viewSeq) return;
    rows.clear();
    devBody.replaceChildren(...pg.devices.map((d) => {
      const r = devRow(d);
      rows.set(d.device, r);
      return r;
    }));
    devTotal.textContent = pg.total + ' devices match' + (pg.total > pageSize ? ', page ' + (filter.pages.length + 1) : '');
    next.disabled = !pg.next;
    prev.disabled = filter.pages.length === 0;
    next.onclick = () => { filter.pages.push(filter.after); filter.after = pg.next; loadDevices(); };
  }
  let devTimer = null;
  function devicesSoon() {
    if (devTimer) return;
    devTimer = setTimeout(() => { devTimer = null; loadDevices().catch(() => {}); }, 500);
  }
  prev.onclick = () => { filter.after = filter.pages.pop() || ''; loadDevices(); };
  function applyFilter() {
    filter.state = stateSel.value;
    filter.phase = phaseSel.value;
    filter.reason = reasonIn.value.trim();
    filter.after = '';
    filter.pages = [];
    loadDevices().catch((e) => status(e.message));
  }
  filters.addEventListener('submit', (e) => { e.preventDefault(); applyFilter(); });
  const matches = (d) => (!filter.state || d.state === filter.state) && (filter.phase === '' || String(d.phase) === filter.phase) && !filter.reason;

  draw();
  setView('Campaign ' + (st.name || st.id), head, actions,
    el('h3', { text: 'Phases' }), phases,
    el('h3', { text: 'Devices by state' }), el('table', { id: 'counts' }, counts),
    el('h3', { text: 'Failures by reason' }), failures,
    el('h3', { text: 'Devices' }), filters, devTotal,
    el('table', { id: 'devices' },
      el('thead', {}, el('tr', {}, ['Device', 'Phase', 'State', 'Download', 'Reason', 'Updated'].map((h) => el('th', { scope: 'col', text: h })))),
      devBody),
    el('div', { class: 'actions' }, prev, next));
  await Promise.all([loadDevices(), loadFailures()]);
  live(id, (kind, b) => {
    for (const s of b.campaigns || []) if (s.id === id) st = s;
    draw();
    failuresSoon();
    if (kind === 'snapshot') { loadDevices().catch(() => {}); return; }
    for (const d of b.devices || []) {
      const r = rows.get(d.device);
      if (!r) {
        // A device the page does not show yet: reload the page of the
        // table when it has room for it (throttled).
        if (rows.size < pageSize && matches(d)) devicesSoon();
        continue;
      }
      if (matches(d)) {
        const nr = devRow(d);
        r.replaceWith(nr);
        rows.set(d.device, nr);
      }
    }
  });
}

// ---- Device

async function viewDevice(seq, id) {
  const [d, hist] = await Promise.all([
    api('GET', '/api/v1/devices/' + encodeURIComponent(id)),
    api('GET', '/api/v1/devices/' + encodeURIComponent(id) + '/history?limit=200'),
  ]);
  if (seq !== viewSeq) return;
  const lr = d.last_report;
  const facts = el('table', { id: 'device-facts' }, el('tbody', {},
    [['Class', d.class], ['Groups', (d.groups || []).join(', ')], ['Tags', (d.tags || []).join(', ')],
      ['Active version', d.active_version], ['Image', d.image ? short(d.image) : 'unknown'],
      ['Last report', lr ? lr.state + (lr.code ? ' (' + lr.code + ')' : '') + ' at ' + when(lr.received) : 'none'],
      ['Registered', when(d.created)]].map(([k, v]) => el('tr', {}, el('th', { scope: 'row', text: k }), el('td', { text: String(v) })))));
  const camps = table(['Campaign', 'Phase', 'State', 'Version', 'Reason', 'Updated'], (d.campaigns || []).map((c) => el('tr', {},
    el('td', {}, link('#/campaign/' + c.campaign, c.campaign)), el('td', { class: 'num', text: c.phase + 1 }),
    el('td', {}, stateBadge(c.state)), el('td', { class: 'num', text: c.active_version || '' }),
    el('td', { text: c.code || '' }), el('td', { text: when(c.updated) }))));
  const history = table(['When', 'Campaign', 'State', 'Download', 'Version', 'Reason'], hist.slice().reverse().map((h) => el('tr', {},
    el('td', { text: when(h.updated) }), el('td', {}, link('#/campaign/' + h.campaign, short(h.campaign))),
    el('td', {}, stateBadge(h.state)), el('td', { class: 'num', text: h.bytes_total ? Math.floor(100 * h.bytes_done / h.bytes_total) + '%' : '' }),
    el('td', { class: 'num', text: h.active_version || '' }), el('td', { text: h.code ? h.code + (h.text ? ': ' + h.text : '') : '' }))), { id: 'history' });
  setView('Device ' + d.id, facts,
    el('h3', { text: 'Campaigns' }), (d.campaigns || []).length ? camps : el('p', { class: 'muted', text: 'In no campaign.' }),
    el('h3', { text: 'Report history' }), hist.length ? history : el('p', { class: 'muted', text: 'No reports kept.' }));
}

// ---- Fleet

async function viewFleet(seq) {
  const [f, devs] = await Promise.all([api('GET', '/api/v1/fleet'), api('GET', '/api/v1/devices')]);
  if (seq !== viewSeq) return;
  const kv = (title, o) => el('div', { class: 'card' }, el('h3', { text: title }),
    table([title.replace(/^By /, ''), 'Devices'], Object.entries(o).sort((a, b) => b[1] - a[1]).map(([k, v]) => el('tr', {}, el('td', { text: k }), el('td', { class: 'num', text: v })))));
  const shown = devs.slice(0, 500);
  setView('Fleet',
    el('div', { class: 'cards' },
      el('div', { class: 'card' }, el('div', { class: 'muted', text: 'Devices' }), el('div', { class: 'big', id: 'fleet-devices', text: f.devices })),
      el('div', { class: 'card' }, el('div', { class: 'muted', text: 'Seen within the hour' }), el('div', { class: 'big', text: f.last_seen['1h'] || 0 })),
      el('div', { class: 'card' }, el('div', { class: 'muted', text: 'Never seen' }), el('div', { class: 'big', text: f.last_seen.never || 0 }))),
    el('div', { class: 'cards' }, kv('By version', f.by_version), kv('By class', f.by_class), kv('By group', f.by_group), kv('Campaigns by state', f.campaigns)),
    el('h3', { text: 'Devices' + (devs.length > shown.length ? ' (first ' + shown.length + ' of ' + devs.length + ')' : '') }),
    table(['Device', 'Class', 'Groups', 'Version', 'Last report'], shown.map((d) => el('tr', {},
      el('td', {}, link('#/device/' + encodeURIComponent(d.id), d.id)), el('td', { text: d.class }),
      el('td', { text: (d.groups || []).join(', ') }), el('td', { class: 'num', text: d.active_version }),
      el('td', { text: d.last_report ? d.last_report.state + ' ' + when(d.last_report.received) : '' })))));
}

// ---- Images

async function viewImages(seq) {
  const imgs = await api('GET', '/api/v1/images');
  if (seq !== viewSeq) return;
  const inProgress = (i) => i.campaigns.some((c) => ['created', 'running', 'paused'].includes(c.state));
  setView('Images', imgs.length ? table(['Image', 'Version', 'Size', 'Digest', 'Uploaded', 'Campaigns', ''], imgs.map((i) => el('tr', {},
    el('td', { text: i.name || '' }), el('td', { class: 'num', text: i.version || '' }), el('td', { class: 'num', text: i.size }),
    el('td', {}, el('code', { text: short(i.digest), title: i.digest })), el('td', { text: when(i.uploaded) }),
    el('td', {}, i.campaigns.map((c) => el('span', {}, link('#/campaign/' + c.id, c.name || c.id), ' ', stateBadge(c.state), ' '))),
    el('td', {}, session.can.campaign && !inProgress(i) ? el('button', {
      type: 'button', class: 'danger', text: 'Delete', ariaLabel: 'Delete image ' + (i.name || i.digest),
      onclick: async () => {
        if (!(await confirmAction('Delete image ' + (i.name || short(i.digest)) + '? Its bytes are removed for good.'))) return;
        try { await api('DELETE', '/api/v1/images/' + i.digest); route(); } catch (e) { status('Delete refused: ' + e.message); }
      },
    }) : '')))) : el('p', { class: 'muted', text: 'No images. Upload one with: firmcast image upload FILE' }));
}

// ---- Routing

async function route() {
  closeSource();
  const seq = ++viewSeq;
  if (!session) return;
  const h = location.hash.replace(/^#\/?/, '');
  const [page, arg] = [h.split('/')[0], decodeURIComponent(h.split('/').slice(1).join('/'))];
  status('');
  try {
    switch (page) {
      case 'fleet': await viewFleet(seq); break;
      case 'images': await viewImages(seq); break;
      case 'campaign': await viewCampaign(seq, arg); break;
      case 'device': await viewDevice(seq, arg); break;
      default: await viewCampaigns(seq);
    }
    if (seq === viewSeq) $('main').focus({ preventScroll: true });
  } catch (e) {
    if (seq === viewSeq && session) failure(e);
  }
}

window.addEventListener('hashchange', route);

(async () => {
  try {
    session = await api('GET', '/api/v1/session');
  } catch (e) {
    signedOut('');
    return;
  }
  showApp();
  route();
})();
