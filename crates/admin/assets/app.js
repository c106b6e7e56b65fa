// cutover dashboard. Talks only to the admin listener that served it: the same /v1 routes as
// the CLI (with the session cookie and, on every state change, the session's CSRF token), and
// one server-sent event stream (/v1/events) for the live view. No polling loop.
'use strict';

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};

let csrf = null;
let events = null;
// The live view's data: the rollout it follows, its points and decisions.
const live = { rollout: null, points: [], seen: new Set(), decisions: [], status: null, windowMs: 1000 };
const charts = {};

// ---- the admin API -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = csrf || '';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let j = null;
  try { j = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const e = j && j.error ? j.error : { code: 'http', message: `HTTP ${r.status}` };
    if (r.status === 401 && path !== '/ui/login') showLogin(e.message);
    throw new ApiError(r.status, e.code, e.message);
  }
  return j;
}

// As the CLI prints a refusal: `error: <message>`.
const refusal = (e) => `error: ${e.message}`;

// ---- formatting ----------------------------------------------------------------------------

const pct = (bp) => `${(bp / 100).toFixed(bp % 100 === 0 ? 0 : 2)} %`;
const ms = (secs) => (secs == null ? null : secs * 1000);
function span(msTotal) {
  if (msTotal == null) return '—';
  const s = Math.round(msTotal / 100) / 10;
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
const clock = (millis) => new Date(millis).toLocaleTimeString([], { hour12: false });
// A Dur as written in config and JSON ("1s", "500ms", "1m30s") in milliseconds.
function durMs(d) {
  if (typeof d !== 'string') return null;
  let total = 0;
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let m;
  while ((m = re.exec(d))) total += Number(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2]];
  return total || null;
}
const phaseName = (p) => (p && p.phase ? p.phase.replace('_', ' ') : '—');
const ACTIVE = new Set(['starting', 'progressing', 'paused', 'handing_off']);

// ---- session -------------------------------------------------------------------------------

function showLogin(message) {
  stopEvents();
  csrf = null;
  $('nav').hidden = true;
  for (const s of ['live', 'history', 'rollout']) $(s).hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message ? `error: ${message}` : '';
  $('token').focus();
}

async function login(ev) {
  ev.preventDefault();
  $('login-error').textContent = '';
  try {
    const j = await api('POST', '/ui/login', { token: $('token').value });
    csrf = j.csrf;
    $('token').value = '';
    started();
  } catch (e) {
    $('login-error').textContent = refusal(e);
    $('token').select();
  }
}

async function logout() {
  try { await api('POST', '/ui/logout'); } catch (_) { /* shown by api() */ }
  showLogin('logged out');
}

function started() {
  $('login').hidden = true;
  $('nav').hidden = false;
  startEvents();
  route();
}

// ---- routing -------------------------------------------------------------------------------

