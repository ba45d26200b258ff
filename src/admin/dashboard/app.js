// The switchyard dashboard: plain JavaScript, no build step, no library.
//
// It reads what any admin API client reads: GET api/v1/upstreams about once a
// second (rates and sparklines are computed here from the counters), the
// api/v1/events stream (the log, and an immediate re-read on every change),
// api/v1/cluster (the fleet, when there is one) and api/v1/whoami (whether to
// show the buttons). Changes go through the native API with a JSON body, from
// this origin, with the bearer token when the listener wants one.
//
// Fixed hooks for the browser tests: [data-upstream=NAME] > [data-server=ADDR] >
// [data-field=state|health|...] and button[data-action=up|down|drain|...];
// window.__dash holds readiness, counters, render timings and any script error.
'use strict';

(function () {
  const errors = [];
  window.addEventListener('error', (e) => {
    errors.push(String(e.message || e.type) + (e.filename ? ` (${e.filename}:${e.lineno})` : ''));
  });
  window.addEventListener('unhandledrejection', (e) => {
    errors.push('unhandled rejection: ' + String(e.reason && e.reason.stack ? e.reason.stack : e.reason));
  });
  document.addEventListener('securitypolicyviolation', (e) => {
    errors.push(`content security policy: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`);
  });

  const perf = {
    firstRenderMs: null, // the first full render, style and layout included
    renders: 0,
    lastRenderMs: 0,
    maxRenderMs: 0, // of the renders after the first
    totalRenderMs: 0,
    servers: 0,
  };
  const dash = {
    ready: false,
    errors,
    perf,
    polls: 0,
    pollErrors: 0,
    lastPollError: '',
    events: 0,
    canWrite: false,
  };
  window.__dash = dash;

  const API = 'api/v1/';
  const POLL_MS = 1000;
  const POLL_TIMEOUT_MS = 5000;
  const STALE_MS = 3500;
  const HISTORY = 120; // sparkline samples: two minutes at one a second
  const MIN_SAMPLE_MS = 900; // rates from samples at least this far apart
  const MAX_EVENTS = 200;
  const TOKEN_KEY = 'switchyard.admin.token';
  const SPARK_W = 120;
  const SPARK_H = 20;
  const SVG = 'http://www.w3.org/2000/svg';
  // The stream names each event by what changed; EventSource has no wildcard.
  const EVENT_KINDS = [
    'state', 'weight', 'max_conns', 'max_fails', 'fail_timeout', 'slow_start', 'backup',
    'server_added', 'server_removed', 'upstream_created', 'upstream_deleted',
    'health', 'health_check', 'settings', 'lagged',
  ];
  const COLUMNS = [
    ['Server', 'address; backup servers are marked'],
    ['State', 'admin state: what an operator asked for (up, down, drain)'],
    ['Health', 'what checks observed: healthy, unhealthy, checking, or passive unavail'],
    ['Passive', 'passive failure accounting: ok, or unavail after max_fails within fail_timeout'],
    ['Eligible', 'takes new requests now'],
    ['Weight', 'balancing weight'],
    ['Active', 'requests in flight'],
    ['Req/s', 'requests per second, from the counters'],
    ['5xx/s', '5xx responses per second, from the counters'],
    ['Resp. time', 'mean time to the end of the response'],
    ['Last check', 'when the active health check last ran, and its result'],
    ['Last 2 min', 'requests per second over the last two minutes, newest on the right'],
  ];

  const $ = (id) => document.getElementById(id);
  const main = $('upstreams');
  const eventsList = $('events');
  const tokenForm = $('token-form');
  const tokenInput = $('token-input');

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // Touch the DOM only for what changed.
  function setText(node, text) {
    if (node._text !== text) {
      node._text = text;
      node.textContent = text;
    }
  }
  function setClass(node, cls) {
    if (node._cls !== cls) {
      node._cls = cls;
      node.className = cls;
    }
  }
  function setHidden(node, hidden) {
    if (node.hidden !== hidden) node.hidden = hidden;
  }
  const enc = encodeURIComponent;

  function readToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }
  function keepToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // Storage switched off: the token lasts as long as the page.
    }
  }

  let token = readToken();
  let caps = null; // what GET whoami said
  let canWrite = false;
  let lastData = null;
  let lastOk = 0; // performance.now() of the last good poll
  let clockOffset = 0; // server clock minus ours, when they differ by more than 2 s
  let eventsOpen = false;
  let clusterOn = true; // until /cluster says there is no fleet
  const upstreams = new Map(); // name -> upstream view
  const series = new Map(); // server key -> rates and history

  // ---------------------------------------------------------------- requests

  async function errorText(r) {
    try {
      const j = await r.json();
      if (j && j.error) return `${r.status} ${j.error.code || ''}: ${j.error.message || j.error.text || ''}`;
    } catch (_) {
      // not JSON
    }
    return `HTTP ${r.status}`;
  }

  async function getJson(path, headers) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), POLL_TIMEOUT_MS);
    try {
      return await fetch(path, {
        headers: headers || {},
        cache: 'no-store',
        credentials: 'same-origin',
        signal: ctl.signal,
      });
    } finally {
      clearTimeout(timer);
    }
  }

  let noticeTimer = 0;
  function notice(text, bad) {
    const n = $('notice');
    n.textContent = text;
    n.className = 'notice' + (bad ? ' bad' : '');
    n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { n.hidden = true; }, bad ? 10000 : 4000);
  }

  // A change through the API; the answer or null (the reason is shown).
  async function send(method, path, body) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = 'Bearer ' + token;
    let r;
    try {
      r = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'same-origin',
      });
    } catch (e) {
      notice(`${method} ${path}: ${e.message || e}`, true);
      return null;
    }
    if (!r.ok) {
      notice(`${method} ${path}: ${await errorText(r)}`, true);
      if (r.status === 401) {
        token = '';
        keepToken('');
      }
      if (r.status === 401 || r.status === 403 || r.status === 405) loadCaps();
      return null;
    }
    schedulePoll(0);
    return r;
  }

  // ------------------------------------------------------- who may change

  async function loadCaps() {
    try {
      const r = await getJson(API + 'whoami', token ? { Authorization: 'Bearer ' + token } : {});
      // No whoami (an older switchyard): show no buttons.
      caps = r.ok ? await r.json() : { write: false, reason: await errorText(r) };
    } catch (e) {
      caps = null;
      return;
    }
    if (caps.token_required && token && !caps.token_valid) {
      token = '';
      keepToken('');
      $('token-note').textContent = 'that token was not accepted';
    }
    applyCaps();
  }

  function applyCaps() {
    const access = $('access');
    const needToken = !!(caps && caps.write && caps.token_required && !caps.token_valid);
    tokenForm.hidden = !needToken;
    if (!caps) {
      access.textContent = '';
    } else if (!caps.write) {
      access.textContent = 'read-only' + (caps.reason ? ': ' + caps.reason : '');
      access.className = 'access ro';
    } else if (needToken) {
      access.textContent = 'changes need the admin token';
      access.className = 'access ro';
    } else {
      access.textContent = 'changes allowed';
      access.className = 'access rw';
    }
    const w = !!(caps && caps.write && !needToken);
    if (w !== canWrite) {
      canWrite = w;
      dash.canWrite = w;
      // Rows are built with or without their buttons: build them again.
      if (visibility) visibility.disconnect();
      for (const v of upstreams.values()) v.section.remove();
      upstreams.clear();
      if (lastData) render(lastData);
    }
  }

  tokenForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const t = tokenInput.value.trim();
    if (!t) return;
    token = t;
    $('token-note').textContent = '';
    await loadCaps();
    if (caps && caps.token_valid) keepToken(t);
    tokenInput.value = '';
  });

  // ------------------------------------------------------------- polling

  let pollTimer = 0;
  let polling = false;
  let pollAgain = false;

  function schedulePoll(delay) {
    if (polling) {
      pollAgain = true;
      return;
    }
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, delay);
  }

  async function poll() {
    polling = true;
    pollAgain = false;
    try {
      if (!caps) await loadCaps();
      const r = await getJson(API + 'upstreams');
      const now = performance.now();
      if (!r.ok) throw new Error(await errorText(r));
      const date = Date.parse(r.headers.get('Date') || '');
      if (!Number.isNaN(date)) {
        const off = date - Date.now();
        clockOffset = Math.abs(off) > 2000 ? off : 0;
      }
      const data = await r.json();
      dash.polls++;
      lastOk = now;
      sample(data, now);
      render(data);
      // The fleet panel is extra: its failure does not make the table stale.
      if (clusterOn) await pollCluster().catch(() => {});
    } catch (e) {
      dash.pollErrors++;
      dash.lastPollError = String(e.message || e);
    } finally {
      polling = false;
      updateConn();
      clearTimeout(pollTimer);
      pollTimer = setTimeout(poll, pollAgain ? 0 : POLL_MS);
    }
  }

  function seriesKey(up, s) {
    return up + '\n' + s.id + '\n' + s.addr;
  }

  // Rates from two samples of the counters at least MIN_SAMPLE_MS apart.
  function sample(data, now) {
    const live = new Set();
    for (const u of data) {
      for (const s of u.servers) {
        const key = seriesKey(u.name, s);
        live.add(key);
        const req = s.requests;
        const e5 = s.responses['5xx'];
        const se = series.get(key);
        if (!se) {
          series.set(key, { t: now, req, e5, rps: null, eps: null, hist: [], fresh: false });
        } else if (req < se.req || e5 < se.e5) {
          // Counters started again: a new baseline.
          se.t = now;
          se.req = req;
          se.e5 = e5;
        } else if (now - se.t >= MIN_SAMPLE_MS) {
          const dt = (now - se.t) / 1000;
          se.rps = (req - se.req) / dt;
          se.eps = (e5 - se.e5) / dt;
          se.t = now;
          se.req = req;
          se.e5 = e5;
          se.hist.push(se.rps);
          if (se.hist.length > HISTORY) se.hist.shift();
          se.fresh = true;
        }
      }
    }
    for (const k of series.keys()) if (!live.has(k)) series.delete(k);
  }

  async function pollCluster() {
    const r = await getJson(API + 'cluster');
    if (r.status === 404) {
      clusterOn = false;
      $('fleet').hidden = true;
      return;
    }
    if (!r.ok) return;
    renderFleet(await r.json());
  }

  // -------------------------------------------------------------- render

  function fmtRate(v) {
    if (v === null || v === undefined) return '–';
    if (v === 0) return '0';
    return v < 10 ? v.toFixed(1) : String(Math.round(v));
  }

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return iso;
    const s = Math.max(0, Math.round((Date.now() + clockOffset - t) / 1000));
    if (s < 60) return s + 's ago';
    if (s < 3600) return Math.floor(s / 60) + 'm ago';
    return Math.floor(s / 3600) + 'h ago';
  }

  const visibility = 'IntersectionObserver' in window
    ? new IntersectionObserver((entries) => {
      for (const e of entries) {
        const v = e.target._view;
        if (!v) continue;
        v.visible = e.isIntersecting;
        if (v.visible && v.sparkStale) drawSpark(v);
      }
    }, { rootMargin: '200px' })
    : null;

  function upstreamView(name) {
    const section = el('section', 'upstream');
    section.dataset.upstream = name;
    const head = el('div', 'up-head');
    head.append(el('h2', '', name));
    const meta = el('span', 'up-meta');
    const eligible = el('span', 'up-eligible');
    eligible.dataset.field = 'eligible_servers';
    head.append(meta, eligible);
    // A grid of rows rather than a <table>: each row lays out on its own, so
    // rows off screen can skip layout (content-visibility) with 1,000 servers.
    const table = el('div', 'servers' + (canWrite ? ' rw' : ''));
    table.setAttribute('role', 'table');
    const hr = el('div', 'row head');
    hr.setAttribute('role', 'row');
    const columns = canWrite ? COLUMNS.concat([['Actions', 'change this server']]) : COLUMNS;
    for (const [label, help] of columns) {
      const th = el('div', 'th', label);
      th.setAttribute('role', 'columnheader');
      th.title = help;
      hr.append(th);
    }
    const tbody = el('div', 'rows');
    tbody.setAttribute('role', 'rowgroup');
    table.append(hr, tbody);
    section.append(head, table);
    if (canWrite) section.append(addForm());
    return { name, section, meta, eligible, tbody, rows: new Map() };
  }

  function addForm() {
    const f = el('form', 'add-server');
    const addr = el('input');
    addr.name = 'addr';
    addr.placeholder = 'host:port';
    addr.required = true;
    addr.autocomplete = 'off';
    addr.spellcheck = false;
    const weight = el('input');
    weight.name = 'weight';
    weight.type = 'number';
    weight.min = '1';
    weight.max = '1000';
    weight.placeholder = 'weight';
    const down = el('label', 'add-down');
    const downBox = el('input');
    downBox.type = 'checkbox';
    downBox.name = 'down';
    down.append(downBox, ' start down');
    const b = el('button', '', 'Add server');
    b.type = 'submit';
    b.dataset.action = 'add';
    f.append(addr, weight, down, b);
    return f;
  }

  function actionButton(action, label, help) {
    const b = el('button', 'act act-' + action, label);
    b.type = 'button';
    b.dataset.action = action;
    b.title = help;
    return b;
  }

  function rowView(s) {
    const tr = el('div', 'row srv');
    tr.setAttribute('role', 'row');
    tr.dataset.server = s.addr;
    const cell = (field, cls) => {
      const td = el('div', cls ? 'td ' + cls : 'td');
      td.setAttribute('role', 'cell');
      if (field) td.dataset.field = field;
      tr.append(td);
      return td;
    };
    const addrCell = cell(null, 'addr');
    const addr = el('span', 'addr-text', s.addr);
    const id = el('span', 'id', '#' + s.id);
    const badges = el('span', 'badges');
    addrCell.append(addr, id, badges);
    const v = {
      tr,
      id: s.id,
      addr: s.addr,
      badges,
      state: cell('state'),
      health: cell('health'),
      passive: cell('passive'),
      eligible: cell('eligible'),
      weightCell: cell(null, 'num'),
      weight: null,
      weightInput: null,
      activeCell: cell(null, 'num'),
      active: null,
      drainNote: null,
      rps: cell('rps', 'num'),
      eps: cell('rate_5xx', 'num'),
      rt: cell('response_time', 'num'),
      lastCheck: cell('last_check'),
      sparkCell: cell('sparkline', 'spark'),
      poly: null,
      visible: true,
      sparkStale: true,
      buttons: [],
      cur: s,
      busy: false,
    };
    v.weight = el('span');
    v.weight.dataset.field = 'weight';
    v.weightCell.append(v.weight);
    v.active = el('span');
    v.active.dataset.field = 'active';
    v.drainNote = el('span', 'drain-note');
    v.activeCell.append(v.active, v.drainNote);
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', `0 0 ${SPARK_W} ${SPARK_H}`);
    svg.setAttribute('width', String(SPARK_W));
    svg.setAttribute('height', String(SPARK_H));
    svg.setAttribute('aria-hidden', 'true');
    // The baseline spans the whole window; the line grows from the right.
    const base = document.createElementNS(SVG, 'line');
    base.setAttribute('x1', '0');
    base.setAttribute('x2', String(SPARK_W));
    base.setAttribute('y1', String(SPARK_H - 0.5));
    base.setAttribute('y2', String(SPARK_H - 0.5));
    v.poly = document.createElementNS(SVG, 'polyline');
    svg.append(base, v.poly);
    v.sparkCell.append(svg);
    if (canWrite) {
      const edit = actionButton('weight', '✎', 'change the weight');
      v.weightCell.append(edit);
      const acts = cell(null, 'actions');
      v.buttons = [
        actionButton('up', 'up', 'back into rotation'),
        actionButton('down', 'down', 'out of rotation now'),
        actionButton('drain', 'drain', 'no new requests; in-flight ones finish'),
        actionButton('remove', 'remove', 'remove from the upstream (click twice)'),
      ];
      acts.append(...v.buttons);
    }
    tr._view = v;
    if (visibility) {
      v.visible = false;
      visibility.observe(tr);
    }
    return v;
  }

  function drawSpark(v) {
    const se = v.series;
    const hist = se ? se.hist : [];
    v.sparkStale = false;
    if (!hist.length) {
      v.poly.setAttribute('points', '');
      return;
    }
    let max = 0;
    for (const x of hist) if (x > max) max = x;
    const scale = max > 0 ? (SPARK_H - 3) / max : 0;
    const step = SPARK_W / (HISTORY - 1);
    const x0 = SPARK_W - (hist.length - 1) * step;
    let pts = '';
    for (let i = 0; i < hist.length; i++) {
      pts += (x0 + i * step).toFixed(1) + ',' + (SPARK_H - 1.5 - hist[i] * scale).toFixed(1) + ' ';
    }
    v.poly.setAttribute('points', pts);
    v.sparkCell.title = `peak ${fmtRate(max)} req/s over the last ${hist.length} s`;
  }

  function updateRow(v, s, se) {
    v.cur = s;
    v.series = se;
    setText(v.state, s.state);
    setClass(v.state, 'td state st-' + s.state);
    setText(v.health, s.health);
    setClass(v.health, 'td health h-' + s.health);
    setText(v.passive, s.passive);
    setClass(v.passive, s.passive === 'ok' ? 'td passive' : 'td passive bad');
    setText(v.eligible, s.eligible ? 'yes' : 'no');
    setClass(v.eligible, s.eligible ? 'td elig yes' : 'td elig no');
    if (!v.weightInput) setText(v.weight, String(s.weight));
    setText(v.active, String(s.active));
    setText(v.drainNote, s.state === 'drain' ? (s.active > 0 ? ' draining' : ' drained') : '');
    setText(v.rps, fmtRate(se ? se.rps : null));
    setText(v.eps, fmtRate(se ? se.eps : null));
    setClass(v.eps, se && se.eps > 0 ? 'td num bad' : 'td num');
    setText(v.rt, s.requests > 0 ? s.response_time + ' ms' : '–');
    const hc = s.health_checks;
    setText(v.lastCheck, hc && hc.last_check ? ago(hc.last_check) + (hc.last_check_passed ? ' ✓' : ' ✗') : '–');
    setClass(v.lastCheck, hc && hc.last_check && !hc.last_check_passed ? 'td check bad' : 'td check');
    // Out of traffic stands out: tinted row, a badge.
    setClass(v.tr, 'row srv' + (s.eligible ? '' : ' out') + (s.backup ? ' backup' : '') + (v.busy ? ' busy' : ''));
    const badges = (s.backup ? 'backup ' : '') + (s.eligible ? '' : 'no traffic');
    setText(v.badges, badges.trim());
    for (const b of v.buttons) {
      const d = v.busy || b.dataset.action === s.state;
      if (b.disabled !== d) b.disabled = d;
    }
    if (se && se.fresh) v.sparkStale = true;
    if (v.sparkStale && v.visible) drawSpark(v);
  }

  function render(data) {
    const t0 = performance.now();
    lastData = data;
    const seenUp = new Set();
    let prevSection = null;
    let servers = 0;
    let out = 0;
    for (const u of data) {
      seenUp.add(u.name);
      let uv = upstreams.get(u.name);
      if (!uv) {
        uv = upstreamView(u.name);
        upstreams.set(u.name, uv);
      }
      const want = prevSection ? prevSection.nextSibling : main.firstChild;
      if (want !== uv.section) main.insertBefore(uv.section, want);
      prevSection = uv.section;
      setText(uv.meta, u.balance + (u.hash_key ? ` (${u.hash_key})` : ''));
      setText(uv.eligible, `${u.eligible_servers} of ${u.servers.length} eligible`);
      setClass(uv.eligible, 'up-eligible' + (u.eligible_servers === 0 && u.servers.length > 0 ? ' none' : ''));
      const seen = new Set();
      let prevRow = null;
      for (const s of u.servers) {
        const key = s.id + ' ' + s.addr;
        seen.add(key);
        let v = uv.rows.get(key);
        if (!v) {
          v = rowView(s);
          uv.rows.set(key, v);
        }
        const want = prevRow ? prevRow.nextSibling : uv.tbody.firstChild;
        if (want !== v.tr) uv.tbody.insertBefore(v.tr, want);
        prevRow = v.tr;
        updateRow(v, s, series.get(seriesKey(u.name, s)));
        servers++;
        if (!s.eligible) out++;
      }
      for (const [key, v] of uv.rows) {
        if (!seen.has(key)) {
          if (visibility) visibility.unobserve(v.tr);
          v.tr.remove();
          uv.rows.delete(key);
        }
      }
    }
    for (const [name, uv] of upstreams) {
      if (!seenUp.has(name)) {
        uv.section.remove();
        upstreams.delete(name);
      }
    }
    for (const se of series.values()) se.fresh = false;
    const empty = main.querySelector('.empty');
    if (data.length === 0 && !empty) main.append(el('p', 'empty', 'No upstreams.'));
    if (data.length > 0 && empty) empty.remove();
    setText($('summary'), `${data.length} upstream${data.length === 1 ? '' : 's'} · ${servers} server${servers === 1 ? '' : 's'}` + (out ? ` · ${out} out of traffic` : ''));
    perf.lastScriptMs = performance.now() - t0;
    // Style and layout now, so that the time below includes them.
    void main.offsetHeight;
    const ms = performance.now() - t0;
    perf.renders++;
    perf.lastRenderMs = ms;
    perf.totalRenderMs += ms;
    perf.servers = servers;
    if (perf.firstRenderMs === null) perf.firstRenderMs = ms;
    else if (ms > perf.maxRenderMs) perf.maxRenderMs = ms;
    dash.ready = true;
  }

  const fleetFields = {};
  function renderFleet(c) {
    const fleet = $('fleet');
    fleet.hidden = false;
    const dl = $('fleet-status');
    const rows = [
      ['store', `${c.store} ${(c.endpoints || []).join(', ')} ${c.prefix || ''}`.trim()],
      ['connected', c.connected ? 'yes' : 'no'],
      ['revision', `${c.applied_revision} applied of ${c.store_revision}`],
      ['lag', `${Number(c.lag_seconds || 0).toFixed(1)} s`],
      ['last error', c.last_error || '–'],
    ];
    for (const [k, text] of rows) {
      let dd = fleetFields[k];
      if (!dd) {
        dl.append(el('dt', '', k));
        dd = fleetFields[k] = el('dd');
        dd.dataset.field = 'fleet_' + k.replace(' ', '_');
        dl.append(dd);
      }
      setText(dd, text);
    }
    setClass(fleetFields.connected, c.connected ? 'ok' : 'bad');
    setClass(fleetFields.lag, c.lag_seconds > 0 ? 'bad' : 'ok');
    setClass(fleet, 'fleet' + (c.connected && !(c.lag_seconds > 0) ? '' : ' trouble'));
  }

  function updateConn() {
    const conn = $('conn');
    const now = performance.now();
    const fresh = lastOk > 0 && now - lastOk < STALE_MS;
    let text;
    let cls;
    if (!fresh) {
      text = lastOk ? `stale: no answer for ${Math.round((now - lastOk) / 1000)} s` : 'connecting…';
      if (dash.lastPollError) text += ` (${dash.lastPollError})`;
      cls = lastOk ? 'conn conn-bad' : 'conn conn-wait';
    } else if (!eventsOpen) {
      text = 'live (event stream reconnecting)';
      cls = 'conn conn-warn';
    } else {
      text = 'live';
      cls = 'conn conn-ok';
    }
    setText(conn, text);
    setClass(conn, cls);
    document.body.classList.toggle('stale', !fresh && lastOk > 0);
  }

  // -------------------------------------------------------------- events

  let pendingEvents = [];
  let flushTimer = 0;

  function onEvent(e) {
    dash.events++;
    let ev = null;
    try {
      ev = JSON.parse(e.data);
    } catch (_) {
      return;
    }
    pendingEvents.push({ kind: e.type, ev });
    if (!flushTimer) flushTimer = setTimeout(flushEvents, 0);
    schedulePoll(20);
  }

  function eventLine(kind, ev) {
    const li = el('li', 'ev ev-' + (kind === 'message' ? 'other' : kind));
    const t = Date.parse(ev.time || '');
    const time = Number.isNaN(t) ? '' : new Date(t).toLocaleTimeString([], { hour12: false });
    li.append(el('time', '', time));
    if (kind === 'lagged') {
      li.append(el('span', 'what', `missed ${ev.missed} events; the table is read again`));
      return li;
    }
    li.append(el('span', 'who', ev.origin || ''));
    let what = ev.upstream || '';
    if (ev.server) what += ' ' + ev.server;
    what += ' ' + (ev.change || kind);
    if (ev.old !== undefined || ev.new !== undefined) {
      what += `: ${ev.old !== undefined ? ev.old : '–'} → ${ev.new !== undefined ? ev.new : '–'}`;
    }
    const w = el('span', 'what', what);
    if (kind === 'health' && ev.new === 'unhealthy') w.className = 'what bad';
    li.append(w);
    return li;
  }

  function flushEvents() {
    flushTimer = 0;
    const batch = pendingEvents.slice(-MAX_EVENTS);
    pendingEvents = [];
    const frag = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) frag.append(eventLine(batch[i].kind, batch[i].ev));
    eventsList.prepend(frag);
    while (eventsList.childElementCount > MAX_EVENTS) eventsList.lastElementChild.remove();
  }

  let everOpen = false;
  function connectEvents() {
    const es = new EventSource(API + 'events');
    for (const k of EVENT_KINDS) es.addEventListener(k, onEvent);
    es.addEventListener('message', onEvent);
    es.addEventListener('open', () => {
      const again = everOpen;
      everOpen = true;
      eventsOpen = true;
      updateConn();
      // Back after a break: what we missed is in the table, and who may
      // change things may have changed with a restart.
      if (again) {
        loadCaps();
        schedulePoll(0);
      }
    });
    es.addEventListener('error', () => {
      eventsOpen = false;
      updateConn();
      if (es.readyState === EventSource.CLOSED) {
        // Refused (not a dropped connection, which EventSource retries itself).
        es.close();
        setTimeout(connectEvents, 5000);
      }
    });
  }

  // ------------------------------------------------------------- actions

  function viewOf(node) {
    const sec = node.closest('[data-upstream]');
    if (!sec) return null;
    const uv = upstreams.get(sec.dataset.upstream);
    const tr = node.closest('[data-server]');
    return { uv, v: tr ? tr._view : null };
  }

  function serverPath(uv, v) {
    return `${API}upstreams/${enc(uv.name)}/servers/${v.id}`;
  }

  async function busy(v, promise) {
    v.busy = true;
    updateRow(v, v.cur, v.series);
    try {
      await promise;
    } finally {
      v.busy = false;
      updateRow(v, v.cur, v.series);
    }
  }

  function editWeight(uv, v) {
    if (v.weightInput) {
      v.weightInput.focus();
      return;
    }
    const inp = el('input', 'weight-input');
    inp.type = 'number';
    inp.min = '1';
    inp.max = '1000';
    inp.value = String(v.cur.weight);
    inp.title = 'Enter to set, Escape to cancel';
    inp.dataset.field = 'weight_input';
    v.weightInput = inp;
    v.weight.hidden = true;
    v.weightCell.prepend(inp);
    let done = false;
    const close = () => {
      if (done) return;
      done = true;
      v.weightInput = null;
      inp.remove();
      v.weight.hidden = false;
      setText(v.weight, String(v.cur.weight));
    };
    inp.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') close();
      if (e.key !== 'Enter') return;
      e.preventDefault();
      const w = Number(inp.value);
      if (!Number.isInteger(w) || w < 1 || w > 1000) {
        notice('a weight is a whole number from 1 to 1000', true);
        return;
      }
      close();
      if (w !== v.cur.weight) busy(v, send('PATCH', serverPath(uv, v), { weight: w }));
    });
    inp.addEventListener('blur', close);
    inp.focus();
    inp.select();
  }

  main.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    if (!b || !canWrite || b.dataset.action === 'add') return;
    const at = viewOf(b);
    if (!at || !at.uv || !at.v) return;
    const { uv, v } = at;
    const action = b.dataset.action;
    if (action === 'up' || action === 'down' || action === 'drain') {
      busy(v, send('PATCH', serverPath(uv, v), { state: action }));
    } else if (action === 'weight') {
      editWeight(uv, v);
    } else if (action === 'remove') {
      if (!b.classList.contains('armed')) {
        b.classList.add('armed');
        b.textContent = 'confirm';
        setTimeout(() => {
          b.classList.remove('armed');
          b.textContent = 'remove';
        }, 4000);
        return;
      }
      busy(v, send('DELETE', serverPath(uv, v)));
    }
  });

  main.addEventListener('submit', async (e) => {
    const f = e.target;
    if (!f.matches('form.add-server')) return;
    e.preventDefault();
    if (!canWrite) return;
    const at = viewOf(f);
    if (!at || !at.uv) return;
    const body = { addr: f.elements.addr.value.trim() };
    const w = f.elements.weight.value;
    if (w !== '') body.weight = Number(w);
    if (f.elements.down.checked) body.state = 'down';
    const r = await send('POST', `${API}upstreams/${enc(at.uv.name)}/servers`, body);
    if (r) {
      notice(`added ${body.addr} to ${at.uv.name}`, false);
      f.reset();
    }
  });

  // --------------------------------------------------------------- start

  // The first poll asks whoami first, so the first render knows the buttons.
  connectEvents();
  poll();
  setInterval(updateConn, 1000);
  // A hidden tab's timers are slowed down by the browser: catch up when shown.
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) schedulePoll(0);
  });
}());
