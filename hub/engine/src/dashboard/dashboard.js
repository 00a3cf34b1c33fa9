// The hub's live dashboard. It reads the admin API: a snapshot and ten minutes of history at
// start, then `/api/status/stream` once a second; plugins and dead letters are acted on through
// the same API. Plain JS without a build step; uPlot (loaded before this file) draws the charts.
//
// With a tenant's own token (`/api/whoami` says whose it is) the page is that tenant's: its
// figures from `/api/tenants/{name}` once a second, its plugins and its dead letters, and none
// of the hub's (which its token does not reach).
//
// Every text that comes from the hub goes into the page as text (`textContent`), never as
// HTML: dead letters carry whatever senders put in them.
'use strict';

(() => {
  const HISTORY_MS = 10 * 60 * 1000;
  const TOKEN_KEY = 'hub.adminToken';
  // The stream sends a frame a second; this long without one means the connection is dead
  // even if no error says so (a proxy holding it open, a suspended laptop…).
  const STREAM_SILENCE_MS = 5000;
  const RECONNECT_MIN_MS = 1000;
  const RECONNECT_MAX_MS = 30000;
  const RECENT_LETTERS = 15;

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- formatting

  const integer = new Intl.NumberFormat('en-US');
  const isNumber = (x) => typeof x === 'number' && Number.isFinite(x);

  const fmtCount = (n) => (isNumber(n) ? integer.format(n) : '—');

  function fmtRate(x) {
    if (!isNumber(x)) return '—';
    if (x === 0) return '0';
    return x < 10 ? x.toFixed(1) : integer.format(Math.round(x));
  }

  function fmtBytes(x) {
    if (!isNumber(x)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (x >= 1024 && i < units.length - 1) {
      x /= 1024;
      i += 1;
    }
    return i === 0 ? `${x} B` : `${x.toFixed(1)} ${units[i]}`;
  }

  /** What is used against a limit (`used / max`), or what is used when there is no limit. */
  const usedOf = (used, max, fmt) => (isNumber(max) ? `${fmt(used ?? 0)} / ${fmt(max)}` : fmt(used));

  function fmtMs(x) {
    if (!isNumber(x)) return '—';
    if (x === 0) return '0';
    if (x < 1) return x.toFixed(2);
    return x < 100 ? x.toFixed(1) : integer.format(Math.round(x));
  }

  function fmtUptime(s) {
    if (!isNumber(s)) return '—';
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, '0');
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${pad(m)}m`;
    if (m > 0) return `${m}m ${pad(Math.floor(s % 60))}s`;
    return `${Math.floor(s)}s`;
  }

  /** A wall-clock time; with the date when it is not today. */
  function fmtTime(ms) {
    if (!isNumber(ms)) return '—';
    const t = new Date(ms);
    const clock = t.toLocaleTimeString('en-GB', { hour12: false });
    return t.toDateString() === new Date().toDateString() ? clock : `${t.toLocaleDateString('en-CA')} ${clock}`;
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function cell(text, className) {
    const td = document.createElement('td');
    if (className) td.className = className;
    if (text !== undefined) td.textContent = text;
    return td;
  }

  function button(label, onClick, className) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    if (className) b.className = className;
    b.addEventListener('click', (e) => {
      e.stopPropagation();
      onClick(b);
    });
    return b;
  }

  // ---------------------------------------------------------------- status line

  let statusTimer = null;

  /** Tell the operator something; errors stay until the next message, the rest fade. */
  function say(text, kind = 'info') {
    const line = $('status-line');
    line.textContent = `${fmtTime(Date.now())}  ${text}`;
    line.className = `status-line ${kind}`;
    clearTimeout(statusTimer);
    if (kind === 'error') return;
    statusTimer = setTimeout(() => {
      line.textContent = '';
      line.className = 'status-line';
    }, 10000);
  }

  const report = (error) => say(error && error.message ? error.message : String(error), 'error');

  /** Run a task (a load, an operator's action): its failure goes to the status line, not the console. */
  function run(action) {
    Promise.resolve().then(action).catch(report);
  }

  // ---------------------------------------------------------------- the API and its token

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // The token lives as long as the tab (sessionStorage), not beyond. Storage can be refused (a
  // browser's privacy settings): then the token is asked for again after a reload.
  function storeToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // kept in memory only
    }
  }

  let token = '';
  try {
    token = sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    token = '';
  }
  let tokenWaiters = [];

  const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {});

  /** A call answered 401: show the token field (once, however many calls were refused). */
  function needToken(message) {
    if (token) {
      // The stored token was refused: forget it rather than send it again.
      token = '';
      storeToken('');
    }
    const form = $('token-form');
    if (form.hidden) {
      form.hidden = false;
      $('token-input').focus();
    }
    setConnection('down', 'token needed');
    say(`${message} — enter the admin token above`, 'error');
  }

  /** Resolves when the operator has entered a token. */
  const tokenEntered = () => new Promise((resolve) => tokenWaiters.push(resolve));

  function useToken(event) {
    event.preventDefault();
    const input = $('token-input');
    const value = input.value.trim();
    if (!value) return;
    token = value;
    storeToken(token);
    input.value = '';
    $('token-form').hidden = true;
    say('token set', 'ok');
    const waiters = tokenWaiters;
    tokenWaiters = [];
    waiters.forEach((resolve) => resolve());
    if (view) run(afterNewToken);
  }

  /** A token entered once the page had its view: the same view reloads, another one starts afresh. */
  async function afterNewToken() {
    const me = await api('GET', '/api/whoami');
    if ((me && me.tenant) !== (tenantName || undefined)) {
      window.location.reload();
      return;
    }
    if (view === 'admin') await loadAll();
  }

  /** One admin call: the parsed JSON answer, or an ApiError carrying the hub's own message. */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json', ...authHeaders() };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    let text;
    try {
      response = await fetch(path, { method, headers, body, cache: 'no-store' });
      text = await response.text();
    } catch (e) {
      throw new ApiError(0, `${method} ${path}: the hub does not answer (${e.message})`);
    }
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (response.ok) return data;
    const message = data && typeof data.error === 'string' ? data.error : text || `${response.status} ${response.statusText}`;
    if (response.status === 401) needToken(message);
    throw new ApiError(response.status, message);
  }

  // ---------------------------------------------------------------- the live stream

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function setConnection(state, text) {
    const pill = $('connection');
    pill.className = `pill pill-${state}`;
    pill.textContent = text;
  }

  let streamFrames = 0; // status frames received on all connections

  /**
   * Read the stream for ever: after a drop, reconnect with a pause that doubles while attempts
   * fail and starts afresh once a connection has carried figures.
   */
  async function streamForever() {
    let pause = RECONNECT_MIN_MS;
    let dropped = false;
    for (;;) {
      const before = streamFrames;
      try {
        await streamOnce(dropped);
        say('the live stream ended', 'error');
      } catch (e) {
        if (e.status === 401) {
          await tokenEntered();
          pause = RECONNECT_MIN_MS;
          dropped = false;
          continue;
        }
        report(e);
      }
      dropped = true;
      if (streamFrames > before) pause = RECONNECT_MIN_MS;
      setConnection('wait', `reconnecting in ${Math.round(pause / 1000)} s`);
      await sleep(pause);
      pause = Math.min(pause * 2, RECONNECT_MAX_MS);
      setConnection('wait', 'connecting…');
    }
  }

  /**
   * One connection to `/api/status/stream`, read with fetch (EventSource cannot send the bearer
   * token) and parsed as server-sent events, until it ends or fails. `again`: after a drop.
   */
  async function streamOnce(again) {
    const controller = new AbortController();
    let silence = null;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
    };
    try {
      watch();
      let response;
      try {
        response = await fetch('/api/status/stream', {
          headers: { Accept: 'text/event-stream', ...authHeaders() },
          cache: 'no-store',
          signal: controller.signal,
        });
      } catch (e) {
        const why = controller.signal.aborted ? `nothing for ${STREAM_SILENCE_MS / 1000} s` : e.message;
        throw new ApiError(0, `live stream: the hub does not answer (${why})`);
      }
      if (!response.ok) {
        const text = await response.text().catch(() => '');
        let message = text || response.statusText;
        try {
          message = JSON.parse(text).error || message;
        } catch {
          // not JSON: keep the text
        }
        if (response.status === 401) needToken(message);
        throw new ApiError(response.status, `live stream: ${message}`);
      }
      setConnection('live', 'live');
      if (again) say('live stream reconnected', 'ok');
      // Fill the charts' gap since the last connection.
      run(loadHistory);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (e) {
          const why = controller.signal.aborted ? `nothing for ${STREAM_SILENCE_MS / 1000} s` : e.message;
          throw new ApiError(0, `live stream dropped (${why})`);
        }
        if (chunk.done) break;
        watch();
        // Lines end in \n, \r\n or \r; a \r at the end may be the first half of a \r\n.
        buffer = (buffer + decoder.decode(chunk.value, { stream: true })).replace(/\r\n|\r(?!$)/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (dispatch(frame)) streamFrames += 1;
        }
      }
    } finally {
      clearTimeout(silence);
      controller.abort();
    }
  }

  /** Handle one server-sent event; true if it was a status. */
  function dispatch(frame) {
    let event = 'message';
    const data = [];
    for (const line of frame.split('\n')) {
      if (line === '' || line.startsWith(':')) continue; // a comment: the keep-alive
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0) return false;
    if (event === 'error') {
      say(`live stream: ${data.join(' ')}`, 'error');
      return false;
    }
    if (event !== 'status' && event !== 'message') return false;
    try {
      render(JSON.parse(data.join('\n')));
      return true;
    } catch (e) {
      say(`live stream: a frame could not be shown (${e.message})`, 'error');
      return false;
    }
  }

  // ---------------------------------------------------------------- snapshot

  let latest = null;
  let lastFrameAt = 0;

  async function loadStatus() {
    if (tenantName) renderTenantView(...(await loadTenant()));
    else render(await api('GET', '/api/status'));
  }

  async function loadAll() {
    await Promise.all([loadStatus(), loadHistory()]);
  }

  function render(s) {
    // A snapshot asked for may arrive after a newer one from the stream.
    if (latest && isNumber(latest.at) && isNumber(s.at) && s.at < latest.at) return;
    latest = s;
    lastFrameAt = Date.now();
    const rates = s.rates || {};
    const totals = s.totals || {};
    const latency = s.event_to_action_ms || {};

    setText('fig-events-in', fmtRate(rates.events_in));
    setText('fig-events-out', fmtRate(rates.events_out));
    setText('fig-actions', fmtRate(rates.actions));
    setText('fig-dead-letters', fmtRate(rates.dead_letters));
    $('figure-dead-letters').classList.toggle('alert', rates.dead_letters > 0);
    setTotal('total-events-in', totals.events_in);
    setTotal('total-events-out', totals.events_emitted);
    setTotal('total-actions', totals.actions);
    setTotal('total-dead-letters', totals.dead_letters);
    // The last second when it had actions, else the last minute, so a quiet hub still shows
    // its recent latency.
    const minute = s.event_to_action_ms_1m || {};
    const thisSecond = isNumber(latency.p50) || isNumber(latency.p99);
    const shown = thisSecond ? latency : minute;
    setText('fig-p50', fmtMs(shown.p50));
    if (thisSecond) setText('fig-p99', `p99 ${fmtMs(latency.p99)} ms · 1 min ${fmtMs(minute.p99)} ms`);
    else if (isNumber(minute.p99)) setText('fig-p99', `last minute, p99 ${fmtMs(minute.p99)} ms`);
    else setText('fig-p99', 'no action in the last minute');
    const durable = s.input === 'durable';
    setText('fig-lag', durable ? fmtCount(s.consumer_lag) : '—');
    setText('fig-lag-note', durable ? 'inputs not yet taken' : 'core input: no stream');
    setText('fig-timers', fmtCount(s.timers_pending));
    setText('fig-uptime', fmtUptime(s.uptime_s));
    if (isNumber(s.at) && isNumber(s.uptime_s)) setText('fig-started', `since ${fmtTime(s.at - s.uptime_s * 1000)}`);
    const mode = $('input-mode');
    mode.hidden = !s.input;
    setText('input-mode', `${s.input} input`);
    setText('updated', isNumber(s.at) && s.at > 0 ? `at ${fmtTime(s.at)}` : '');

    addPoints([{
      at: s.at,
      events_in: rates.events_in,
      events_out: rates.events_out,
      p50_ms: latency.p50,
      p99_ms: latency.p99,
      p99_1m_ms: minute.p99,
    }]);
    renderPlugins(s.plugins || []);
    renderReasons(s.dead_letters || {});
    renderDecisions(s.decisions || []);
    renderShards(s.shards || []);
    renderTenants(s.tenants || []);
    lettersMayHaveChanged(s);
  }

  function setTotal(id, n) {
    const el = $(id);
    el.dataset.value = isNumber(n) ? String(n) : '';
    setText(id, fmtCount(n));
  }

  /** The stream is up but silent: say the figures are old rather than show them as current. */
  function watchFreshness() {
    const pill = $('connection');
    if (latest && pill.classList.contains('pill-live') && Date.now() - lastFrameAt > 3000) {
      setConnection('wait', `no update for ${Math.round((Date.now() - lastFrameAt) / 1000)} s`);
    } else if (pill.classList.contains('pill-wait') && Date.now() - lastFrameAt < 1500 && pill.textContent.startsWith('no update')) {
      setConnection('live', 'live');
    }
  }

  // ---------------------------------------------------------------- charts

  let points = []; // oldest first, one per sample: {at, events_in, events_out, p50_ms, p99_ms, p99_1m_ms}
  let charts = null;

  async function loadHistory() {
    const history = await api('GET', '/api/status/history');
    addPoints((history && history.points) || []);
  }

  /** Merge points in (by time, replacing equal ones) and keep the last ten minutes. */
  function addPoints(fresh) {
    const usable = fresh.filter((p) => isNumber(p.at) && p.at > 0);
    if (usable.length === 0) return;
    const last = points.length ? points[points.length - 1].at : -Infinity;
    if (usable.length === 1 && usable[0].at > last) {
      points.push(usable[0]); // the common case: the next live point
    } else {
      const byTime = new Map(points.map((p) => [p.at, p]));
      usable.forEach((p) => byTime.set(p.at, p));
      points = [...byTime.values()].sort((a, b) => a.at - b.at);
    }
    const newest = points[points.length - 1].at;
    const first = points.findIndex((p) => p.at >= newest - HISTORY_MS);
    if (first > 0) points = points.slice(first);
    drawCharts();
  }

  function drawCharts() {
    if (!charts) return;
    const xs = points.map((p) => p.at / 1000);
    const val = (x) => (isNumber(x) ? x : null);
    draw(charts.rates, [xs, points.map((p) => val(p.events_in)), points.map((p) => val(p.events_out))]);
    draw(charts.latency, [
      xs,
      points.map((p) => val(p.p50_ms)),
      points.map((p) => val(p.p99_ms)),
      points.map((p) => val(p.p99_1m_ms)),
    ]);
  }

  /** New data; the legend shows the latest values unless the pointer is on the chart. */
  function draw(chart, data) {
    chart.setData(data);
    if (!(chart.cursor.left >= 0) && data[0].length > 0) chart.setLegend({ idx: data[0].length - 1 });
  }

  /**
   * uPlot hides the points of a dense series and draws only lines, which leaves nothing of a
   * sample between two gaps (a second with actions in a quiet minute): draw those as dots.
   */
  function isolated(u, series, shown) {
    if (shown) return null;
    const ys = u.data[series];
    const idxs = [];
    for (let i = 0; i < ys.length; i += 1) {
      if (ys[i] != null && ys[i - 1] == null && ys[i + 1] == null) idxs.push(i);
    }
    return idxs.length > 0 ? idxs : null;
  }

  /** Tick labels of the time axis: a 24-hour clock, with seconds when ticks are that close. */
  function clockTicks(u, ticks, axis, space, step) {
    const two = (n) => String(n).padStart(2, '0');
    return ticks.map((t) => {
      const d = new Date(t * 1000);
      const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
      return step < 60 ? `${hm}:${two(d.getSeconds())}` : hm;
    });
  }

  function makeCharts() {
    if (typeof window.uPlot !== 'function') {
      say('the chart library did not load: charts are off', 'error');
      return;
    }
    const css = getComputedStyle(document.documentElement);
    const muted = css.getPropertyValue('--muted').trim();
    const line = css.getPropertyValue('--line').trim();
    const axis = { stroke: muted, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
    const line2 = (label, color, format) => ({
      label,
      stroke: color,
      width: 2,
      points: { size: 5, fill: color, filter: isolated },
      value: (u, v) => (v == null ? '—' : format(v)),
    });
    const make = (id, series, format) => {
      const el = $(id);
      const chart = new window.uPlot({
        width: Math.max(el.clientWidth, 300),
        height: 240,
        cursor: { drag: { x: false, y: false, setScale: false } },
        scales: { y: { range: (u, min, max) => [0, isNumber(max) && max > 0 ? max * 1.1 : 1] } },
        axes: [{ ...axis, values: clockTicks }, { ...axis, size: 56, values: (u, ticks) => ticks.map(format) }],
        series: [{ value: (u, v) => (v == null ? '—' : fmtTime(v * 1000)) }, ...series],
      }, [[], ...series.map(() => [])], el);
      // Resize on the next frame, outside the observer's callback: resizing inside it would
      // report "ResizeObserver loop" errors when the chart changes its container's size.
      new ResizeObserver(() => requestAnimationFrame(() => {
        const width = Math.max(el.clientWidth, 300);
        if (width !== chart.width) chart.setSize({ width, height: 240 });
      })).observe(el);
      return chart;
    };
    charts = {
      rates: make('chart-rates', [
        line2('in', '#38bdf8', fmtRate),
        line2('out', '#a78bfa', fmtRate),
      ], fmtRate),
      latency: make('chart-latency', [
        line2('p50', '#34d399', fmtMs),
        line2('p99', '#fbbf24', fmtMs),
        { ...line2('p99, 1 min', '#f87171', fmtMs), width: 1, dash: [6, 4] },
      ], fmtMs),
    };
    drawCharts();
  }

  // ---------------------------------------------------------------- tables

  const rowMaps = new WeakMap();

  /**
   * One row per key in `tbody`, in the order of `items`: new rows from `make`, every row
   * refreshed by `update`. Rows outlive updates, so a click never lands on a replaced node.
   */
  function syncRows(tbody, items, keyOf, make, update) {
    let rows = rowMaps.get(tbody);
    if (!rows) rowMaps.set(tbody, (rows = new Map()));
    const keep = new Set();
    items.forEach((item, i) => {
      const key = keyOf(item);
      keep.add(key);
      let tr = rows.get(key);
      if (!tr) {
        tr = make(item, key);
        rows.set(key, tr);
      }
      update(tr, item);
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    for (const [key, tr] of rows) {
      if (!keep.has(key)) {
        tr.remove();
        rows.delete(key);
      }
    }
  }

  // ---------------------------------------------------------------- plugins

  const plugins = new Map(); // name → the latest status line of the plugin
  const busy = new Set(); // plugins with an action under way

  function renderPlugins(list) {
    plugins.clear();
    list.forEach((p) => plugins.set(p.name, p));
    const sorted = [...list].sort((a, b) => a.name.localeCompare(b.name));
    syncRows($('plugins').tBodies[0], sorted, (p) => p.name, makePluginRow, updatePluginRow);
    $('plugins-empty').hidden = list.length > 0;
  }

  function makePluginRow(p, name) {
    const tr = document.createElement('tr');
    tr.dataset.plugin = name;
    const actions = cell(undefined, 'actions');
    const rollback = button('Rollback', () => run(() => rollbackPlugin(name)));
    rollback.dataset.action = 'rollback';
    const toggle = button('Disable', () => run(() => togglePlugin(name)));
    toggle.dataset.action = 'toggle';
    const config = button('Edit config', () => run(() => editConfig(name)));
    config.dataset.action = 'config';
    const promote = button('Promote', () => run(() => promoteShadow(name)), 'primary');
    promote.dataset.action = 'promote';
    const drop = button('Drop shadow', () => run(() => dropShadow(name)), 'danger');
    drop.dataset.action = 'drop';
    actions.append(rollback, toggle, config, promote, drop);
    tr.append(cell(name), cell('', 'num'), cell(), cell('', 'num'), cell('', 'num'), cell('', 'num'),
      cell('', 'num'), cell('', 'tags'), actions);
    return tr;
  }

  function updatePluginRow(tr, p) {
    const [, version, state, calls, errors, p50, p99, subscribes] = tr.cells;
    version.textContent = `v${p.version}`;
    state.replaceChildren(badge(p.enabled ? 'enabled' : 'disabled', p.enabled ? 'on' : 'off'));
    if (p.quarantined) state.append(badge('quarantined', 'quarantined'));
    // A shadow version: what it would have done differently so far.
    const s = p.shadow;
    if (s) {
      // Without its counts (a tenant's view lists the version alone): just the version.
      const counts = isNumber(s.added) ? `: +${fmtCount(s.added)} −${fmtCount(s.removed)} ~${fmtCount(s.changed)}` : '';
      const shadow = badge(`shadow v${s.version}${counts}`,
        s.quarantined ? 'quarantined' : 'shadow');
      shadow.title = `Outputs the shadow added, removed and changed against v${p.version} `
        + `(${fmtCount(s.shadow)} against ${fmtCount(s.active)}; ${fmtCount(s.failures)} failed calls)`
        + `${s.quarantined ? '; the shadow is quarantined' : ''}. Details: hub plugin show ${p.name}`;
      state.append(shadow);
    }
    calls.textContent = fmtCount(p.calls);
    errors.textContent = fmtCount(p.errors);
    errors.classList.toggle('errors', p.errors > 0);
    p50.textContent = fmtMs(p.p50_ms);
    p99.textContent = fmtMs(p.p99_ms);
    subscribes.textContent = (p.subscribes || []).join(', ');
    const [rollback, toggle, config, promote, drop] = tr.querySelectorAll('button');
    const working = busy.has(p.name);
    promote.hidden = !s;
    drop.hidden = !s;
    promote.disabled = working;
    drop.disabled = working;
    if (s) promote.title = `Make the shadow v${s.version} the active version`;
    rollback.disabled = working || !(p.version > 1);
    rollback.title = p.version > 1 ? `Make the version before v${p.version} active again` : 'No earlier version';
    toggle.disabled = working;
    toggle.textContent = p.enabled ? 'Disable' : 'Enable';
    config.disabled = working;
  }

  function badge(text, kind) {
    const span = document.createElement('span');
    span.className = `badge ${kind}`;
    span.textContent = text;
    return span;
  }

  /** Run a plugin action with its buttons off, and show the fresh state right away. */
  async function pluginAction(name, action) {
    busy.add(name);
    renderPlugins([...plugins.values()]);
    try {
      return await action();
    } finally {
      busy.delete(name);
      await loadStatus().catch(report);
    }
  }

  const liveNote = (change) => (change.live ? '' : ' (not yet live on every shard)');

  async function rollbackPlugin(name) {
    const p = plugins.get(name);
    const from = p ? ` from v${p.version}` : '';
    if (!(await confirmDialog(`Roll back ${name}${from} to its previous version?`, 'Roll back'))) return;
    const change = await pluginAction(name, () => api('POST', `/api/plugins/${enc(name)}/rollback`));
    say(`${name}: rolled back to v${change.version}${liveNote(change)}`, 'ok');
  }

  async function togglePlugin(name) {
    const p = plugins.get(name);
    const enable = p ? !p.enabled : true;
    if (!enable) {
      const ok = await confirmDialog(
        `Disable ${name}? It gets no events until it is enabled again, and its timers that come due are dead-lettered.`,
        'Disable');
      if (!ok) return;
    }
    const change = await pluginAction(name, () => api('POST', `/api/plugins/${enc(name)}/${enable ? 'enable' : 'disable'}`));
    say(`${name}: ${change.enabled ? 'enabled' : 'disabled'} (v${change.version})${liveNote(change)}`, 'ok');
  }

  async function promoteShadow(name) {
    const p = plugins.get(name);
    const version = p && p.shadow ? ` v${p.shadow.version}` : '';
    const ok = await confirmDialog(
      `Make the shadow${version} of ${name} its active version? It carries on with the active version's state; the shadow's own is dropped.`,
      'Promote');
    if (!ok) return;
    const change = await pluginAction(name, () => api('POST', `/api/plugins/${enc(name)}/promote`));
    say(`${name}: v${change.version} promoted from shadow${liveNote(change)}`, 'ok');
  }

  async function dropShadow(name) {
    if (!(await confirmDialog(`Drop the shadow of ${name}, with its state?`, 'Drop'))) return;
    const change = await pluginAction(name, () => api('DELETE', `/api/plugins/${enc(name)}/shadow`));
    say(`${name}: shadow dropped (v${change.version} stays active)${liveNote(change)}`, 'ok');
  }

  async function editConfig(name) {
    const p = plugins.get(name);
    let config = p && p.config;
    if (config === undefined) {
      // Not in the status line (a tenant's view): the active version's, from the plugin itself.
      const detail = await api('GET', `/api/plugins/${enc(name)}`);
      const active = ((detail && detail.versions) || []).find((v) => v.active);
      config = active ? active.config : {};
    }
    const dialog = $('config-dialog');
    dialog.dataset.plugin = name;
    setText('config-title', `Config of ${name}${p ? ` (v${p.version})` : ''}`);
    $('config-text').value = JSON.stringify(config || {}, null, 2);
    $('config-error').hidden = true;
    $('config-save').disabled = false;
    dialog.showModal();
  }

  async function saveConfig() {
    const dialog = $('config-dialog');
    const name = dialog.dataset.plugin;
    const save = $('config-save');
    const error = $('config-error');
    save.disabled = true;
    error.hidden = true;
    try {
      const change = await pluginAction(name, () => api('PUT', `/api/plugins/${enc(name)}/config`, $('config-text').value));
      dialog.close();
      say(`${name}: config saved as v${change.version}${liveNote(change)}`, 'ok');
    } catch (e) {
      // The hub's refusal, word for word: it says what init or the parser did not accept.
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      save.disabled = false;
    }
  }

  // ---------------------------------------------------------------- dead letters

  let letterReason = null; // the reason the recent list is narrowed to, if any
  let lettersSeen = null; // what the list was last loaded for
  let lettersLoading = false;
  let lettersStale = false;
  let reasonCounts = {};

  let reasonsSince = {};

  /** One row per reason: letters kept now (what can be replayed) and dead-lettered since start. */
  function renderReasons(counts) {
    reasonCounts = counts.kept || {};
    // Unknown (null) on a tenant's view: the hub counts dead letters by reason for all tenants.
    reasonsSince = counts.by_reason === null ? null : counts.by_reason || {};
    const names = [...new Set([...Object.keys(reasonCounts), ...Object.keys(reasonsSince || {})])];
    const reasons = names
      .map((reason) => [reason, reasonCounts[reason] || 0, reasonsSince ? reasonsSince[reason] || 0 : null])
      .sort((a, b) => b[1] - a[1] || b[2] - a[2] || a[0].localeCompare(b[0]));
    syncRows($('letter-reasons').tBodies[0], reasons, ([reason]) => reason, makeReasonRow, updateReasonRow);
    $('letter-reasons-empty').hidden = reasons.length > 0;
  }

  function makeReasonRow([reason]) {
    const tr = document.createElement('tr');
    tr.dataset.reason = reason;
    const actions = cell(undefined, 'actions');
    const show = button('Show', () => {
      letterReason = letterReason === reason ? null : reason;
      renderReasons({ kept: reasonCounts, by_reason: reasonsSince });
      run(loadLetters);
    });
    show.dataset.action = 'show';
    const replay = button('Replay all', () => run(() => replayReason(reason)), 'danger');
    replay.dataset.action = 'replay-all';
    actions.append(show, replay);
    tr.append(cell(reason), cell('', 'num'), cell('', 'num'), actions);
    return tr;
  }

  function updateReasonRow(tr, [reason, count, since]) {
    tr.cells[1].textContent = fmtCount(count);
    tr.cells[2].textContent = fmtCount(since);
    tr.classList.toggle('selected', reason === letterReason);
    tr.querySelector('[data-action="show"]').textContent = reason === letterReason ? 'Show all' : 'Show';
    tr.querySelector('[data-action="replay-all"]').disabled = !(count > 0);
  }

  /** Reload the recent list when the counts moved (new letters, or replays). */
  function lettersMayHaveChanged(s) {
    const seen = JSON.stringify([(s.totals || {}).dead_letters, (s.dead_letters || {}).kept]);
    if (seen === lettersSeen) return;
    lettersSeen = seen;
    run(loadLetters);
  }

  /** Load the recent letters; a request while one is under way is served by one more after it. */
  async function loadLetters() {
    if (lettersLoading) {
      lettersStale = true;
      return;
    }
    lettersLoading = true;
    try {
      do {
        lettersStale = false;
        const query = new URLSearchParams({ limit: String(RECENT_LETTERS) });
        if (letterReason) query.set('reason', letterReason);
        renderLetters(await api('GET', `/api/dead-letters?${query}`));
      } while (lettersStale);
    } finally {
      lettersLoading = false;
    }
  }

  function renderLetters(data) {
    const letters = (data && data.letters) || [];
    // A tenant's view has no status frame to count its kept letters by reason: the list's
    // counts (its own letters) are those, when it is not narrowed to one reason.
    if (tenantName && !letterReason) renderReasons({ kept: (data && data.by_reason) || {}, by_reason: null });
    setText('letters-filter', `(${letterReason ? `reason ${letterReason}, ` : ''}${fmtCount(lettersTotal(data, letters))} in all)`);
    syncRows($('letters').tBodies[0], letters, (l) => l.seq, makeLetterRow, updateLetterRow);
    $('letters-empty').hidden = letters.length > 0;
  }

  /** How many letters the list is the head of: its `total`, else its counts by reason. */
  function lettersTotal(data, letters) {
    if (data && isNumber(data.total)) return data.total;
    const byReason = data && data.by_reason;
    if (byReason && typeof byReason === 'object') {
      if (letterReason) return byReason[letterReason] || 0;
      return Object.values(byReason).reduce((sum, n) => sum + n, 0);
    }
    return letters.length;
  }

  function makeLetterRow(letter, seq) {
    const tr = document.createElement('tr');
    tr.dataset.seq = String(seq);
    tr.title = 'Show the whole letter';
    tr.addEventListener('click', () => run(() => inspectLetter(seq)));
    const replay = button('Replay', () => run(() => replayLetter(seq)));
    replay.dataset.action = 'replay';
    const actions = cell(undefined, 'actions');
    actions.append(replay);
    tr.append(cell(), cell(), cell(), cell('', 'detail'), actions);
    return tr;
  }

  function updateLetterRow(tr, l) {
    const [at, reason, plugin, detail] = tr.cells;
    at.textContent = fmtTime(l.at);
    reason.textContent = l.reason;
    plugin.textContent = l.plugin || '—';
    detail.textContent = l.detail;
    detail.title = l.detail;
  }

  async function inspectLetter(seq) {
    const letter = await api('GET', `/api/dead-letters/${enc(seq)}`);
    const fields = $('letter-fields');
    fields.replaceChildren();
    const field = (name, value) => {
      const dt = document.createElement('dt');
      dt.textContent = name;
      const dd = document.createElement('dd');
      dd.textContent = value == null || value === '' ? '—' : String(value);
      fields.append(dt, dd);
    };
    field('seq', letter.seq);
    field('reason', letter.reason);
    field('detail', letter.detail);
    field('plugin', letter.plugin);
    if ('actor' in letter) field('actor', letter.actor);
    field('subject', letter.subject);
    field('event id', letter.event_id);
    field('dead-lettered', isNumber(letter.at) ? `${new Date(letter.at).toISOString()} (${fmtTime(letter.at)})` : '—');
    field('size', isNumber(letter.size) ? `${fmtCount(letter.size)} bytes` : '—');
    const headers = Object.entries(letter.headers || {});
    $('letter-headers').textContent = headers.length ? headers.map(([k, v]) => `${k}: ${v}`).join('\n') : '(none)';
    if (typeof letter.body === 'string') {
      setText('letter-body-title', 'Body');
      $('letter-body').textContent = prettyJson(letter.body);
    } else {
      setText('letter-body-title', 'Body (binary, base64)');
      $('letter-body').textContent = letter.body_base64 || '';
    }
    setText('letter-title', `Dead letter #${letter.seq}`);
    const dialog = $('letter-dialog');
    dialog.dataset.seq = String(letter.seq);
    if (!dialog.open) dialog.showModal();
  }

  /** A JSON body indented for reading; any other text as it is. */
  function prettyJson(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      return text;
    }
  }

  async function replayLetter(seq) {
    const answer = await api('POST', `/api/dead-letters/${enc(seq)}/replay`);
    say(`dead letter #${seq} replayed (${fmtCount(answer && answer.replayed)})`, 'ok');
    await loadLetters();
  }

  async function replayReason(reason) {
    const count = reasonCounts[reason];
    const ok = await confirmDialog(`Replay all ${fmtCount(count)} dead letters of reason “${reason}”?`, 'Replay all');
    if (!ok) return;
    const answer = await api('POST', `/api/dead-letters/replay?${new URLSearchParams({ reason })}`);
    say(`${fmtCount(answer && answer.replayed)} dead letters of reason ${reason} replayed`, 'ok');
    await loadLetters();
  }

  // ---------------------------------------------------------------- decisions and shards

  function renderDecisions(decisions) {
    const totals = new Map();
    decisions.forEach((d) => totals.set(d.category, (totals.get(d.category) || 0) + d.count));
    const sorted = [...decisions].sort((a, b) => a.category.localeCompare(b.category) || b.count - a.count);
    syncRows($('decisions').tBodies[0], sorted, (d) => `${d.category}\u0000${d.outcome}`, () => {
      const tr = document.createElement('tr');
      const bar = document.createElement('div');
      const barCell = cell(undefined, 'bar-cell');
      barCell.append(bar);
      tr.append(cell(), cell(), cell('', 'num'), barCell);
      return tr;
    }, (tr, d) => {
      const [category, outcome, count, share] = tr.cells;
      count.textContent = fmtCount(d.count);
      outcome.textContent = d.outcome;
      const bar = share.firstChild;
      bar.className = `bar ${(/^[a-z_]+/.exec(d.outcome) || [''])[0]}`;
      bar.style.width = `${(100 * d.count) / Math.max(totals.get(d.category), 1)}%`;
      category.dataset.category = d.category;
    });
    // The category once per group.
    let previous = null;
    for (const tr of $('decisions').tBodies[0].rows) {
      const category = tr.cells[0].dataset.category;
      tr.cells[0].textContent = category === previous ? '' : category;
      previous = category;
    }
    $('decisions-empty').hidden = decisions.length > 0;
  }

  function renderShards(shards) {
    const box = $('shards');
    // Against the queue's bound when the hub says it: a full queue holds ingestion back.
    const deepest = Math.max(100, ...shards.map((s) => s.queue_depth));
    const rows = shards.map((s) => {
      const scale = isNumber(s.capacity) && s.capacity > 0 ? s.capacity : deepest;
      const share = Math.min(1, s.queue_depth / scale);
      const row = document.createElement('div');
      row.className = 'shard';
      const track = document.createElement('div');
      track.className = 'track';
      const fill = document.createElement('div');
      fill.className = share >= 0.5 ? 'fill busy' : 'fill';
      fill.style.width = `${100 * share}%`;
      track.append(fill);
      const label = document.createElement('span');
      label.textContent = `shard ${s.shard}`;
      const depth = document.createElement('span');
      depth.textContent = isNumber(s.capacity) ? `${fmtCount(s.queue_depth)} / ${fmtCount(s.capacity)}` : fmtCount(s.queue_depth);
      row.title = 'events waiting / queue capacity';
      row.append(label, track, depth);
      return row;
    });
    box.replaceChildren(...rows);
    if (rows.length === 0) box.textContent = 'No shards reported.';
  }

  /** One row per tenant, once the hub has more than the default one (a tenant's view: its own). */
  function renderTenants(tenants) {
    $('tenants-panel').hidden = tenants.length < 2 && !tenantName;
    const orDash = (v) => (isNumber(v) ? fmtCount(v) : '—');
    syncRows($('tenants').tBodies[0], tenants, (t) => t.name, () => {
      const tr = document.createElement('tr');
      tr.append(cell());
      for (let i = 0; i < 11; i += 1) tr.append(cell('', 'num'));
      return tr;
    }, (tr, t) => {
      const [name, rate, backlog, actions, letters, share, limit, guard, plugins, state, timers, refused] = tr.cells;
      name.textContent = t.name;
      rate.textContent = fmtRate(t.events_in_per_s);
      backlog.textContent = orDash(t.backlog);
      backlog.classList.toggle('alert', t.backlog > 0);
      actions.textContent = fmtCount(t.actions);
      letters.textContent = fmtCount(t.dead_letters);
      share.textContent = fmtCount(t.share);
      limit.textContent = orDash(t.rate);
      guard.textContent = fmtRate(t.read_limit);
      plugins.textContent = usedOf(t.plugins, t.max_plugins, fmtCount);
      state.textContent = usedOf(t.state_bytes, t.max_state_bytes, fmtBytes);
      timers.textContent = usedOf(t.timers, t.max_timers, fmtCount);
      refused.textContent = fmtCount(t.quota_refusals);
      refused.classList.toggle('alert', t.quota_refusals > 0);
    });
  }

  // ---------------------------------------------------------------- a tenant's own view

  let view = null; // 'admin' or 'tenant', once `/api/whoami` has said whose the token is
  let tenantName = null;
  let lastTenantSample = null; // {at, actions, dead_letters}: the previous totals, for rates

  /** Ask whose the token is (a token is asked for on 401; the hub is asked again while it does not answer), then show that view. */
  async function begin() {
    let pause = RECONNECT_MIN_MS;
    for (;;) {
      try {
        const me = await api('GET', '/api/whoami');
        if (me && typeof me.tenant === 'string') {
          view = 'tenant';
          tenantName = me.tenant;
          document.body.classList.add('tenant-view');
          document.title = `hub · ${tenantName}`;
          $('scope').hidden = false;
          setText('scope', `tenant ${tenantName}`);
          $('connection').title = `The figures of tenant ${tenantName}, asked for once a second`;
          setText('fig-timers-note', 'counted with a max_timers quota');
          run(pollTenant);
        } else {
          view = 'admin';
          run(loadAll);
          run(streamForever);
        }
        return;
      } catch (e) {
        if (e.status === 401) {
          await tokenEntered();
          continue;
        }
        report(e);
        setConnection('wait', `again in ${Math.round(pause / 1000)} s`);
        await sleep(pause);
        pause = Math.min(pause * 2, RECONNECT_MAX_MS);
      }
    }
  }

  /** The tenant's figures and the plugins that run for it alone. */
  const loadTenant = () => Promise.all([api('GET', `/api/tenants/${enc(tenantName)}`), api('GET', '/api/plugins')]);

  /** Ask for the tenant's figures once a second, for ever. */
  async function pollTenant() {
    for (;;) {
      try {
        renderTenantView(...(await loadTenant()));
        if (!$('connection').classList.contains('pill-live')) setConnection('live', 'live');
      } catch (e) {
        if (e.status === 401) {
          await tokenEntered();
          continue;
        }
        if (e.status === 503) setConnection('wait', 'no figures yet');
        else {
          report(e);
          setConnection('down', 'no answer');
        }
      }
      await sleep(1000);
    }
  }

  /** Per second since the previous sample, of a total; null for the first sample. */
  function perSecond(now, before, key) {
    if (!before || now.at <= before.at || !isNumber(now[key]) || !isNumber(before[key])) return null;
    return Math.max(0, ((now[key] - before[key]) * 1000) / (now.at - before.at));
  }

  /** The tenant's row (`/api/tenants/{name}`) and its plugins (`/api/plugins`) on the page. */
  function renderTenantView(t, list) {
    const now = { at: Date.now(), actions: t.actions, dead_letters: t.dead_letters };
    const actions = perSecond(now, lastTenantSample, 'actions');
    const letters = perSecond(now, lastTenantSample, 'dead_letters');
    lastTenantSample = now;
    latest = t;
    lastFrameAt = now.at;
    setText('fig-events-in', fmtRate(t.events_in_per_s));
    setTotal('total-events-in', t.events_in);
    setText('fig-actions', fmtRate(actions));
    setTotal('total-actions', t.actions);
    setText('fig-dead-letters', fmtRate(letters));
    $('figure-dead-letters').classList.toggle('alert', letters > 0);
    setTotal('total-dead-letters', t.dead_letters);
    setText('fig-timers', fmtCount(t.timers));
    setText('updated', `at ${fmtTime(now.at)}`);
    addPoints([{ at: now.at, events_in: t.events_in_per_s, events_out: null }]);
    renderPlugins((list || []).map((p) => ({
      name: p.name,
      version: p.active_version,
      enabled: p.enabled,
      quarantined: p.quarantined,
      calls: p.calls,
      errors: p.errors,
      p50_ms: p.latency_p50_ms,
      p99_ms: p.latency_p99_ms,
      subscribes: p.subscribes,
      // The list leaves the config out: the editor asks for it.
      shadow: isNumber(p.shadow_version) ? { version: p.shadow_version } : null,
    })));
    renderTenants([t]);
    lettersMayHaveChanged({ totals: { dead_letters: t.dead_letters } });
  }

  // ---------------------------------------------------------------- dialogs

  /** An in-page confirmation (a native confirm() would block the page's updates). */
  function confirmDialog(text, okLabel) {
    const dialog = $('confirm-dialog');
    const ok = $('confirm-ok');
    setText('confirm-text', text);
    ok.textContent = okLabel;
    return new Promise((resolve) => {
      let answer = false;
      ok.onclick = () => {
        answer = true;
        dialog.close();
      };
      dialog.onclose = () => {
        ok.onclick = null;
        dialog.onclose = null;
        resolve(answer);
      };
      dialog.showModal();
    });
  }

  // ---------------------------------------------------------------- start

  function start() {
    document.addEventListener('click', (e) => {
      const close = e.target.closest('[data-close]');
      if (close) close.closest('dialog').close();
    });
    $('token-form').addEventListener('submit', useToken);
    $('config-save').addEventListener('click', () => run(saveConfig));
    $('letter-replay').addEventListener('click', () => run(async () => {
      const dialog = $('letter-dialog');
      await replayLetter(Number(dialog.dataset.seq));
      dialog.close();
    }));
    makeCharts();
    run(begin);
    setInterval(watchFreshness, 1000);
  }

  start();
})();