function route() {
  if (csrf === null) return;
  const h = location.hash || '#/live';
  const m = h.match(/^#\/rollout\/(\d+)$/);
  const view = m ? 'rollout' : h === '#/history' ? 'history' : 'live';
  for (const s of ['live', 'history', 'rollout']) $(s).hidden = s !== view;
  $('nav-live').toggleAttribute('aria-current', view === 'live');
  $('nav-history').toggleAttribute('aria-current', view === 'history');
  if (view === 'live') $('nav-live').setAttribute('aria-current', 'page');
  if (view === 'history') { $('nav-history').setAttribute('aria-current', 'page'); loadHistory(); }
  if (view === 'rollout') loadReplay(Number(m[1]));
  resizeCharts();
}

// ---- live feed -----------------------------------------------------------------------------

function stopEvents() {
  if (events) events.close();
  events = null;
}

function startEvents() {
  stopEvents();
  events = new EventSource('/v1/events');
  events.addEventListener('open', () => { $('conn').textContent = 'live: connected'; });
  events.addEventListener('status', (e) => onStatus(JSON.parse(e.data)));
  events.addEventListener('decision', (e) => onDecision(JSON.parse(e.data)));
  events.addEventListener('error', async () => {
    $('conn').textContent = 'live: reconnecting…';
    if (events && events.readyState === EventSource.CLOSED) {
      // Refused (the session ended) or the server went away: find out which.
      try {
        const j = await api('GET', '/ui/session');
        csrf = j.csrf;
        setTimeout(startEvents, 1000);
      } catch (_) { /* api() showed the login form on 401 */ }
    }
  });
}

async function onStatus(s) {
  live.status = s;
  $('service').textContent = s.service ? `— ${s.service}` : '';
  live.windowMs = durMs(s.settings && s.settings.window) || live.windowMs;
  const r = s.rollout;
  if (r && r.id !== live.rollout) {
    live.rollout = r.id;
    live.points = [];
    live.seen = new Set();
    live.decisions = [];
    // A page opened mid-rollout starts from what was recorded so far.
    try {
      const rep = await api('GET', `/v1/history/${r.id}/replay`);
      for (const p of rep.points) addPoint(p);
      for (const d of rep.decisions) addDecision({ at: d.at, kind: d.kind, reason: d.reason, rollout: r.id });
    } catch (_) { /* nothing recorded yet */ }
  }
  if (r && r.last_evaluation) {
    addPoint({ at: r.last_evaluation.at, weight: r.weight, step: r.step, last_evaluation: r.last_evaluation });
  }
  renderSummary(s);
  renderInstances(s.instances || []);
  drawLive();
}

function onDecision(d) {
  if (live.rollout !== null && d.rollout != null && d.rollout !== live.rollout) {
    // A decision of a new rollout: its status follows and resets the view.
    live.pending = (live.pending || []).concat([d]);
    return;
  }
  addDecision(d);
  drawLive();
}

function addPoint(p) {
  if (!p.last_evaluation || live.seen.has(p.last_evaluation.at)) return;
  live.seen.add(p.last_evaluation.at);
  live.points.push(p);
  // Backfilled points may arrive after live ones; the chart's x values must ascend.
  const n = live.points.length;
  if (n > 1 && live.points[n - 2].last_evaluation.at > p.last_evaluation.at) {
    live.points.sort((a, b) => a.last_evaluation.at - b.last_evaluation.at);
  }
}

function addDecision(d) {
  if (live.decisions.some((x) => x.at === d.at && x.kind === d.kind && x.reason === d.reason)) return;
  live.decisions.push(d);
  live.decisions.sort((a, b) => a.at - b.at);
  if (live.pending) {
    const mine = live.pending.filter((x) => x.rollout === live.rollout);
    live.pending = null;
    for (const x of mine) addDecision(x);
  }
}

function renderSummary(s) {
  const r = s.rollout;
  if (!r) {
    $('rollout-id').textContent = 'none yet';
    $('phase').textContent = 'idle';
    return;
  }
  const phase = r.phase.phase;
  $('rollout-id').textContent = `#${r.id}`;
  $('versions').textContent = `${r.from ? r.from.version : '(none)'} → ${r.to.version}`;
  // A singleton (strategy "handoff", docs/handoff.md): who holds the role, with which token.
  if (s.fencing) $('versions').textContent += ` · ${s.fencing.holder.version} holds the role, fencing token ${s.fencing.token}`;
  const paused = phase === 'paused' ? (r.phase.manual ? ' (by an operator)' : ' (until promoted)') : '';
  $('phase').textContent = phaseName(r.phase) + paused;
  $('phase').dataset.phase = phase;
  $('weight').textContent = pct(r.weight);
  $('step').textContent = phase === 'promoted' || phase === 'done'
    ? `all ${r.plan.length} done, 100 %`
    : `${Math.min(r.step + 1, r.plan.length)} of ${r.plan.length}`;
  $('eta').textContent = s.eta && ACTIVE.has(phase) ? `${clock(s.eta)} (in ${span(s.eta - s.now)})` : '—';
  const reason = r.phase.reason ? `${phaseName(r.phase)}: ${r.phase.reason}` : r.hold ? `holding: ${r.hold.reason || ''}` : '';
  $('phase-reason').textContent = reason;
  $('phase-reason').className = `reason${phase === 'aborted' || phase === 'rolled_back' ? ' bad' : ''}`;
  renderSteps(r);
}

function renderSteps(r) {
  const ol = $('steps');
  ol.replaceChildren();
  const phase = r.phase.phase;
  const finished = phase === 'promoted' || phase === 'done' || phase === 'rolled_back';
  const steps = r.plan.map((st) => ({ weight: st.weight, hold: st.hold }));
  steps.push({ weight: 10000, hold: null });
  steps.forEach((st, i) => {
    let state;
    if (finished || i < r.step) state = 'done';
    else if (i === r.step && ACTIVE.has(phase)) state = phase === 'paused' ? 'current, paused' : 'current';
    else if (phase === 'aborted' && i === r.step) state = 'aborted here';
    else if (phase === 'aborted') state = 'not reached';
    else state = 'next';
    if (i === steps.length - 1) state = finished && phase !== 'rolled_back' ? 'done' : state === 'done' ? 'done' : state;
    const hold = st.hold === null ? 'promotion' : st.hold === 'until_promoted' ? 'until promoted' : st.hold.for ? `for ${st.hold.for}` : '';
    const li = el('li', { class: state.split(',')[0].replace(' ', '-'), 'data-step': String(i) },
      `${pct(st.weight)} `, el('span', { class: 'state', text: `${state}${hold ? ' · ' + hold : ''}` }));
    if (state.startsWith('current')) li.setAttribute('aria-current', 'step');
    ol.append(li);
  });
}

function renderInstances(list) {
  const tb = $('instances').querySelector('tbody');
  const open = new Set([...tb.querySelectorAll('details[open]')].map((d) => d.dataset.instance));
  tb.replaceChildren();
  for (const i of list) {
    const pre = el('pre', { text: logLines.get(i.id) || '…' });
    const details = el('details', { 'data-instance': i.id }, el('summary', { text: 'last lines' }), pre);
    // Re-rendered rows keep an open log as it was; it is fetched again only when opened again,
    // so a status event never becomes a log request.
    let restoring = open.has(i.id);
    details.addEventListener('toggle', () => {
      if (restoring) { restoring = false; return; }
      if (details.open) loadLog(i, pre);
    });
    if (restoring) details.open = true;
    tb.append(el('tr', { 'data-instance': i.id },
      el('td', { text: i.id }), el('td', { text: i.version }), el('td', { text: i.state }),
      el('td', { text: String(i.in_flight) }), el('td', { text: String(i.websockets ?? 0) }),
      el('td', { text: String(i.restarts) }), el('td', { text: i.last_probe || '—' }),
      el('td', {}, details)));
  }
}

// The last log lines fetched per instance, shown again when its row is re-rendered.
const logLines = new Map();

async function loadLog(i, pre) {
  const n = Number(i.id.slice(i.id.lastIndexOf('-') + 1)) || 0;
  let shown;
  try {
    const j = await api('GET', `/v1/logs/${encodeURIComponent(i.version)}?instance=${n}`);
    shown = j.text.split('\n').filter((l) => l.length).slice(-20).join('\n') || '(empty)';
  } catch (e) {
    shown = refusal(e);
  }
  logLines.set(i.id, shown);
  // The row may have been re-rendered meanwhile: write to the one on the page.
  const current = document.querySelector(`#instances details[data-instance="${i.id}"] pre`);
  (current || pre).textContent = shown;
}

// ---- charts --------------------------------------------------------------------------------

const COLORS = { stable: '#0969da', canary: '#bf3989', weight: '#6e7781', rule: ['#9a6700', '#1a7f37', '#cf222e', '#8250df'] };

// The series of one chart kind for a list of points: [labels, styles, data].
function seriesFor(kind, points, windowMs) {
  const xs = points.map((p) => p.last_evaluation.at / 1000);
  const ev = (p) => p.last_evaluation;
  const defs = [];
  if (kind === 'latency') {
    for (const track of ['stable', 'canary']) {
      for (const q of ['p50', 'p99']) {
        defs.push({
          label: `${track} ${q}`, stroke: COLORS[track], dash: q === 'p50' ? [2, 4] : track === 'stable' ? [8, 4] : undefined,
          values: points.map((p) => ms(ev(p)[track][`${q}_seconds`])),
        });
      }
    }
  } else if (kind === 'errors') {
    for (const track of ['stable', 'canary']) {
      defs.push({
        label: `${track} errors`, stroke: COLORS[track], dash: track === 'stable' ? [8, 4] : undefined,
        values: points.map((p) => (ev(p)[track].error_ratio == null ? null : ev(p)[track].error_ratio * 100)),
      });
    }
  } else {
    for (const track of ['stable', 'canary']) {
      defs.push({
        label: `${track} req/s`, stroke: COLORS[track], dash: track === 'stable' ? [8, 4] : undefined,
        values: points.map((p) => ev(p)[track].requests / (windowMs / 1000)),
      });
    }
    defs.push({ label: 'canary weight %', stroke: COLORS.weight, scale: '%', dash: [1, 3],
      values: points.map((p) => (p.weight == null ? null : p.weight / 100)) });
  }
  if (kind !== 'rate') {
    // Each rule's threshold, where it applies to this chart's unit.
    const unit = kind === 'latency' ? 'seconds' : 'ratio';
    const scale = kind === 'latency' ? 1000 : 100;
    const rules = new Map();
    points.forEach((p, i) => {
      for (const [group, list] of [['gate', ev(p).gates || []], ['abort rule', ev(p).aborts || []]]) {
        for (const v of list) {
          if (v.unit !== unit || v.threshold == null) continue;
          const key = `${group} ${v.rule}`;
          if (!rules.has(key)) rules.set(key, new Array(points.length).fill(null));
          rules.get(key)[i] = v.threshold * scale;
        }
      }
    });
    let n = 0;
    for (const [key, values] of rules) {
      defs.push({ label: `${key} threshold`, stroke: COLORS.rule[n++ % COLORS.rule.length], dash: [10, 3, 2, 3], width: 2, values });
    }
  }
  return { xs, defs };
}

// Decision markers: a vertical line at each decision, labelled with its kind; the cursor near
// one shows its time, kind and reason in `caption` (the list under the charts has them all).
function markers(getDecisions, caption) {
  return {
    hooks: {
      setCursor: [(u) => {
        const left = u.cursor.left;
        let near = null;
        if (left != null && left >= 0) {
          let best = 8; // px
          for (const d of getDecisions()) {
            // Holds come at every evaluation: any other decision nearby is the one meant.
            const dist = Math.abs(u.valToPos(d.at / 1000, 'x') - left) + (d.kind === 'hold' ? 4 : 0);
            if (dist <= best) { best = dist; near = d; }
          }
        }
        caption.textContent = near ? `${clock(near.at)} ${near.kind.replace('_', ' ')}: ${near.reason}` : '';
      }],
      draw: [(u) => {
        const ctx = u.ctx;
        const ds = getDecisions();
        ctx.save();
        ctx.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
        ctx.textBaseline = 'top';
        let row = 0;
        let previous = null;
        for (const d of ds) {
          const x = u.valToPos(d.at / 1000, 'x', true);
          const repeat = d.kind === previous;
          previous = d.kind;
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          const bad = ['aborted', 'breach_started', 'rolled_back', 'crash_loop'].includes(d.kind);
          // A run of the same kind (holds at every evaluation) is labelled once, drawn faintly.
          ctx.globalAlpha = repeat ? 0.35 : 1;
          ctx.strokeStyle = bad ? '#cf222e' : '#57606a';
          ctx.setLineDash(bad ? [] : [3, 3]);
          ctx.lineWidth = devicePixelRatio;
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          if (repeat) continue;
          ctx.fillStyle = ctx.strokeStyle;
          ctx.fillText(d.kind.replace('_', ' '), x + 3 * devicePixelRatio, u.bbox.top + (row % 4) * 12 * devicePixelRatio);
          row++;
        }
        ctx.restore();
      }],
    },
  };
}

function drawChart(key, container, kind, points, decisions, windowMs) {
  const box = $(container);
  const { xs, defs } = seriesFor(kind, points, windowMs);
  const shape = defs.map((d) => d.label).join('|');
  const width = Math.max(box.clientWidth, 240);
  const height = window.innerWidth < 600 ? 200 : 240;
  const data = [xs, ...defs.map((d) => d.values)];
  const c = charts[key];
  if (c && c.shape === shape) {
    c.decisions = decisions;
    c.plot.setData(data);
    return;
  }
  if (c) c.plot.destroy();
  box.replaceChildren();
  const caption = el('p', { class: 'marker-reason' });
  const entry = { shape, decisions, plot: null };
  const yLabel = kind === 'latency' ? 'ms' : kind === 'errors' ? '%' : 'req/s';
  const axes = [{}, { label: yLabel, size: 60 }];
  // The time axis covers the decisions too: an abort comes after the last evaluation.
  const scales = {
    x: {
      time: true,
      range: (u, min, max) => {
        const ds = entry.decisions;
        if (!ds.length) return [min, max];
        const lo = ds[0].at / 1000;
        const hi = ds[ds.length - 1].at / 1000;
        return [min == null ? lo : Math.min(min, lo), max == null ? hi : Math.max(max, hi)];
      },
    },
  };
  if (kind === 'rate') {
    axes.push({ scale: '%', side: 1, label: 'weight %', grid: { show: false } });
    scales['%'] = { range: [0, 100] };
  }
  entry.plot = new uPlot({
    width, height, scales, axes,
    series: [{ label: 'time' }, ...defs.map((d) => ({
      label: d.label, stroke: d.stroke, width: d.width || 1.5, dash: d.dash, scale: d.scale, spanGaps: false,
      points: { show: false },
    }))],
    plugins: [markers(() => entry.decisions, caption)],
    legend: { live: true },
  }, data, box);
  box.append(caption);
  charts[key] = entry;
}

function resizeCharts() {
  for (const [key, c] of Object.entries(charts)) {
    const box = c.plot.root.parentElement; // the chart's container (the caption follows the plot)
    if (box && box.offsetParent !== null) {
      c.plot.setSize({ width: Math.max(box.clientWidth, 240), height: window.innerWidth < 600 ? 200 : 240 });
    }
    void key;
  }
}

function renderDecisions(list, target) {
  const ol = $(target);
  ol.replaceChildren(...list.map((d) => el('li', { 'data-kind': d.kind },
    el('time', { datetime: new Date(d.at).toISOString(), text: clock(d.at) }), ' ',
    el('span', { class: `kind ${d.kind}`, text: d.kind.replace('_', ' ') }), ': ', d.reason)));
}

function drawLive() {
  if (typeof uPlot === 'undefined') return;
  for (const [key, kind] of [['latency', 'latency'], ['errors', 'errors'], ['rate', 'rate']]) {
    drawChart(`live-${key}`, `chart-${key}`, kind, live.points, live.decisions, live.windowMs);
  }
  $('chart-latency').dataset.points = String(live.points.length);
  renderDecisions(live.decisions, 'decisions');
}

// ---- steering ------------------------------------------------------------------------------

function confirmThen(text, action) {
  const dlg = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-reason').value = '';
  dlg.returnValue = '';
  dlg.onclose = async () => {
    if (dlg.returnValue !== 'ok') return;
    const reason = $('confirm-reason').value.trim() || undefined;
    await action(reason);
  };
  dlg.showModal();
  $('confirm-reason').focus();
}

function showResult(text, bad) {
  const out = $('steer-result');
  out.textContent = text;
  out.className = bad ? 'error' : '';
}

function steer(verb) {
  const r = live.status && live.status.rollout;
  const what = r ? `rollout #${r.id} (${r.to.version}, ${phaseName(r.phase)} at ${pct(r.weight)})` : 'the rollout';
  confirmThen(`${verb[0].toUpperCase()}${verb.slice(1)} ${what}?`, async (reason) => {
    try {
      const j = await api('POST', `/v1/${verb}`, { reason });
      showResult(`${verb}: ${j.message || 'done'}`, false);
    } catch (e) {
      showResult(refusal(e), true);
    }
  });
}

function deploy(ev) {
  ev.preventDefault();
  const version = $('deploy-version').value.trim();
  const env = {};
  const lines = $('deploy-env').value.split('\n').map((l) => l.trim()).filter((l) => l);
  for (const [i, line] of lines.entries()) {
    const eq = line.indexOf('=');
    if (eq <= 0) {
      showResult(`error: environment line ${i + 1} (${JSON.stringify(line)}): write KEY=VALUE`, true);
      return;
    }
    env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  const args = $('deploy-args').value.split('\n').filter((l) => l.length);
  const force = $('deploy-force').checked;
  confirmThen(`Deploy ${version}${force ? ' (forced)' : ''}?`, async (reason) => {
    try {
      const j = await api('POST', '/v1/deploy', { version, env, args, force, reason });
      showResult(`deploy: rollout #${j.rollout} of ${j.version}${j.message ? ': ' + j.message : ''}`, false);
    } catch (e) {
      showResult(refusal(e), true);
    }
  });
}

// ---- history and replay ----------------------------------------------------------------------

async function loadHistory() {
  const tb = $('history-table').querySelector('tbody');
  let j;
  try {
    j = await api('GET', '/v1/history?limit=50');
  } catch (e) {
    tb.replaceChildren(el('tr', {}, el('td', { colspan: '7', text: refusal(e) })));
    return;
  }
  tb.replaceChildren();
  const rows = [];
  for (const r of j.rollouts) {
    const started = Date.parse(r.started_at);
    const ended = r.ended_at ? Date.parse(r.ended_at) : null;
    const blast = el('td', { text: '…' });
    const restore = el('td', { text: '…' });
    tb.append(el('tr', { 'data-rollout': String(r.id) },
      el('td', {}, el('a', { href: `#/rollout/${r.id}`, text: `#${r.id}` })),
      el('td', { text: `${r.from_version || '(none)'} → ${r.to_version}` }),
      el('td', { text: r.outcome || 'in progress' }),
      el('td', { text: new Date(started).toLocaleString([], { hour12: false }) }),
      el('td', { text: ended ? span(ended - started) : 'running' }),
      blast, restore));
    rows.push([r.id, blast, restore]);
  }
  // The blast radius and time to restore come from each rollout's recording, one at a time.
  for (const [id, blast, restore] of rows) {
    try {
      const rep = await api('GET', `/v1/history/${id}/replay`);
      blast.textContent = blastText(rep.summary);
      restore.textContent = span(rep.summary.fault_to_restore_ms);
    } catch (e) {
      blast.textContent = e.status === 404 ? 'not recorded' : refusal(e);
      restore.textContent = '—';
    }
  }
}

const blastText = (s) => `peak ${pct(s.peak_weight)}, ≈${s.canary_requests_estimate} canary requests (${s.canary_errors_estimate} failed)`;

async function loadReplay(id) {
  $('rollout-title').textContent = `Rollout #${id}`;
  $('rollout-summary').textContent = 'loading…';
  let rep;
  try {
    rep = await api('GET', `/v1/history/${id}/replay`);
  } catch (e) {
    $('rollout-summary').textContent = refusal(e);
    return;
  }
  const rec = rep.record || {};
  const outcome = rec.outcome || (rep.final ? phaseName(rep.final.phase) : 'in progress');
  const dur = rec.ended_at ? span(rec.ended_at - rec.started_at) : 'still running';
  $('rollout-summary').textContent =
    `${rec.from_version || '(none)'} → ${rec.to_version}: ${outcome}; duration ${dur}; ` +
    `blast radius ${blastText(rep.summary)}; fault to restore ${span(rep.summary.fault_to_restore_ms)}.`;
  const windowMs = durMs(rep.window) || live.windowMs;
  const decisions = rep.decisions.map((d) => ({ at: d.at, kind: d.kind, reason: d.reason }));
  if (typeof uPlot !== 'undefined') {
    for (const kind of ['latency', 'errors', 'rate']) {
      drawChart(`replay-${kind}`, `replay-${kind}`, kind, rep.points, decisions, windowMs);
    }
  }
  $('replay-latency').dataset.points = String(rep.points.length);
  renderDecisions(decisions, 'replay-decisions');
}

// ---- start -----------------------------------------------------------------------------------

window.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('deploy-form').addEventListener('submit', deploy);
  for (const b of document.querySelectorAll('[data-verb]')) {
    b.addEventListener('click', () => steer(b.dataset.verb));
  }
  window.addEventListener('hashchange', route);
  let pending = null;
  window.addEventListener('resize', () => {
    clearTimeout(pending);
    pending = setTimeout(resizeCharts, 150);
  });
  try {
    const j = await api('GET', '/ui/session');
    csrf = j.csrf;
    started();
  } catch (_) {
    showLogin('');
  }
});
