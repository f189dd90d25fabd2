// Phobos web UI: area -> service -> instance graphs drawn by Vizceral 4.9.
//
// The API returns one level at a time (api/views/vizceral.py).  This page nests
// them into one Vizceral traffic tree - the areas view at the root, the open
// area's services inside its node, the open service's instances inside the
// service's node - hands Vizceral the whole tree with updateData() and picks
// the level with setView().  The view (area, service, time, window, metric,
// diff, selection) lives in the URL's query string, so deep links and the
// back button work.
//
// Nothing from the data is ever inserted as HTML: the page builds its DOM
// with textContent, and notice titles that reach Vizceral (which inserts
// them with innerHTML) are escaped here too, whatever the API did.

const API = '/api/v1';
const REFRESH_MS = 10000;

// Node and particle colours by class (the legend in index.html uses the same).
const COLORS = {
  normal: 'rgb(186, 213, 237)',
  area: 'rgb(95, 191, 115)',
  other: 'rgb(91, 155, 213)',
  alert: 'rgb(214, 69, 69)',
  danger: 'rgb(214, 69, 69)',
  warning: 'rgb(240, 185, 73)',
  impact: 'rgb(240, 160, 48)',
  focus: 'rgb(255, 255, 255)',
  new: 'rgb(182, 240, 106)',
  vanished: 'rgb(224, 112, 224)',
  // calls only distributed tracing saw (no TCP connection behind them)
  traced: 'rgb(186, 140, 230)',
};

// Health classes of edges and nodes (api/views/health.py), worst last.
const HEALTH = ['normal', 'warning', 'danger'];

// Provenance of an edge, in the side panel's words.
const SEEN_BY = { tcp: 'TCP', trace: 'traces', both: 'TCP + traces' };

// State visible to tests and benchmarks (read-only for them).
const phobos = window.phobos = {
  ready: false, errors: [], renders: 0, frames: 0, view: [], lastRender: null,
  panel: null, impact: null, diff: null, timeline: null, problems: null, edge: null, tooltip: null,
  tooltipMs: [], state: 'loading',
};

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};

// -- escaping ----------------------------------------------------------------

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
// Notice titles from the API arrive escaped; escape whatever markup is left
// (an already escaped entity is kept, so nothing is escaped twice).
function safeNoticeText(text) {
  return String(text).replace(/&(?!(?:[a-z]+|#\d+|#x[0-9a-f]+);)|[<>"']/gi, (c) => ESC[c]);
}
function safeNotices(list) {
  if (!Array.isArray(list)) return undefined;
  return list.map((n) => {
    const out = { title: safeNoticeText(n.title || ''), severity: n.severity | 0 };
    if (typeof n.link === 'string' && /^https?:\/\//.test(n.link)) out.link = safeNoticeText(n.link);
    return out;
  });
}

// -- URL state ---------------------------------------------------------------

const STATE_KEYS = ['area', 'service', 'at', 'window', 'metric', 'diff', 'sel', 'impact', 'live', 'tz', 'table'];

function readState() {
  const q = new URLSearchParams(location.search);
  const s = {};
  for (const k of STATE_KEYS) {
    const v = q.get(k);
    if (v !== null && v !== '') s[k] = v;
  }
  if (s.service && !s.area) s.area = null; // resolved from the service's summary
  return s;
}

function stateUrl(s) {
  const q = new URLSearchParams();
  for (const k of STATE_KEYS) if (s[k] !== undefined && s[k] !== null && s[k] !== '') q.set(k, s[k]);
  const text = q.toString();
  return location.pathname + (text ? `?${text}` : '');
}

let state = readState();

function navigate(change, { replace = false } = {}) {
  state = { ...state, ...change };
  for (const k of Object.keys(state)) if (state[k] === undefined || state[k] === null) delete state[k];
  const url = stateUrl(state);
  if (url !== location.pathname + location.search) {
    if (replace) history.replaceState(null, '', url);
    else history.pushState(null, '', url);
  }
  return refresh();
}

window.addEventListener('popstate', () => { state = readState(); refresh(); });

// -- API ---------------------------------------------------------------------

async function getJson(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const url = `${API}${path}${q.toString() ? `?${q}` : ''}`;
  let response;
  try {
    response = await fetch(url, { headers: { Accept: 'application/json' } });
  } catch (e) {
    const err = new Error(`the Phobos API does not answer (GET ${API}${path}: ${e.message || e})`);
    err.status = 0;
    throw err;
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const err = new Error(`${(body && body.message) || `${response.status} ${response.statusText}`} (GET ${API}${path})`);
    err.status = response.status;
    throw err;
  }
  return body;
}

const enc = encodeURIComponent;

function viewParams() {
  return { at: atParam(), window: state.window, metric: state.metric };
}

// `at` of the URL; without one the newest data (live: now).
function atParam() {
  if (state.at) return state.at;
  if (state.live) return 'now';
  const tl = phobos.timeline;
  return tl && tl.range ? String(Math.floor(Date.parse(tl.range.last) / 1000)) : 'now';
}

// -- Vizceral ----------------------------------------------------------------

let viz = null;
let applyingView = false;
let lastTree = null;

function initViz() {
  if (!window.Vizceral || !window.Vizceral.default) {
    showMessage('Vizceral is not installed: run `npm ci --prefix static` in the Phobos checkout.');
    return false;
  }
  viz = new window.Vizceral.default($('viz'));
  const traffic = { ...COLORS };
  viz.updateStyles({
    colorTraffic: traffic,
    colorTrafficHighlighted: Object.fromEntries(Object.keys(traffic).map((k) => [k, 'rgb(255, 255, 255)'])),
  });
  viz.setOptions({ showLabels: true, allowDraggingOfNodes: false });
  viz.on('viewChanged', onViewChanged);
  viz.on('objectHighlighted', onHighlighted);
  viz.on('objectHovered', onHovered);
  // Count the frames Vizceral draws (for the benchmark's frames per second);
  // a view whose data could not be refreshed is frozen, not animated as if live.
  const render = viz.render.bind(viz);
  viz.render = (t) => {
    if (phobos.state === 'error') return;
    phobos.frames += 1;
    styleLines();
    render(t);
  };
  viz.animate();
  return true;
}

function path() {
  const p = [];
  if (state.area) p.push(state.area);
  if (state.area && state.service) p.push(state.service);
  return p;
}

// Vizceral changed the view itself (double-click on a node).
function onViewChanged(ev) {
  if (applyingView) return;
  const view = ev.view || [];
  const want = path();
  if (view.length === want.length && view.every((v, i) => v === want[i])) return;
  // A peer service double-clicked in a service's view: open that service in its own area.
  if (view.length > 2) { jumpToService(view[2]); return; }
  // So is a service of another area drawn in the open area's view.
  const areaNode = view.length === 2 && lastTree ? lastTree.nodes.find((n) => n.name === view[0]) : null;
  const home = areaNode && homeArea({ name: view[0], nodes: areaNode.nodes || [] }, view[1], lastTree);
  navigate({ area: home || view[0], service: view[1], sel: view[1] || undefined, impact: undefined });
}

// The area a service drawn in ``area``'s view belongs to when that is another
// area the areas view can open (null otherwise: INTERNET and externals have
// none of their own, an area folded into "N more" cannot be opened).
function homeArea(area, service, areas) {
  const node = (area.nodes || []).find((n) => n.name === service);
  const meta = (node && node.metadata) || {};
  if (meta.kind !== 'service' || !meta.area || meta.area === area.name) return null;
  const home = (areas.nodes || []).find((n) => n.name === meta.area);
  return home && !(home.metadata || {}).grouped && (home.metadata || {}).kind !== 'internet' ? meta.area : null;
}

function onHighlighted(obj) {
  if (applyingView) return;
  if (obj && obj.type === 'connection') { showEdge(obj); return; }
  if (!obj || obj.type !== 'node') {
    if (state.sel && !state.service) select(undefined);
    else if ($('panel').dataset.kind === 'edge') closePanel();
    return;
  }
  const meta = obj.metadata || {};
  if (meta.kind === 'instance' || meta.kind === 'traced') { showInstance(obj.name, meta); return; }
  if (meta.kind === 'instances') { showInstanceGroup(obj.name, meta); return; }
  if (!state.area) { showArea(obj.name, obj); return; }
  select(obj.name);
}

// A click selects a node: the side panel changes, the graph need not be fetched again.
async function select(name) {
  state = { ...state, sel: name };
  if (!name) delete state.sel;
  history.replaceState(null, '', stateUrl(state));
  if (!name) { closePanel(); return; }
  try {
    const summary = await getJson(`/services/${enc(name)}/summary`, viewParams());
    if (state.sel === name) renderPanel(null, summary);
  } catch (err) {
    if (err.status === 404) closePanel(); else showMessage(err.message);
  }
}

// Put a level's nodes and connections into the tree node that opens it.
function nest(level, data, renderer) {
  level.renderer = renderer;
  level.nodes = data.nodes;
  level.connections = data.connections;
  level.maxVolume = data.maxVolume;
  level.layout = 'ltrTree';
  if (data.notices) level.notices = data.notices;
}

function cleanLevel(data, childRenderer) {
  for (const n of data.nodes) {
    n.notices = safeNotices(n.notices);
    if (!n.notices) delete n.notices;
    if (childRenderer !== undefined) {
      if (childRenderer) n.renderer = childRenderer; else delete n.renderer;
    }
    // A double-click opens the node's graph before its data arrives;
    // Vizceral needs a scale for it even while it is empty.
    if (n.renderer && !(n.maxVolume > 0)) n.maxVolume = data.maxVolume;
  }
  for (const c of data.connections) {
    c.notices = safeNotices(c.notices);
    if (!c.notices) delete c.notices;
    paintHealth(c);
  }
  data.notices = safeNotices(data.notices);
  if (!data.notices) delete data.notices;
  return data;
}

// Vizceral colours a connection's particles by the keys of its metrics and
// ignores its class, so an unhealthy edge draws all of its volume in its
// class's colour (its figures stay in its metadata); the line under the
// particles is tinted too (styleLines), since a small edge releases a particle
// only every few seconds.
function paintHealth(c) {
  if (c.class !== 'danger' && c.class !== 'warning') return;
  const m = c.metrics || {};
  const total = Object.values(m).reduce((a, v) => a + (Number(v) || 0), 0);
  c.metrics = { normal: 0, warning: 0, danger: 0, [c.class]: total };
}

const rgbOf = (css) => (css.match(/\d+/g) || [0, 0, 0]).slice(0, 3).map((v) => Number(v) / 255);

// Connections the open diff marks (Vizceral names: "source--target").
const diffLines = { new: new Set(), vanished: new Set() };

// The region renderer draws each connection over a faint grey line of one
// colour for all and with particles of one size whatever the volume.  Before
// each frame: unhealthy lines take their class's colour, new ones green,
// vanished ones a bright dashed line (they carry no traffic, so a faint line
// alone would be invisible), and particles grow with the edge's share of the
// level's largest volume (WebGL lines are one pixel wide, particles are the
// only width there is).  Views are made lazily by Vizceral; each is touched
// only when what it shows changed.
function styleLines() {
  const graph = viz && viz.currentGraph;
  if (!graph || !graph.connections) return;
  const conns = Object.values(graph.connections);
  let max = 0;
  for (const c of conns) if (!diffLines.vanished.has(c.getName())) max = Math.max(max, c.volumeTotal || 0);
  const dpr = window.devicePixelRatio || 1;
  for (const c of conns) {
    const view = c.view;
    const material = view && view.connectionLineMaterial;
    if (!material) continue;
    const name = c.getName();
    let cls = c.class === 'danger' || c.class === 'warning' ? c.class : 'normal';
    if (diffLines.vanished.has(name)) cls = 'vanished';
    else if (cls === 'normal' && diffLines.new.has(name)) cls = 'new';
    if (view.phobosTint !== cls) {
      if (!view.phobosLine) view.phobosLine = view.lineColor;
      const [r, g, b] = cls === 'normal' ? [view.phobosLine.r, view.phobosLine.g, view.phobosLine.b] : rgbOf(COLORS[cls]);
      // Setting lineColor keeps the colour and opacity through Vizceral's own setOpacity calls.
      view.lineColor = cls === 'normal' ? view.phobosLine : { r, g, b, a: cls === 'vanished' ? 0.9 : 0.6 };
      material.color.setRGB(r, g, b);
      material.opacity = view.lineColor.a;
      view.phobosTint = cls;
    }
    dashLine(view, cls === 'vanished');
    const total = cls === 'vanished' ? max * 0.25 : c.volumeTotal || 0;
    const size = Math.round((3 + 6 * Math.sqrt(max > 0 ? Math.min(1, total / max) : 0)) * dpr);
    if (view.phobosSize !== size || view.phobosParticles !== view.particles) {
      const attr = view.particles.geometry.getAttribute('size');
      attr.array.fill(size);
      attr.needsUpdate = true;
      view.phobosSize = size;
      view.phobosParticles = view.particles;
      view.phobosWidth = size;
    }
  }
}

// A dashed line: the connection's two-point line redrawn as segments (three.js
// draws a Line flagged isLineSegments as separate pairs of points).  Vizceral
// moves the line by writing new end points into its geometry; the dashes are
// made again when they are not the ones made here.
function dashLine(view, dashed) {
  const line = view.connectionLine;
  if (!line) return;
  const geom = line.geometry;
  if (!dashed) {
    if (view.phobosDash) {
      const plain = view.connectionLineGeometry;
      [plain.vertices[0], plain.vertices[1]] = [geom.vertices[0],
        geom.vertices[1] === view.phobosDashEnd ? view.phobosEnds[1] : geom.vertices[1]];
      plain.verticesNeedUpdate = true;
      line.geometry = plain;
      line.isLineSegments = false;
      geom.dispose();
      view.phobosDash = null;
    }
    return;
  }
  const v = geom.vertices;
  if (view.phobosDash && view.phobosDash === geom && v[0] === view.phobosDashStart && v[1] === view.phobosDashEnd) return;
  if (v.length < 2) return;
  // Vizceral wrote its own end points into [0] and [1]: they are the line's ends.
  const a = v[0];
  const b = v[1] === view.phobosDashEnd && view.phobosEnds ? view.phobosEnds[1] : v[1];
  const len = Math.hypot(b.x - a.x, b.y - a.y);
  const n = Math.max(2, Math.min(200, Math.round(len / 14)));
  const Vec = a.constructor;
  const points = [];
  for (let i = 0; i < n; i += 1) {
    points.push(new Vec().lerpVectors(a, b, i / n), new Vec().lerpVectors(a, b, (i + 0.55) / n));
  }
  const dash = new geom.constructor();
  dash.vertices = points;
  line.geometry = dash;
  line.isLineSegments = true;
  if (view.phobosDash) view.phobosDash.dispose();
  view.phobosEnds = [a, b];
  view.phobosDash = dash;
  view.phobosDashStart = points[0];
  view.phobosDashEnd = points[1];
}

// -- loading -------------------------------------------------------------------

let refreshing = null;
let pending = false;

function refresh() {
  if (refreshing) { pending = true; return refreshing; }
  refreshing = (async () => {
    try {
      await load();
    } catch (err) {
      showError(err);
    } finally {
      showLoading(false);
      refreshing = null;
      if (pending) { pending = false; refresh(); }
    }
  })();
  return refreshing;
}

async function loadTimeline() {
  const tl = await getJson('/timeline', zoom ? { buckets: 200, from: zoom[0], to: zoom[1] } : { buckets: 200 });
  phobos.timeline = tl;
  return tl;
}

async function load() {
  const started = performance.now();
  phobos.ready = false;
  showLoading(true);
  hideMessage();
  const tl = phobos.timeline && !state.live ? phobos.timeline : await loadTimeline();
  if (!tl.range) { showEmpty(true); phobos.state = 'empty'; phobos.ready = true; return; }
  showEmpty(false);
  $('metric').value = state.metric || 'open';
  $('live').checked = !!state.live;
  $('diff-toggle').checked = !!state.diff;

  if (state.service && !state.area) {
    const summary = await getJson(`/services/${enc(state.service)}/summary`, viewParams());
    state.area = summary.area;
    history.replaceState(null, '', stateUrl(state));
  }
  const params = viewParams();
  const requests = [getJson('/areas', params)];
  requests.push(state.area ? getJson(`/areas/${enc(state.area)}`, params).catch(notFound) : null);
  requests.push(state.service ? getJson(`/services/${enc(state.service)}`, params).catch(notFound) : null);
  requests.push(state.diff ? getJson('/diff', { from: state.diff, to: params.at, window: state.window,
    metric: state.metric, ...diffScope() }) : null);
  requests.push(state.impact ? getJson(`/services/${enc(state.impact)}/impact`, params).catch(notFound) : null);
  const selected = state.sel || state.service;
  requests.push(selected ? getJson(`/services/${enc(selected)}/summary`, params).catch((err) => {
    if (err.status === 404) return null;
    throw err;
  }) : null);
  requests.push(getJson('/problems', { ...params, limit: 10 }));
  // The open service's instances (hosts, zones) group a large instance view.
  requests.push(state.service && state.service !== selected
    ? getJson(`/services/${enc(state.service)}/summary`, params).catch(() => null) : null);
  const [areas, area, service, diff, impact, summary, problems, ownSummary] = await Promise.all(requests);
  clearError();
  // A link naming the wrong area for a service (the breadcrumb would repeat it): go to its own.
  const home = state.service && area ? homeArea(area, state.service, areas) : null;
  if (home) {
    state.area = home;
    history.replaceState(null, '', stateUrl(state));
    return load();
  }

  if (state.area && !area) { state.area = undefined; state.service = undefined; }
  if (state.service && !service) state.service = undefined;

  const tree = cleanLevel(areas, 'region');
  // INTERNET and a group of the long tail are not areas: nothing to open.
  for (const n of tree.nodes) {
    const meta = n.metadata || {};
    if (meta.kind === 'internet' || meta.grouped) { delete n.renderer; delete n.maxVolume; }
  }
  // One constant root name: Vizceral keeps its graphs by name.  The areas are
  // drawn by the region renderer too: the global one is made for a handful of
  // regions whose contents are all loaded, not for thirty areas loaded on demand.
  tree.name = 'phobos';
  tree.renderer = 'region';
  tree.layout = 'ltrTree';
  if (area) {
    const areaNode = tree.nodes.find((n) => n.name === state.area);
    if (areaNode) {
      cleanLevel(area, 'region');
      for (const n of area.nodes) if ((n.metadata || {}).grouped) { delete n.renderer; delete n.maxVolume; }
      nest(areaNode, area, 'region');
      if (service) {
        const svcNode = areaNode.nodes.find((n) => n.name === state.service);
        // Peers can be double-clicked (to open them), instances cannot.
        cleanLevel(service, 'region');
        for (const n of service.nodes) {
          const meta = n.metadata || {};
          if (meta.kind === 'instance' || meta.kind === 'traced' || meta.grouped) { delete n.renderer; delete n.maxVolume; }
        }
        phobos.tableLevel = service;
        phobos.grouped = null;
        const grouped = groupInstances(service, state.service === selected ? summary : ownSummary);
        if (grouped) { phobos.grouped = grouped.groups; }
        if (svcNode) nest(svcNode, grouped ? grouped.data : service, 'region');
        else state.service = undefined;
      }
    } else {
      state.area = undefined; state.service = undefined;
    }
  }
  const level = currentLevel(tree);
  if (!state.service) { phobos.tableLevel = null; phobos.grouped = null; }
  phobos.impact = impact ? markImpact(level, impact) : null;
  phobos.diff = diff ? markDiff(level, diff) : null;
  if (!diff) { diffLines.new.clear(); diffLines.vanished.clear(); }
  lastTree = tree;
  draw(tree);
  renderCrumbs();
  renderDiffPanel(diff);
  // An edge panel belongs to the level it was opened in.
  if ($('panel').dataset.kind === 'edge' && (!phobos.edge || JSON.stringify(phobos.edge.view) !== JSON.stringify(path()))) closePanel();
  renderPanel(impact, summary);
  renderProblems(problems);
  renderLegend(areas.metadata || {});
  phobos.window = (areas.metadata || {}).window || phobos.window;
  // The time the API resolved `at` to (relative and ISO times included).
  if ((areas.metadata || {}).at) phobos.shownAt = toEpoch(areas.metadata.at);
  setupSlider(tl);
  showNoData(areas, tl);
  phobos.levelData = level;
  renderTable();
  phobos.view = path();
  phobos.level = { name: level.name || 'phobos', nodes: level.nodes.map((n) => n.name),
    connections: level.connections.map((c) => [c.source, c.target]) };
  await afterFrames(2);
  phobos.renders += 1;
  phobos.lastRender = { ms: performance.now() - started, at: performance.now(), view: path() };
  phobos.state = 'ready';
  phobos.ready = true;
  if (focusEdge) selectEdge(...focusEdge);
}

// Select a drawn edge as a click would, once Vizceral has laid it out (its
// views are made with the layout, which runs in a worker).
async function selectEdge(source, target) {
  focusEdge = null;
  for (let i = 0; i < 100; i += 1) {
    const graph = viz && viz.currentGraph;
    const conn = graph && graph.connections[`${source}--${target}`];
    if (conn && conn.getView() && phobos.nodePosition(source) && phobos.nodePosition(target)) {
      graph.highlightObject(conn);
      return;
    }
    if (graph && !conn) return;
    await afterFrames(2);
  }
}

function notFound(err) {
  if (err.status === 404) { showMessage(err.message); return null; }
  throw err;
}

function currentLevel(tree) {
  let level = tree;
  for (const name of path()) {
    const next = (level.nodes || []).find((n) => n.name === name);
    if (!next || !next.nodes) break;
    level = next;
  }
  return level;
}

function afterFrames(n) {
  return new Promise((resolve) => {
    const step = () => (n-- <= 0 ? resolve() : requestAnimationFrame(step));
    requestAnimationFrame(step);
  });
}

// Vizceral dims every node that is not a neighbour of the selected (or
// hovered) one; with impact on, the services upstream are what the view is
// about, most of them two or more hops away: they and the edges between them
// stay lit.  Dimming is one method of Vizceral's graph class, wrapped once.
function keepImpactLit(graph) {
  let proto = graph && Object.getPrototypeOf(graph);
  while (proto && !Object.prototype.hasOwnProperty.call(proto, '_applyDimming')) proto = Object.getPrototypeOf(proto);
  if (!proto || proto.phobosApplyDimming) return;
  const apply = proto._applyDimming;
  proto.phobosApplyDimming = apply;
  proto._applyDimming = function applyDimming(dimNodes, dimConnections, applied) {
    const impact = applied && this === viz.currentGraph ? phobos.impact : null;
    if (impact) {
      const lit = new Set([impact.service, ...impact.highlighted]);
      for (const name of Object.keys(dimNodes)) if (lit.has(name)) dimNodes[name] = false;
      for (const name of Object.keys(dimConnections)) {
        const c = this.connections[name];
        if (c && lit.has(nameOf(c.source)) && lit.has(nameOf(c.target))) dimConnections[name] = false;
      }
    }
    return apply.call(this, dimNodes, dimConnections, applied);
  };
}

// Hand Vizceral the whole tree and select the level of the URL.
function draw(tree) {
  if (!viz) return;
  const want = path();
  applyingView = true;
  try {
    viz.updateData(tree);
    keepImpactLit(viz.currentGraph || viz.getGraph(viz.rootGraphName));
    viz.setView(want, state.sel && state.sel !== state.service ? state.sel : undefined);
    // Known Vizceral bug (#89): after updateData the view sometimes stays on a
    // level other than the one asked for (typically back to the root after the
    // data changed). Select the asked-for graph directly when that happens.
    const current = viz.currentGraph ? viz.currentGraph.graphIndex : null;
    if (!current || current.length !== want.length || !current.every((v, i) => v === want[i])) {
      const graph = viz.getNearestValidGraph(want);
      if (graph) viz.selectGraph(graph);
    }
    viz.updateGraph(viz.currentGraph);
  } finally {
    applyingView = false;
  }
}

// -- large instance views --------------------------------------------------------------

// Past this many instances a service's view draws them grouped by host (by
// zone when there are too many hosts): Vizceral lays a hundred nodes out as
// columns of clipped, overlapping labels.  The table view lists them one by one.
const GROUP_INSTANCES_AT = 40;
const GROUP_MAX = 30;
const SUMMED = ['open', 'conn_rate', 'fail_rate', 'connects', 'failures', 'bytes', 'calls', 'call_rate', 'call_errors', 'call_us'];
const worstClass = (classes, fallback) => {
  let worst = -1;
  for (const c of classes) worst = Math.max(worst, HEALTH.indexOf(c));
  return worst > 0 ? HEALTH[worst] : fallback;
};

function groupInstances(data, summary) {
  const instances = data.nodes.filter((n) => (n.metadata || {}).kind === 'instance');
  if (instances.length <= GROUP_INSTANCES_AT || !summary || !Array.isArray(summary.instances)) return null;
  const where = new Map();
  for (const i of summary.instances) if (i.pod) where.set(i.pod, i);
  for (const i of summary.instances) if (!where.has(i.host)) where.set(i.host, i);
  const info = (n) => where.get((n.metadata || {}).instance || n.name);
  const hosts = new Set(instances.map((n) => (info(n) || {}).host).filter(Boolean));
  const by = hosts.size <= GROUP_MAX ? 'host' : 'zone';
  const groupOf = {};
  const members = {};
  for (const n of instances) {
    const i = info(n);
    if (!i) continue;
    const key = by === 'host' ? i.host : i.dc || 'no zone';
    const name = `${by} ${key}`;
    groupOf[n.name] = name;
    (members[name] = members[name] || { key, nodes: [] }).nodes.push(n);
  }
  const nodes = data.nodes.filter((n) => !groupOf[n.name]);
  const short = shortNames(Object.values(members).map((g) => g.key));
  for (const [name, g] of Object.entries(members)) {
    const first = g.nodes[0];
    nodes.push({ name, displayName: labelOf(short.get(g.key), ` ×${g.nodes.length}`), class: worstClass(g.nodes.map((n) => n.class), first.class),
      metadata: { kind: 'instances', by, group: g.key, service: (first.metadata || {}).service,
        members: g.nodes.map((n) => n.name) } });
  }
  const edges = new Map();
  for (const c of data.connections) {
    const source = groupOf[c.source] || c.source;
    const target = groupOf[c.target] || c.target;
    if (source === target) continue; // between instances of one group: inside the node
    const key = `${source}--${target}`;
    let e = edges.get(key);
    if (!e) {
      e = { source, target, metrics: {}, metadata: Object.fromEntries(SUMMED.map((k) => [k, 0])), classes: [], members: [], seen: new Set() };
      edges.set(key, e);
    }
    for (const [k, v] of Object.entries(c.metrics || {})) e.metrics[k] = (e.metrics[k] || 0) + (Number(v) || 0);
    const m = c.metadata || {};
    for (const k of SUMMED) e.metadata[k] += Number(m[k]) || 0;
    if (m.provenance) e.seen.add(m.provenance);
    e.classes.push(c.class || 'normal');
    e.members.push({ source: c.source, target: c.target, open: m.open || 0, conn_rate: m.conn_rate || 0,
      connects: m.connects || 0, failures: m.failures || 0, failure_ratio: m.failure_ratio || 0, class: c.class || 'normal' });
  }
  const connections = [...edges.values()].map((e) => {
    const meta = e.metadata;
    meta.failure_ratio = meta.connects ? meta.failures / meta.connects : 0;
    meta.provenance = e.seen.size > 1 || e.seen.has('both') ? 'both' : [...e.seen][0] || 'tcp';
    meta.members = e.members.sort((a, b) => b.open - a.open || b.connects - a.connects);
    return { source: e.source, target: e.target, class: worstClass(e.classes, 'normal'), metrics: e.metrics, metadata: meta };
  });
  return { data: { ...data, nodes, connections }, groups: { by, count: Object.keys(members).length, instances: instances.length } };
}

// Names without the leading words they all share ("k8s-dc1-node-007" and
// "k8s-dc2-node-001" read as "dc1-node-007", "dc2-node-001").
function shortNames(names) {
  const parts = names.map((n) => String(n).split('-'));
  let common = 0;
  while (names.length > 1 && parts.every((p) => p.length > common + 1 && p[common] === parts[0][common])) common += 1;
  return new Map(names.map((n, i) => [n, parts[i].slice(common).join('-')]));
}

// Vizceral cuts labels longer than 18 characters in the middle; keep the end,
// where hosts differ, and the count.
function labelOf(name, suffix) {
  const room = 18 - suffix.length;
  return `${name.length > room ? `…${name.slice(-(room - 1))}` : name}${suffix}`;
}

// A group of instances: who they are and their traffic, one line each.
function showInstanceGroup(name, meta) {
  const panel = $('panel');
  const body = $('panel-body');
  body.replaceChildren();
  panel.dataset.kind = 'instances';
  panel.hidden = false;
  body.append(el('h2', { id: 'panel-title', text: `${meta.by} ${meta.group}` }));
  body.append(el('div', { class: 'meta', text: `${meta.members.length} instances of ${meta.service || ''}` }));
  const level = phobos.tableLevel || { connections: [] };
  const rows = meta.members.map((m) => {
    let open = 0; let connects = 0; let failures = 0;
    for (const c of level.connections) {
      if (c.source !== m && c.target !== m) continue;
      const x = c.metadata || {};
      open += x.open || 0; connects += x.connects || 0; failures += x.failures || 0;
    }
    return [m, open, connects ? `${pct(failures / connects)} of ${connects}` : ''];
  });
  body.append(table(['instance', 'open', 'failed'], rows));
  body.lastChild.id = 'group-instances';
}

// -- impact and diff -----------------------------------------------------------

function markImpact(level, impact) {
  const upstream = new Set(impact.upstream.map((u) => u.name));
  const areas = new Set(impact.areas.map((a) => a.name));
  const highlighted = [];
  for (const n of level.nodes) {
    const meta = n.metadata || {};
    const hit = state.area ? (upstream.has(n.name) || (meta.service && upstream.has(meta.service)))
      : areas.has(n.name);
    if (n.name === impact.service) n.class = 'focus';
    else if (hit && n.class !== 'alert' && n.class !== 'danger') { n.class = 'impact'; highlighted.push(n.name); }
    else if (hit) highlighted.push(n.name);
  }
  return { service: impact.service, upstream: [...upstream], areas: impact.areas.map((a) => a.name),
    processes: (impact.processes || []).map((p) => p.name), highlighted };
}

// The diff of the open view: the areas view compares area edges, an area's
// view the edges with an end in the area, a service's view the service's.
function diffScope() {
  if (state.service) return { service: state.service };
  if (state.area) return { area: state.area };
  return { by: 'area' };
}

function markDiff(level, diff) {
  const key = (s, t) => `${s}\u0000${t}`;
  const added = new Set(diff.new.map((e) => key(e.source, e.target)));
  const names = new Set(level.nodes.map((n) => n.name));
  // Diffs are between services; in a service's view its instances stand for it.
  const serviceOf = {};
  for (const n of level.nodes) {
    const meta = n.metadata || {};
    serviceOf[n.name] = (meta.kind === 'instance' || meta.kind === 'traced' || meta.kind === 'instances') && meta.service
      ? meta.service : n.name;
  }
  diffLines.new.clear();
  diffLines.vanished.clear();
  const highlighted = [];
  for (const c of level.connections) {
    if (added.has(key(serviceOf[c.source], serviceOf[c.target]))) {
      const m = c.metrics || {};
      // Green particles at the edge's own volume (a floor keeps a tiny one
      // moving); its line is green too (styleLines).
      const volume = (m.normal || 0) + (m.warning || 0);
      c.metrics = { new: Math.max(volume, (level.maxVolume || 1) * 0.02), danger: m.danger || 0 };
      // ... and carries a marker: Vizceral draws a connection's notices on it.
      c.notices = [...(c.notices || []), { title: safeNoticeText(`new since ${diff.meta.from}`), severity: 0 }];
      diffLines.new.add(`${c.source}--${c.target}`);
      highlighted.push([c.source, c.target]);
    }
  }
  const dimmed = [];
  for (const e of diff.vanished) {
    if (names.has(e.source) && names.has(e.target)
        && !level.connections.some((c) => c.source === e.source && c.target === e.target)) {
      // Particles of what it carried before, so its size shows; the dashed
      // line says it is gone.
      level.connections.push({ source: e.source, target: e.target, class: 'vanished',
        metrics: { vanished: Math.max(e.before || 0, (level.maxVolume || 1) * 0.02) },
        metadata: { vanished: true, before: e.before },
        notices: [{ title: safeNoticeText(`vanished since ${diff.meta.from} (was ${fmt(e.before)})`), severity: 0 }] });
      diffLines.vanished.add(`${e.source}--${e.target}`);
      dimmed.push([e.source, e.target]);
    }
  }
  return { new: diff.new.map((e) => [e.source, e.target]), vanished: diff.vanished.map((e) => [e.source, e.target]),
    changed: diff.changed.map((e) => [e.source, e.target]), highlighted, dimmed,
    ranked: (diff.ranked || []).map((e) => [e.kind, e.source, e.target, e.delta]), scope: diff.meta };
}

// -- DOM: breadcrumb, panel, diff list ---------------------------------------------

function renderCrumbs() {
  const nav = $('crumbs');
  nav.replaceChildren();
  const link = (text, change) => el('a', { href: stateUrl({ ...state, ...change }), text,
    onclick: (e) => { e.preventDefault(); navigate(change); } });
  nav.append(link('All areas', { area: undefined, service: undefined, sel: undefined, impact: undefined }));
  if (state.area) {
    nav.append(el('span', { class: 'sep', text: '›' }));
    nav.append(link(state.area, { service: undefined, sel: undefined }));
  }
  if (state.service) {
    nav.append(el('span', { class: 'sep', text: '›' }));
    nav.append(el('span', { class: 'current', text: state.service }));
  }
}

const fmt = (v, digits = 2) => (typeof v === 'number' ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(digits)) : String(v ?? ''));
const pct = (v) => `${((v || 0) * 100).toFixed(1)}%`;

function table(headers, rows) {
  const t = el('table', {}, el('tr', {}, ...headers.map((h) => el('th', { text: h }))));
  for (const r of rows) {
    t.append(el('tr', {}, ...r.map((c) => (c instanceof Node ? el('td', {}, c)
      : el('td', { class: typeof c === 'number' ? 'num' : '', text: typeof c === 'number' ? fmt(c) : c })))));
  }
  return t;
}

function serviceLink(name) {
  return el('a', { href: '#', text: name, onclick: (e) => { e.preventDefault(); jumpToService(name); } });
}

function renderPanel(impact, summary) {
  const name = state.sel || state.service;
  const panel = $('panel');
  if (!name || !state.area) { if (!panel.dataset.kind || panel.dataset.kind === 'service') closePanel(); return; }
  if (!summary) { closePanel(); return; }
  phobos.panel = summary;
  const body = $('panel-body');
  body.replaceChildren();
  panel.dataset.kind = 'service';
  panel.hidden = false;
  body.append(el('h2', { id: 'panel-title', text: summary.service }));
  const cat = summary.catalog || {};
  body.append(el('div', { class: 'meta', text: `area ${summary.area}${cat.owner ? ` · owner ${cat.owner}` : ''}`
    + `${cat.tier !== undefined && cat.tier !== null ? ` · tier ${cat.tier}` : ''}` }));
  if (cat.description) body.append(el('p', { text: cat.description }));
  body.append(el('div', { class: 'meta', id: 'panel-seen',
    text: `first seen ${storeTimeText(summary.first_seen)} · last seen ${storeTimeText(summary.last_seen)}` }));
  const buttons = el('div');
  if (state.service !== summary.service) {
    buttons.append(el('button', { type: 'button', id: 'open-service', text: 'Instances',
      onclick: () => navigate({ service: summary.service, sel: summary.service }) }));
  }
  buttons.append(el('button', { type: 'button', id: 'impact-button', class: state.impact === summary.service ? 'on' : '',
    text: state.impact === summary.service ? 'Impact: on' : 'Impact',
    onclick: () => navigate({ impact: state.impact === summary.service ? undefined : summary.service }) }));
  body.append(buttons);

  if (impact && state.impact === summary.service) {
    body.append(el('h3', { text: 'Impact: business areas affected' }));
    body.append(el('ul', { id: 'impact-areas' }, ...impact.areas.map((a) =>
      el('li', { text: `${a.name} (${a.services} services)` }))));
    if (impact.processes && impact.processes.length) {
      body.append(el('h3', { text: 'Business processes' }));
      body.append(el('ul', {}, ...impact.processes.map((p) => el('li', { text: `${p.name} via ${p.via.join(', ')}` }))));
    }
    body.append(el('div', { class: 'meta', text: `${impact.upstream.length} services upstream depend on it` }));
  }

  if (summary.alerts && summary.alerts.length) {
    body.append(el('h3', { class: 'bad', text: `Alerts (${summary.alerts.length})` }));
    body.append(el('ul', { id: 'panel-alerts' }, ...summary.alerts.map((a) =>
      el('li', { class: 'bad', text: `${a.alertname}${a.summary ? `: ${a.summary}` : ''}${a.severity ? ` [${a.severity}]` : ''}` }))));
  }
  const insts = summary.instances || [];
  body.append(el('h3', { text: `Instances (${insts.length})` }));
  body.append(table(['host', 'dc', 'ips', 'ports', 'last seen'], insts.map((i) =>
    [i.pod ? `${i.host} / ${i.pod}` : i.host, i.dc || '', (i.ips || []).join(' '), (i.ports || []).join(' '),
      storeTimeText(i.last_seen)])));
  body.lastChild.id = 'panel-instances';
  for (const [dir, title] of [['inbound', 'Inbound (who depends on it)'], ['outbound', 'Outbound (what it depends on)']]) {
    const deps = summary[dir] || [];
    body.append(el('h3', { text: `${title} (${deps.length})` }));
    body.append(table(['service', 'area', 'open', 'new/s', 'failed', 'calls/s', 'call errors', 'seen by'],
      deps.map((d) => [d.kind === 'service' ? serviceLink(d.name) : d.name, d.area || '', d.open, d.conn_rate,
        pct(d.failure_ratio), d.call_rate || 0, d.calls ? pct(d.call_errors / d.calls) : '', SEEN_BY[d.provenance] || ''])));
    body.lastChild.id = `panel-${dir}`;
  }
  if (summary.links && summary.links.length) {
    body.append(el('h3', { text: 'Links' }));
    const ul = el('ul', { id: 'panel-links' });
    for (const l of summary.links) {
      const li = el('li');
      if (typeof l.url === 'string' && /^https?:\/\//i.test(l.url)) {
        li.append(el('a', { href: l.url, target: '_blank', rel: 'noopener noreferrer', text: l.title || l.url }));
      } else {
        li.append(el('span', { text: l.title || l.url || '' }));
      }
      li.append(el('span', { class: 'meta', text: ` ${l.kind || ''}${l.inherited_from ? ` (area ${l.inherited_from})` : ''}` }));
      ul.append(li);
    }
    body.append(ul);
  }
  if (summary.processes && summary.processes.length) {
    body.append(el('h3', { text: 'Business processes' }));
    body.append(el('ul', {}, ...summary.processes.map((p) => el('li', { text: p }))));
  }
}

function showArea(name, obj) {
  const panel = $('panel');
  const body = $('panel-body');
  body.replaceChildren();
  panel.dataset.kind = 'area';
  panel.hidden = false;
  body.append(el('h2', { id: 'panel-title', text: obj.displayName || name }));
  const meta = obj.metadata || {};
  body.append(el('div', { class: 'meta', text: `${meta.kind || 'area'} · internal traffic ${fmt(meta.internal || 0)}` }));
  body.append(el('button', { type: 'button', text: 'Open area', onclick: () => navigate({ area: name, sel: undefined }) }));
}

function showInstance(name, meta) {
  const panel = $('panel');
  const body = $('panel-body');
  const inst = (phobos.panel && phobos.panel.instances || []).find((i) => i.host === meta.instance || i.pod === meta.instance);
  body.replaceChildren();
  panel.dataset.kind = 'instance';
  panel.hidden = false;
  body.append(el('h2', { id: 'panel-title', text: meta.instance || name }));
  body.append(el('div', { class: 'meta', text: meta.kind === 'traced'
    ? `calls of ${meta.service || ''} that traces saw (a span does not say which instance made it)`
    : `instance of ${meta.service || ''}` }));
  if (inst) {
    body.append(table(['', ''], [['dc', inst.dc || ''], ['ips', (inst.ips || []).join(' ')],
      ['ports', (inst.ports || []).join(' ')], ['pids', (inst.pids || []).join(' ')],
      ['first seen', storeTimeText(inst.first_seen)], ['last seen', storeTimeText(inst.last_seen)]]));
  }
  // Its edges in the level (instance by instance when the map groups them): what it calls and what calls it.
  const level = phobos.tableLevel || phobos.levelData || { connections: [] };
  const rows = [];
  for (const c of level.connections) {
    if (c.source !== name && c.target !== name) continue;
    const m = c.metadata || {};
    rows.push([c.source === name ? `→ ${c.target}` : `← ${c.source}`, m.open || 0, m.conn_rate || 0,
      m.connects ? `${pct(m.failure_ratio)} of ${m.connects}` : '']);
  }
  body.append(el('h3', { text: `Connections (${rows.length})` }));
  body.append(table(['peer', 'open', 'new/s', 'failed'], rows));
  body.lastChild.id = 'instance-connections';
  const alerts = (phobos.panel && phobos.panel.alerts) || [];
  if (alerts.length) {
    body.append(el('h3', { class: 'bad', text: `Alerts of ${meta.service} (${alerts.length})` }));
    body.append(el('ul', { id: 'instance-alerts' }, ...alerts.map((a) =>
      el('li', { class: 'bad', text: `${a.alertname}${a.summary ? `: ${a.summary}` : ''}` }))));
  }
  body.append(el('button', { type: 'button', text: `Back to ${meta.service || 'service'}`,
    onclick: () => renderPanel(null, phobos.panel) }));
}

// -- inspecting an edge ------------------------------------------------------------

const nameOf = (obj) => (obj && obj.getName ? obj.getName() : obj && obj.name);
const bytesText = (v) => {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let x = Number(v) || 0;
  let i = 0;
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i += 1; }
  return `${i ? x.toFixed(1) : x.toFixed(0)} ${units[i]}`;
};

const msText = (v) => (v === null || v === undefined ? '–' : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(v < 10 ? 2 : 0)} ms`);
// What made an edge unhealthy (api/views/health.py assess).
const REASONS = { failures: 'failed connects', handshake: 'slow handshakes', retransmits: 'retransmits' };

// The figures of an edge, from what the API sent in its metadata: one list for
// the tooltip and the panel, so both say the same.
function edgeFigures(meta) {
  const out = [
    ['open', fmt(meta.open || 0)],
    ['new/s', fmt(meta.conn_rate || 0, 3)],
    ['failed', `${pct(meta.failure_ratio)} (${meta.failures || 0} of ${meta.connects || 0})`],
    ['bytes', bytesText(meta.bytes)],
    ['seen by', SEEN_BY[meta.provenance] || meta.provenance || ''],
  ];
  // Health beyond failures, where the tracer measured it (older tracers send none).
  if (meta.handshakes) {
    out.push(['handshake', `p50 ${msText(meta.handshake_p50_ms)}, p95 ${msText(meta.handshake_p95_ms)} `
      + `(${meta.handshakes} timed)`]);
  }
  if (meta.retransmits) {
    out.push(['retransmits', `${meta.retransmits} (${pct(meta.retransmit_ratio)} of segments)`]);
  }
  if (meta.aborts) out.push(['aborted', `${meta.aborts} (reset or timed out)`]);
  if ((meta.reasons || []).length) out.push(['why', meta.reasons.map((r) => REASONS[r] || r).join(', ')]);
  if (meta.calls) {
    out.push(['calls/s', fmt(meta.call_rate || 0, 3)]);
    out.push(['call errors', `${pct(meta.call_errors / meta.calls)} (${meta.call_errors} of ${meta.calls})`]);
  }
  const w = meta.worst_pair;
  if (w) out.push(['worst pair', `${w.source} → ${w.target}: ${pct(w.failure_ratio)} (${w.failures} of ${w.connects})`]);
  return out;
}

function reverseOf(conn) {
  const graph = viz && viz.currentGraph;
  return graph && graph.connections ? graph.connections[`${nameOf(conn.target)}--${nameOf(conn.source)}`] : undefined;
}

function edgeOf(conn) {
  return { source: nameOf(conn.source), target: nameOf(conn.target), cls: conn.class || 'normal',
    meta: conn.metadata || {} };
}

let pairsSeq = 0;

async function showEdge(conn) {
  const edge = edgeOf(conn);
  const panel = $('panel');
  const body = $('panel-body');
  body.replaceChildren();
  panel.dataset.kind = 'edge';
  panel.hidden = false;
  body.append(el('h2', { id: 'panel-title', text: `${edge.source} → ${edge.target}` }));
  body.append(el('div', { class: `meta health-${edge.cls}`, id: 'edge-class',
    text: { danger: 'failing', warning: 'degraded', normal: 'healthy' }[edge.cls] || edge.cls }));
  body.append(table(['', ''], edgeFigures(edge.meta)));
  body.lastChild.id = 'edge-figures';
  const back = reverseOf(conn);
  if (back) {
    const other = edgeOf(back);
    body.append(el('h3', { text: 'The other way' }));
    body.append(el('button', { type: 'button', id: 'edge-reverse', text: `${other.source} → ${other.target}`,
      onclick: () => showEdge(back) }));
  }
  phobos.edge = { ...edge, figures: edgeFigures(edge.meta), pairs: null, series: null, view: path() };
  const seq = ++pairsSeq;
  showSeries(conn, edge, body, seq);
  // The pairs behind the edge: services behind an area edge, instances behind a service edge;
  // a service's own view already draws instances.
  if (edge.meta.members) {
    body.append(el('h3', { text: `Instance pairs (${edge.meta.members.length})` }));
    const t = table(['client', 'server', 'open', 'new/s', 'failed'], edge.meta.members.map((pr) => [pr.source, pr.target,
      pr.open, pr.conn_rate, pr.connects ? `${pct(pr.failure_ratio)} of ${pr.connects}` : '']));
    for (const [i, pr] of edge.meta.members.entries()) t.rows[i + 1].className = `health-${pr.class}`;
    t.id = 'edge-pairs';
    body.append(t);
    return;
  }
  const level = !state.area ? 'areas' : (!state.service ? 'area' : null);
  if (!level) return;
  const heading = el('h3', { text: level === 'areas' ? 'Service pairs' : 'Instance pairs' });
  const box = el('div', { id: 'edge-pairs', class: 'meta', text: 'loading…' });
  body.append(heading, box);
  try {
    const out = await getJson('/edges', { source: edge.source, target: edge.target, level, ...viewParams() });
    if (seq !== pairsSeq || !phobos.edge) return;
    phobos.edge.pairs = out.pairs;
    heading.textContent = `${heading.textContent} (${out.count})`;
    const t = table(['client', 'server', 'open', 'new/s', 'failed'], out.pairs.map((pr) => [pr.source, pr.target,
      pr.open, pr.conn_rate, pr.connects ? `${pct(pr.failure_ratio)} of ${pr.connects}` : '']));
    for (const [i, pr] of out.pairs.entries()) t.rows[i + 1].className = `health-${pr.class}`;
    t.id = 'edge-pairs';
    box.replaceWith(t);
  } catch (err) {
    if (seq === pairsSeq) box.textContent = `pairs not available: ${err.message}`;
  }
}

// The edge's connects and failures per minute over the hour before the time shown,
// so a failing edge says whether it began failing a minute ago or long before.
// In a service's view the API names an instance by itself (the node's name may
// carry the service to tell it from a peer); a group of nodes has no series.
function seriesQuery(conn, edge) {
  // "N more" stands for many nodes, each with its own series.
  if ([conn.source, conn.target].some((n) => ((n && n.metadata) || {}).grouped)) return null;
  if (!state.area) return { level: 'areas', source: edge.source, target: edge.target };
  if (!state.service) return { level: 'area', source: edge.source, target: edge.target };
  const ends = [conn.source, conn.target].map((n) => {
    const meta = (n && n.metadata) || {};
    if (meta.kind === 'instances' || meta.kind === 'traced') return null;
    return meta.kind === 'instance' ? meta.instance || nameOf(n) : nameOf(n);
  });
  if (ends.includes(null)) return null;
  return { level: 'service', service: state.service, source: ends[0], target: ends[1] };
}

async function showSeries(conn, edge, body, seq) {
  const q = seriesQuery(conn, edge);
  if (!q || edge.meta.vanished) return;
  const heading = el('h3', { text: 'Last hour, per minute' });
  const box = el('div', { id: 'edge-series', class: 'meta', text: 'loading…' });
  body.append(heading, box);
  try {
    const out = await getJson('/edges/series', { ...q, ...viewParams() });
    if (seq !== pairsSeq || !phobos.edge) return;
    phobos.edge.series = out;
    box.replaceChildren(sparkline(out));
    box.append(el('div', { class: 'spark-legend', text: `${out.totals.connects} connects, `
      + `${out.totals.failures} failed (${pct(out.totals.connects ? out.totals.failures / out.totals.connects : 0)}) `
      + `from ${timeText(toEpoch(out.from), { seconds: false, date: false })} `
      + `to ${timeText(toEpoch(out.at), { seconds: false })}` }));
  } catch (err) {
    if (seq === pairsSeq) box.textContent = `per-minute figures not available: ${err.message}`;
  }
}

// Bars of connects per minute, their failed part red on top of them, a line at the time shown.
function sparkline(out) {
  const W = 340;
  const H = 56;
  const pts = out.points;
  const max = Math.max(1, ...pts.map((pt) => pt.connects));
  const bw = W / pts.length;
  const svg = svgEl('svg', { id: 'spark', viewBox: `0 0 ${W} ${H + 12}`, width: W, height: H + 12, role: 'img',
    'aria-label': `connects per minute, at most ${max}; failed connects in red` });
  pts.forEach((pt, i) => {
    const x = i * bw;
    const title = `${timeText(toEpoch(pt.t), { seconds: false })}: ${pt.connects} connects, ${pt.failures} failed, ${fmt(pt.open)} open`;
    const g = svgEl('g', { class: 'minute', 'data-t': pt.t, 'data-connects': String(pt.connects),
      'data-failures': String(pt.failures) }, svgEl('title', {}, title));
    const h = (pt.connects / max) * H;
    if (pt.connects) g.append(svgEl('rect', { class: 'bar', x, y: H - h, width: Math.max(1, bw - 1), height: h }));
    if (pt.failures) {
      const fh = Math.max(1.5, (pt.failures / max) * H);
      g.append(svgEl('rect', { class: 'bar failed', x, y: H - fh, width: Math.max(1, bw - 1), height: fh }));
    }
    // The whole column answers the pointer, not only its bar.
    g.append(svgEl('rect', { class: 'hit', x, y: 0, width: bw, height: H }));
    svg.append(g);
  });
  svg.append(svgEl('line', { class: 'base', x1: 0, x2: W, y1: H + 0.5, y2: H + 0.5 }));
  const at = toEpoch(out.at);
  const from = toEpoch(out.from);
  const ax = Math.min(W - 1, ((at - from) / (toEpoch(out.to) - from)) * W);
  svg.append(svgEl('line', { class: 'at', x1: ax, x2: ax, y1: 0, y2: H + 4 }));
  svg.append(svgEl('text', { x: 0, y: H + 11 }, `−${Math.round((at - from) / 60)} min`));
  svg.append(svgEl('text', { x: W, y: H + 11, 'text-anchor': 'end' }, `max ${max}/min`));
  return svg;
}

// Hover: a tooltip with the edge's figures (or a node's health) next to the pointer.
let pointer = { x: 0, y: 0, t: 0 };
let hovered = null;

function onHovered(obj) {
  if (!obj || (obj.type !== 'connection' && obj.type !== 'node')) { hideTooltip(); return; }
  showTooltip(obj);
}

function showTooltip(obj) {
  const tip = $('tooltip');
  hovered = obj;
  tip.replaceChildren();
  if (obj.type === 'connection') {
    const edge = edgeOf(obj);
    tip.append(el('strong', { class: `health-${edge.cls}`, text: `${edge.source} → ${edge.target}` }));
    const figures = edgeFigures(edge.meta);
    tip.append(table(['', ''], figures));
    phobos.tooltip = { kind: 'edge', source: edge.source, target: edge.target, cls: edge.cls, figures };
    // Both directions of a pair are drawn on one line: say what the other one carries too.
    const back = reverseOf(obj);
    if (back) {
      const other = edgeOf(back);
      tip.append(el('strong', { class: `health-${other.cls}`, text: `${other.source} → ${other.target}` }));
      tip.append(table(['', ''], edgeFigures(other.meta)));
    }
  } else {
    const meta = obj.metadata || {};
    tip.append(el('strong', { class: `health-${meta.health || 'normal'}`, text: obj.displayName || nameOf(obj) }));
    const line = meta.health && meta.health !== 'normal'
      ? `${meta.health === 'danger' ? 'failing' : 'degraded'}: what it serves fails` : 'healthy';
    tip.append(el('div', { text: line }));
    phobos.tooltip = { kind: 'node', name: nameOf(obj), health: meta.health || 'normal' };
  }
  const r = $('stage').getBoundingClientRect();
  tip.style.left = `${Math.min(pointer.x - r.left + 14, r.width - 260)}px`;
  tip.style.top = `${Math.max(pointer.y - r.top + 14, 0)}px`;
  tip.hidden = false;
  if (pointer.t) phobos.tooltipMs.push(performance.now() - pointer.t);
}

function hideTooltip() {
  $('tooltip').hidden = true;
  hovered = null;
  phobos.tooltip = null;
}

$('viz').addEventListener('mousemove', (e) => {
  pointer = { x: e.clientX, y: e.clientY, t: performance.now() };
  // Vizceral says when the pointer reaches an object, not when it leaves one,
  // and says nothing while another object is selected: ask it after its own handler.
  setTimeout(() => {
    const graph = viz && viz.currentGraph;
    const now = graph && graph.getIntersectedObject ? graph.getIntersectedObject() : undefined;
    if (!now) { if (hovered) hideTooltip(); return; }
    if (now !== hovered && graph.highlightedObject) showTooltip(now);
  }, 0);
});
$('viz').addEventListener('mouseleave', hideTooltip);

// -- the problems list --------------------------------------------------------------

let focusEdge = null;
let problemsOpen = true;

function renderProblems(problems) {
  phobos.problems = problems;
  const box = $('problems');
  if (!problems) { box.hidden = true; return; }
  box.hidden = false;
  const list = $('problems-list');
  list.replaceChildren();
  const n = problems.services.length + problems.edges.length;
  $('problems-count').textContent = n ? `(${problems.counts.services} services, ${problems.counts.edges} edges)` : '';
  $('problems-toggle').textContent = problemsOpen ? '−' : '+';
  list.hidden = !problemsOpen;
  box.classList.toggle('bad', problems.services.some((sv) => sv.class === 'danger' || sv.alerts));
  if (!n) {
    const m = problems.meta;
    list.append(el('div', { class: 'meta', id: 'problems-none',
      text: `No problems: no pair with ${pct(m.warning_ratio)} or more of its connects failed (at least ${m.min_connects}), no alerts.` }));
    return;
  }
  if (problems.services.length) {
    const ul = el('ul', { id: 'problems-services' });
    for (const sv of problems.services) {
      const what = sv.connects ? `${pct(sv.failure_ratio)} of ${sv.connects} connects failed` : '';
      const who = sv.failing_clients.length ? ` · ${sv.failing_clients.length} client${sv.failing_clients.length > 1 ? 's' : ''}` : '';
      const alerts = sv.alerts ? ` · ${sv.alerts} alert${sv.alerts > 1 ? 's' : ''}` : '';
      ul.append(el('li', { class: `health-${sv.alerts ? 'danger' : sv.class}`, tabindex: '0', role: 'button',
        title: `open ${sv.name} in ${sv.area}`, 'data-name': sv.name,
        onclick: () => openProblemService(sv), onkeydown: (e) => { if (e.key === 'Enter') openProblemService(sv); } },
      el('span', { class: 'name', text: sv.name }), el('span', { class: 'where', text: ` ${sv.area}` }),
      el('div', { class: 'meta', text: `${what}${who}${alerts}` })));
    }
    list.append(el('div', { class: 'sub', text: 'Services' }), ul);
  }
  if (problems.edges.length) {
    const ul = el('ul', { id: 'problems-edges' });
    for (const e of problems.edges) {
      ul.append(el('li', { class: `health-${e.class}`, tabindex: '0', role: 'button',
        title: `open ${e.target_area} and select ${e.source} → ${e.target}`, 'data-source': e.source, 'data-target': e.target,
        onclick: () => openProblemEdge(e), onkeydown: (ev) => { if (ev.key === 'Enter') openProblemEdge(e); } },
      el('span', { class: 'name', text: `${e.source} → ${e.target}` }),
      el('div', { class: 'meta', text: `${pct(e.failure_ratio)} of ${e.connects} connects failed` })));
    }
    list.append(el('div', { class: 'sub', text: 'Edges' }), ul);
  }
}

// A service problem opens its area with the service in the side panel.
// The list folds away once it has been used, so it does not cover what it opened.
function openProblemService(sv) {
  problemsOpen = false;
  navigate({ area: sv.area, service: undefined, sel: sv.kind === 'service' ? sv.name : undefined, impact: undefined });
}

// An edge problem opens the area of the failing server, where both ends are
// drawn, and selects the edge.
function openProblemEdge(e) {
  problemsOpen = false;
  focusEdge = [e.source, e.target];
  navigate({ area: e.target_area, service: undefined, sel: undefined, impact: undefined });
}

$('problems-toggle').addEventListener('click', () => {
  problemsOpen = !problemsOpen;
  renderProblems(phobos.problems);
});

// -- states: loading, error, no data at this time ------------------------------------

let loadingTimer = null;
function showLoading(on) {
  clearTimeout(loadingTimer);
  // Only a load that takes a while shows it: a flash on every refresh is noise.
  if (on) loadingTimer = setTimeout(() => { $('loading').hidden = false; }, 150);
  else $('loading').hidden = true;
  phobos.loading = on;
}

function showError(err) {
  const text = err.message || String(err);
  phobos.errors.push(text);
  phobos.state = 'error';
  $('error-text').textContent = text;
  $('error').hidden = false;
  $('viz').classList.add('stale');
  phobos.ready = true;
}

function clearError() {
  if (phobos.state === 'error') phobos.state = 'loading';
  $('error').hidden = true;
  $('viz').classList.remove('stale');
}

function showNoData(areas, tl) {
  const box = $('nodata');
  const empty = !areas.connections.length;
  box.hidden = !empty;
  if (!empty) return;
  const m = areas.metadata || {};
  $('nodata-text').textContent = `No connections from ${m.from} to ${m.at}. This store holds data from `
    + `${tl.range.first} to ${tl.range.last}: move the time slider into that range.`;
}

function renderLegend(meta) {
  const h = meta.health;
  if (!h) return;
  $('legend-danger').textContent = `failing (≥ ${pct(h.danger_ratio)} of connects)`;
  $('legend-warning').textContent = `degraded (≥ ${pct(h.warning_ratio)}, handshake p95 ≥ `
    + `${msText(h.warning_handshake_p95_ms)} or ≥ ${pct(h.warning_retransmit_ratio)} retransmitted)`;
}

function closePanel() {
  $('panel').hidden = true;
  $('panel').dataset.kind = '';
  phobos.panel = null;
  phobos.edge = null;
}

// The changes of the open view, largest absolute change first, whatever their
// kind (a vanished edge of 355 before 27 new ones of 0.2); a click selects the
// edge when it is drawn.  The list folds to its title (−/+) and × ends the diff.
let diffOpen = true;
const DIFF_ICON = { new: '+', vanished: '−', changed: '±' };

function renderDiffPanel(diff) {
  const box = $('diff-panel');
  if (!diff) { box.hidden = true; return; }
  box.hidden = false;
  const m = diff.meta;
  const where = m.service ? `service ${m.service}` : m.area ? `area ${m.area}` : 'all areas';
  $('diff-range').textContent = `${where} · ${m.from} → ${m.to}${m.default_from ? ' (first window with data)' : ''}`;
  const c = diff.counts || { new: diff.new.length, vanished: diff.vanished.length, changed: diff.changed.length };
  $('diff-count').textContent = `${c.new} new · ${c.vanished} vanished · ${c.changed} changed`;
  $('diff-fold').textContent = diffOpen ? '−' : '+';
  const list = $('diff-list');
  list.hidden = !diffOpen;
  list.replaceChildren();
  const ranked = diff.ranked || [];
  if (!ranked.length) {
    list.append(el('div', { class: 'meta', id: 'diff-none', text: `No edge changed by ${pct(m.min_change)} or more.` }));
    return;
  }
  const unit = { open: 'open', connects: 'new/s', failures: 'failed/s' }[m.metric] || '';
  const ol = el('ol', { id: 'diff-ranked' });
  for (const e of ranked) {
    const change = e.kind === 'new' ? `+${fmt(e.after)}` : e.kind === 'vanished' ? `−${fmt(e.before)}`
      : `${fmt(e.before)} → ${fmt(e.after)} (${e.delta > 0 ? '+' : '−'}${fmt(Math.abs(e.delta))})`;
    const open = () => openDiffEdge(e);
    ol.append(el('li', { class: `diff-${e.kind}`, tabindex: '0', role: 'button', 'data-kind': e.kind,
      'data-source': e.source, 'data-target': e.target, title: `${e.kind}: ${e.source} → ${e.target}`,
      onclick: open, onkeydown: (ev) => { if (ev.key === 'Enter') open(); } },
    el('span', { class: 'icon', text: DIFF_ICON[e.kind] }),
    el('span', { class: 'name', text: `${e.source} → ${e.target}` }),
    el('span', { class: 'num', text: ` ${change} ${unit}` })));
  }
  list.append(ol);
  const shown = c.new + c.vanished + c.changed;
  if (shown > ranked.length) list.append(el('div', { class: 'meta', text: `the ${ranked.length} largest of ${shown}` }));
}

function openDiffEdge(e) {
  const graph = viz && viz.currentGraph;
  if (graph && graph.connections[`${e.source}--${e.target}`]) { selectEdge(e.source, e.target); return; }
  // Not drawn at this level: open the view that draws it (the client's area).
  if (!state.area && !e.source_area) { showMessage(`${e.source} → ${e.target} is not drawn here`); return; }
  const area = e.source_area && e.source_area !== 'INTERNET' ? e.source_area : e.target_area;
  if (area && area !== state.area) { focusEdge = [e.source, e.target]; navigate({ area, service: undefined, sel: undefined }); }
}

$('diff-fold').addEventListener('click', () => {
  diffOpen = !diffOpen;
  $('diff-fold').textContent = diffOpen ? '−' : '+';
  $('diff-list').hidden = !diffOpen;
});
$('diff-close').addEventListener('click', () => navigate({ diff: undefined }));

function showEmpty(empty) {
  $('empty').hidden = !empty;
  $('viz').style.visibility = empty ? 'hidden' : 'visible';
  $('legend').hidden = empty;
}
function showMessage(text) { const m = $('message'); m.textContent = text; m.hidden = false; }
function hideMessage() { $('message').hidden = true; }

// -- time: zone, axis, marks --------------------------------------------------------

const toEpoch = (iso) => Math.floor(Date.parse(iso.includes('T') ? iso : `${iso.replace(' ', 'T')}Z`) / 1000);
const isoOf = (epoch) => new Date(epoch * 1000).toISOString().replace('.000Z', 'Z');
const LOCAL_ZONE = (() => { try { return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'; } catch (e) { return 'UTC'; } })();

// The zone times are shown in: UTC unless the URL names another (tz=local: the browser's).
function zone() {
  const tz = state.tz === 'local' ? LOCAL_ZONE : state.tz || 'UTC';
  try { new Intl.DateTimeFormat('en', { timeZone: tz }); return tz; } catch (e) { return 'UTC'; }
}

const partsCache = new Map();
function zoneParts(epoch, tz = zone()) {
  let f = partsCache.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-GB', { timeZone: tz, hourCycle: 'h23', year: 'numeric', month: '2-digit',
      day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', timeZoneName: 'short' });
    partsCache.set(tz, f);
  }
  const out = {};
  for (const p of f.formatToParts(new Date(epoch * 1000))) out[p.type] = p.value;
  return out;
}

// Seconds the zone is ahead of UTC at ``epoch``.
function zoneOffset(epoch, tz = zone()) {
  const p = zoneParts(epoch, tz);
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second) / 1000 - epoch;
}

// A time in the chosen zone, its zone written out: "2026-12-01 22:04:00 UTC".
function timeText(epoch, { seconds = true, date = true } = {}) {
  if (!Number.isFinite(epoch)) return '—';
  const p = zoneParts(epoch);
  const tzName = zone() === 'UTC' ? 'UTC' : p.timeZoneName;
  return `${date ? `${p.year}-${p.month}-${p.day} ` : ''}${p.hour}:${p.minute}${seconds ? `:${p.second}` : ''} ${tzName}`;
}

// A time the API wrote ("2026-12-01 22:04:00", UTC) for a panel, in the chosen zone.
// A time after now (a clock ahead, an interval's end) is shown as now.
function storeTimeText(text) {
  if (!text) return '—';
  const t = toEpoch(text);
  return Number.isFinite(t) ? timeText(Math.min(t, Math.floor(Date.now() / 1000))) : String(text);
}

// The "at" label: the time the views really show (relative and ISO `at`
// resolved by the API), in the zone and, outside UTC, in UTC too.
function atText(epoch) {
  const utc = isoOf(epoch);
  return zone() === 'UTC' ? utc : `${timeText(epoch, { seconds: false })} (${utc})`;
}

// -- the timeline: visible range, axis, activity, marks ------------------------------

// Rows: alerts and deploys, failure spikes, activity bars, the axis.
const TL = { pad: 8, height: 76, spikeY: 17, barTop: 30, axisY: 54 };
let zoom = null; // [from, to] shown by the timeline; null: what the API picks (up to a week)

function tlRange(tl) {
  return [toEpoch(tl.from), toEpoch(tl.to)];
}

// Tick spacing: the smallest step that leaves ~90 px per label.
const STEPS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400];
function ticks(from, to, width) {
  const want = Math.max(2, Math.floor(width / 90));
  const step = STEPS.find((st) => (to - from) / st <= want) || STEPS[STEPS.length - 1];
  const out = [];
  // Ticks fall on round times of the zone, not of UTC.
  const off = zoneOffset(from);
  for (let t = Math.ceil((from + off) / step) * step - off; t <= to; t += step) out.push(t);
  return { step, ticks: out };
}

function tickLabel(t, step, prev) {
  const p = zoneParts(t);
  const day = `${p.year}-${p.month}-${p.day}`;
  const prevDay = prev === undefined ? null : (() => { const q = zoneParts(prev); return `${q.year}-${q.month}-${q.day}`; })();
  if (step >= 86400) return `${p.month}-${p.day}`;
  return day !== prevDay ? `${p.month}-${p.day} ${p.hour}:${p.minute}` : `${p.hour}:${p.minute}`;
}

// Marks of the time line: alerts (red), deploys (blue), buckets whose share of
// failed connects stands out (orange).  Deploys are notifications named
// "Deploy" (the simulator writes them, a CI job can post them to /api/v1/alerts).
function timelineMarks(tl) {
  const marks = [];
  for (const inc of tl.incidents || []) {
    const t = toEpoch(inc.starts_at || tl.range.first);
    const deploy = inc.alertname === 'Deploy';
    marks.push({ kind: deploy ? 'deploy' : 'alert', t, service: inc.service || '',
      title: deploy ? `deploy of ${inc.service}` : `${inc.alertname || 'alert'}${inc.service ? ` (${inc.service})` : ''}`
        + `${inc.severity ? ` [${inc.severity}]` : ''}` });
  }
  const ratios = (tl.buckets || []).map((b) => (b.connects ? b.failures / b.connects : 0));
  const sorted = [...ratios].sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
  (tl.buckets || []).forEach((b, i) => {
    if (b.failures > 0 && ratios[i] > Math.max(3 * median, 0.01)) {
      // A run of spiking buckets is one mark, at its start.
      const last = marks[marks.length - 1];
      const t = toEpoch(b.bucket);
      if (last && last.kind === 'spike' && t - last.end <= tl.bucket) { last.end = t + tl.bucket; last.failures += b.failures; last.connects += b.connects; return; }
      marks.push({ kind: 'spike', t, end: t + tl.bucket, failures: b.failures, connects: b.connects });
    }
  });
  for (const m of marks) {
    if (m.kind === 'spike') m.title = `failure spike: ${m.failures} of ${m.connects} connects failed`;
  }
  return marks.sort((a, b) => a.t - b.t);
}

const SVG = 'http://www.w3.org/2000/svg';
const svgEl = (tag, attrs = {}, ...children) => {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};

function renderTimeline(tl = phobos.timeline) {
  if (!tl || !tl.range) return;
  const svg = $('timeline');
  const width = Math.max(200, svg.clientWidth || svg.parentNode.clientWidth || 800);
  svg.setAttribute('viewBox', `0 0 ${width} ${TL.height}`);
  svg.replaceChildren();
  const [from, to] = tlRange(tl);
  const span = Math.max(60, to - from);
  const x = (t) => TL.pad + ((t - from) / span) * (width - 2 * TL.pad);
  phobos.timelineX = { from, to, width, pad: TL.pad };
  // Activity: connects per bucket in grey, the failed share in red on top.
  const buckets = tl.buckets || [];
  const maxC = Math.max(1, ...buckets.map((b) => b.connects || 0));
  const bw = Math.max(1, ((tl.bucket || 60) / span) * (width - 2 * TL.pad) - 0.5);
  const bars = svgEl('g', { class: 'bars' });
  for (const b of buckets) {
    const t = toEpoch(b.bucket);
    const h = ((b.connects || 0) / maxC) * (TL.axisY - TL.barTop);
    bars.append(svgEl('rect', { x: x(t), y: TL.axisY - h, width: bw, height: h, class: 'bar' }));
    if (b.failures > 0) {
      const fh = Math.max(2, Math.min(1, b.failures / (b.connects || 1)) * (TL.axisY - TL.barTop));
      bars.append(svgEl('rect', { x: x(t), y: TL.axisY - fh, width: bw, height: fh, class: 'bar failed' }));
    }
  }
  svg.append(bars);
  // Axis with ticks and labels in the chosen zone.
  const axis = svgEl('g', { class: 'axis' });
  axis.append(svgEl('line', { x1: TL.pad, x2: width - TL.pad, y1: TL.axisY, y2: TL.axisY }));
  const { step, ticks: ts } = ticks(from, to, width);
  ts.forEach((t, i) => {
    axis.append(svgEl('line', { x1: x(t), x2: x(t), y1: TL.axisY, y2: TL.axisY + 5 }));
    // Labels at the ends stay inside the box.
    const anchor = x(t) < 40 ? 'start' : x(t) > width - 40 ? 'end' : 'middle';
    axis.append(svgEl('text', { x: Math.max(0, x(t) - (anchor === 'start' ? 4 : 0)), y: TL.axisY + 16, 'text-anchor': anchor },
      tickLabel(t, step, ts[i - 1])));
  });
  svg.append(axis);
  // The diff's earlier time and the time shown.
  if (state.diff) svg.append(svgEl('line', { class: 'cursor diff', x1: x(+state.diff), x2: x(+state.diff), y1: 0, y2: TL.axisY }));
  const at = shownAt();
  if (at >= from && at <= to) svg.append(svgEl('line', { class: 'cursor at', id: 'tl-at', x1: x(at), x2: x(at), y1: 0, y2: TL.axisY }));
  // Marks: 12 px shapes with a larger invisible target, each a button.
  const marks = timelineMarks(tl).filter((m) => m.t >= from && m.t <= to);
  const g = svgEl('g', { class: 'marks' });
  for (const m of marks) {
    const mx = x(m.t);
    const shape = m.kind === 'deploy' ? svgEl('path', { d: `M${mx} 2 l6 6 l-6 6 l-6 -6 z` })
      : m.kind === 'alert' ? svgEl('path', { d: `M${mx - 6} 2 h12 l-6 12 z` })
        : svgEl('rect', { x: mx, y: TL.spikeY, width: Math.max(6, x(m.end) - mx), height: 10, rx: 2 });
    const label = `${m.title} at ${timeText(m.t, { seconds: false })}`;
    const open = (ev) => { ev.stopPropagation(); openMark(m, mx); };
    g.append(svgEl('g', { class: `mark ${m.kind}`, tabindex: '0', role: 'button', 'aria-label': label,
      'data-kind': m.kind, 'data-t': String(m.t), onclick: open, onmousedown: (ev) => ev.stopPropagation(),
      onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); open(ev); } } },
    svgEl('title', {}, label), svgEl('rect', { class: 'hit', x: mx - 8, y: m.kind === 'spike' ? TL.spikeY - 2 : 0,
      width: m.kind === 'spike' ? Math.max(16, x(m.end) - mx + 8) : 16, height: 14 }), shape));
  }
  svg.append(g);
  phobos.incidents = marks.length;
  phobos.marks = marks.map((m) => ({ kind: m.kind, t: m.t, title: m.title }));
  $('tl-range').textContent = `${timeText(from, { seconds: false })} – ${timeText(to, { seconds: false })}`;
  $('tl-zoom-out').disabled = !zoom;
}

// A click on a mark shows the window that starts at it and offers the diff
// against the window just before.
function openMark(m, mx) {
  const window = phobos.window || 300;
  const last = toEpoch(phobos.timeline.range.last);
  const at = Math.min(m.t + window, last);
  const pop = $('mark-pop');
  $('mark-title').textContent = `${m.title} at ${timeText(m.t, { seconds: false })}`;
  pop.dataset.t = String(m.t);
  pop.dataset.at = String(at);
  // What an alert or a failure spike changed is in the failures; a deploy's
  // in the edges themselves, whatever the metric.
  pop.dataset.metric = m.kind === 'deploy' ? (state.metric || '') : 'failures';
  $('mark-diff').textContent = m.kind === 'deploy' ? 'Diff against just before' : 'Diff failures against just before';
  pop.hidden = false;
  const box = $('timeline-box').getBoundingClientRect();
  pop.style.left = `${Math.max(0, Math.min(box.width - 300, mx - 150))}px`;
  phobos.mark = { kind: m.kind, t: m.t, at };
  navigate({ at: String(at), live: undefined });
}

$('mark-diff').addEventListener('click', () => {
  const pop = $('mark-pop');
  pop.hidden = true;
  navigate({ at: pop.dataset.at, diff: pop.dataset.t, live: undefined, metric: pop.dataset.metric || undefined });
});
$('mark-close').addEventListener('click', () => { $('mark-pop').hidden = true; });

// Click on the time line: that time.  Drag: zoom to the brushed range.
(() => {
  const svg = $('timeline');
  let down = null;
  const timeAt = (clientX) => {
    const r = svg.getBoundingClientRect();
    const { from, to, width, pad } = phobos.timelineX || {};
    if (from === undefined) return null;
    const f = ((clientX - r.left) * (width / r.width) - pad) / (width - 2 * pad);
    return Math.round((from + Math.min(1, Math.max(0, f)) * (to - from)) / 60) * 60;
  };
  svg.addEventListener('mousedown', (e) => { down = { x: e.clientX, t: timeAt(e.clientX) }; });
  svg.addEventListener('mousemove', (e) => {
    if (!down) return;
    const brush = $('tl-brush');
    const r = svg.getBoundingClientRect();
    brush.hidden = Math.abs(e.clientX - down.x) < 5;
    brush.style.left = `${Math.min(e.clientX, down.x) - r.left}px`;
    brush.style.width = `${Math.abs(e.clientX - down.x)}px`;
  });
  window.addEventListener('mouseup', (e) => {
    if (!down) return;
    const start = down;
    down = null;
    $('tl-brush').hidden = true;
    const t = timeAt(e.clientX);
    if (t === null || start.t === null) return;
    if (Math.abs(e.clientX - start.x) >= 5) {
      const [a, b] = [Math.min(start.t, t), Math.max(start.t, t)];
      if (b - a >= 300) setZoom([a, b]);
      return;
    }
    if (e.target.closest && e.target.closest('.mark')) return;
    navigate({ at: String(t), live: undefined });
  });
  svg.addEventListener('wheel', (e) => {
    if (!phobos.timelineX) return;
    e.preventDefault();
    const { from, to } = phobos.timelineX;
    const t = timeAt(e.clientX);
    const k = e.deltaY < 0 ? 0.5 : 2;
    setZoom([t - (t - from) * k, t + (to - t) * k]);
  }, { passive: false });
})();

// Zoom the time line to [from, to] (kept inside the data; null: the default range).
async function setZoom(range) {
  const tl = phobos.timeline;
  if (!tl || !tl.range) return;
  const first = toEpoch(tl.range.first);
  const last = toEpoch(tl.range.last);
  if (range) {
    let [a, b] = range.map(Math.round);
    if (b - a >= last - first) range = null;
    else {
      if (a < first) { b += first - a; a = first; }
      if (b > last) { a -= b - last; b = last; }
      range = [Math.max(first, a), Math.min(last, b)];
    }
  }
  zoom = range;
  try {
    await loadTimeline();
    setupSlider(phobos.timeline);
  } catch (err) { showError(err); }
}

$('tl-zoom-out').addEventListener('click', () => {
  if (!zoom) return;
  const [a, b] = zoom;
  const mid = (a + b) / 2;
  setZoom([mid - (b - a), mid + (b - a)]);
});
$('tl-all').addEventListener('click', () => {
  const tl = phobos.timeline;
  if (tl && tl.range) setZoom([toEpoch(tl.range.first), toEpoch(tl.range.last)]);
});

function setupSlider(tl) {
  const [from, to] = tlRange(tl);
  const slider = $('slider');
  for (const sl of [slider, $('diff-from')]) {
    sl.min = String(from); sl.max = String(Math.max(to, from + 60)); sl.step = '60';
  }
  const at = shownAt();
  slider.value = String(at);
  $('at-label').textContent = `${state.live ? 'live · ' : ''}at ${atText(at)}`;
  const pick = $('at-pick');
  const p = zoneParts(at);
  pick.value = `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}`;
  const dfrom = $('diff-from');
  dfrom.hidden = !state.diff;
  $('diff-label').hidden = !state.diff;
  if (state.diff) {
    dfrom.value = state.diff;
    $('diff-label').textContent = `compared with ${atText(Number(state.diff))}`;
  }
  renderZones();
  renderTimeline(tl);
}

function renderZones() {
  const sel = $('tz');
  const want = state.tz || 'UTC';
  const options = [['UTC', 'UTC'], ['local', `local (${LOCAL_ZONE})`]];
  if (!options.some(([v]) => v === want)) options.push([want, want]);
  if (sel.options.length !== options.length || sel.options[sel.options.length - 1].value !== options[options.length - 1][0]) {
    sel.replaceChildren(...options.map(([v, text]) => el('option', { value: v, text })));
  }
  sel.value = want;
}

$('tz').addEventListener('change', () => {
  state = { ...state, tz: $('tz').value === 'UTC' ? undefined : $('tz').value };
  if (!state.tz) delete state.tz;
  history.replaceState(null, '', stateUrl(state));
  partsCache.clear();
  if (phobos.timeline && phobos.timeline.range) setupSlider(phobos.timeline);
  if (phobos.panel && $('panel').dataset.kind === 'service') renderPanel(null, phobos.panel);
});

// The date picker reads its value in the chosen zone.
$('at-pick').addEventListener('change', () => {
  const v = $('at-pick').value;
  if (!v) return;
  const guess = Date.parse(`${v}:00Z`) / 1000;
  if (!Number.isFinite(guess)) return;
  navigate({ at: String(guess - zoneOffset(guess - zoneOffset(guess))), live: undefined });
});

window.addEventListener('resize', () => renderTimeline());

$('slider').addEventListener('input', () => {
  $('at-label').textContent = `at ${atText(Number($('slider').value))}`;
});
$('slider').addEventListener('change', () => navigate({ at: $('slider').value, live: undefined }));
$('diff-from').addEventListener('change', () => navigate({ diff: $('diff-from').value }));
$('metric').addEventListener('change', () => navigate({ metric: $('metric').value === 'open' ? undefined : $('metric').value }));
$('diff-toggle').addEventListener('change', () => {
  if (!$('diff-toggle').checked) { navigate({ diff: undefined }); return; }
  navigate({ diff: String(defaultDiffFrom()) });
});
// 24 h before the time shown, or the first window wholly inside the data when
// that is later: a time before the data makes every edge "new".
function defaultDiffFrom(at = shownAt()) {
  const tl = phobos.timeline;
  const first = tl && tl.range ? toEpoch(tl.range.first) : at - 86400;
  const window = phobos.window || 300;
  return Math.max(Math.min(first + window, at - 60), at - 86400);
}

// The time the views show, as epoch seconds.
function shownAt() {
  if (phobos.shownAt) return phobos.shownAt;
  const at = atParam();
  return /^\d+$/.test(at) ? Number(at) : Math.floor(Date.now() / 1000);
}

$('live').addEventListener('change', () => navigate({ live: $('live').checked ? '1' : undefined, at: undefined }));
$('panel-close').addEventListener('click', () => select(undefined));

setInterval(() => {
  if (document.hidden) return;
  if (state.live || !phobos.timeline || !phobos.timeline.range) { phobos.timeline = null; refresh(); }
}, REFRESH_MS);

// -- the table view: the open level's nodes and edges, sortable and filterable ---------

const tableSort = { nodes: ['open_in', -1], edges: ['open', -1] };

// Rows of the drawn level: a node with the traffic into and out of it, an edge
// with its figures (the same metadata the tooltip shows).
function tableRows(level) {
  const nodes = new Map(level.nodes.map((n) => {
    const meta = n.metadata || {};
    return [n.name, { name: n.name, label: n.displayName || meta.instance || n.name, kind: meta.kind || '',
      area: meta.area || '', class: n.class || 'normal', open_in: 0, open_out: 0, connects_in: 0, failures_in: 0,
      node: n }];
  }));
  const edges = [];
  for (const c of level.connections) {
    const m = c.metadata || {};
    if (m.vanished) continue;
    edges.push({ source: c.source, target: c.target, class: c.class || 'normal', open: m.open || 0,
      conn_rate: m.conn_rate || 0, failure_ratio: m.failure_ratio || 0, connects: m.connects || 0,
      bytes: m.bytes || 0, provenance: SEEN_BY[m.provenance] || m.provenance || '' });
    const a = nodes.get(c.source);
    const b = nodes.get(c.target);
    if (a) a.open_out += m.open || 0;
    if (b) { b.open_in += m.open || 0; b.connects_in += m.connects || 0; b.failures_in += m.failures || 0; }
  }
  for (const n of nodes.values()) n.failed_in = n.connects_in ? n.failures_in / n.connects_in : 0;
  return { nodes: [...nodes.values()], edges };
}

const NODE_COLUMNS = [['label', 'name'], ['kind', 'kind'], ['area', 'area'], ['class', 'health'],
  ['open_in', 'open in', 'num'], ['open_out', 'open out', 'num'], ['connects_in', 'connects in', 'num'],
  ['failed_in', 'failed in', 'pct']];
const EDGE_COLUMNS = [['source', 'client'], ['target', 'server'], ['class', 'health'], ['open', 'open', 'num'],
  ['conn_rate', 'new/s', 'num'], ['failure_ratio', 'failed', 'pct'], ['connects', 'connects', 'num'],
  ['bytes', 'bytes', 'bytes'], ['provenance', 'seen by']];

function renderTable() {
  const box = $('table-view');
  const on = !!state.table;
  box.hidden = !on;
  $('table-toggle').classList.toggle('on', on);
  $('table-toggle').setAttribute('aria-pressed', String(on));
  if (!on || !phobos.levelData) return;
  // A grouped instance view is listed instance by instance.
  const rows = tableRows(phobos.tableLevel || phobos.levelData);
  const words = $('table-filter').value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const match = (texts) => words.every((w) => texts.some((t) => String(t).toLowerCase().includes(w)));
  const nodes = rows.nodes.filter((n) => match([n.name, n.label, n.kind, n.area, n.class]));
  const edges = rows.edges.filter((e) => match([e.source, e.target, e.class, e.provenance]));
  fillTable($('table-nodes'), 'nodes', NODE_COLUMNS, nodes, (n) => openTableNode(n));
  fillTable($('table-edges'), 'edges', EDGE_COLUMNS, edges, (e) => openTableEdge(e));
  $('table-count').textContent = `${nodes.length} of ${rows.nodes.length} nodes · ${edges.length} of ${rows.edges.length} edges`;
  phobos.table = { nodes: nodes.map((n) => n.name), edges: edges.map((e) => [e.source, e.target]),
    sort: { ...tableSort } };
}

function fillTable(table, which, columns, rows, open) {
  const [key, dir] = tableSort[which];
  rows.sort((a, b) => {
    const x = a[key];
    const y = b[key];
    const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    return c * dir || String(a.name || a.source).localeCompare(String(b.name || b.source));
  });
  const head = el('tr', {}, ...columns.map(([k, title, type]) => {
    const th = el('th', { class: type ? 'num' : '' }, el('button', { type: 'button', text: `${title}${k === key ? (dir > 0 ? ' ▲' : ' ▼') : ''}`,
      title: `sort by ${title}`, onclick: () => {
        tableSort[which] = [k, k === key ? -dir : (type ? -1 : 1)];
        renderTable();
        const again = table.querySelector(`th[data-key="${k}"] button`);
        if (again) again.focus();
      } }));
    th.dataset.key = k;
    if (k === key) th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
    return th;
  }));
  const body = el('tbody');
  for (const r of rows.slice(0, 2000)) {
    const cells = columns.map(([k, , type]) => {
      const v = r[k];
      const text = type === 'pct' ? pct(v) : type === 'bytes' ? bytesText(v) : type === 'num' ? fmt(v) : String(v ?? '');
      return el('td', { class: `${type ? 'num' : ''}${k === 'class' ? ` health-${v}` : ''}`, text });
    });
    body.append(el('tr', { tabindex: '0', class: `health-${r.class}`, onclick: () => open(r),
      onkeydown: (e) => {
        if (e.key === 'Enter') open(r);
        if (e.key === 'ArrowDown' && e.currentTarget.nextSibling) { e.preventDefault(); e.currentTarget.nextSibling.focus(); }
        if (e.key === 'ArrowUp' && e.currentTarget.previousSibling) { e.preventDefault(); e.currentTarget.previousSibling.focus(); }
      } }, ...cells));
  }
  table.replaceChildren(el('thead', {}, head), body);
}

// A row opens what a click on the map would: an area's panel (areas view), a
// service's panel, an instance's; an edge is selected on the map.
function openTableNode(n) {
  navigate({ table: undefined }, { replace: true }).then(() => {
    const meta = n.node.metadata || {};
    if (meta.kind === 'instance' || meta.kind === 'traced') showInstance(n.name, meta);
    else if (!state.area) showArea(n.name, n.node);
    else if (meta.kind === 'service' || meta.kind === undefined) select(n.name);
  });
}

function openTableEdge(e) {
  navigate({ table: undefined }, { replace: true }).then(() => selectEdge(e.source, e.target));
}

$('table-toggle').addEventListener('click', () => {
  state = { ...state, table: state.table ? undefined : '1' };
  if (!state.table) delete state.table;
  history.replaceState(null, '', stateUrl(state));
  renderTable();
  if (state.table) $('table-filter').focus();
});
$('table-filter').addEventListener('input', () => renderTable());
$('table-filter').addEventListener('keydown', (e) => {
  if (e.key === 'ArrowDown') { e.preventDefault(); const first = $('table-nodes').querySelector('tbody tr'); if (first) first.focus(); }
});

// -- keyboard: Esc zooms out ---------------------------------------------------------

document.addEventListener('keydown', (e) => {
  const typing = e.target && /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName);
  // (the key is not typed into the filter that gets the focus)
  if (e.key === 't' && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); $('table-toggle').click(); return; }
  if (e.key !== 'Escape' || e.target === $('search')) return;
  if (state.table) { $('table-toggle').click(); $('table-toggle').focus(); return; }
  if (state.impact) { navigate({ impact: undefined }); return; }
  if (state.service) navigate({ service: undefined, sel: undefined });
  else if (state.sel) navigate({ sel: undefined }, { replace: true });
  else if (state.area) navigate({ area: undefined, sel: undefined });
});

// -- search ------------------------------------------------------------------------------

let searchTimer = null;
let searchSeq = 0;
$('search').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 200);
});
// Arrows move through the results, Enter opens the one marked (the first by default).
let searchActive = -1;
function markResult(i) {
  const items = [...$('search-results').querySelectorAll('li:not(.none)')];
  if (!items.length) return;
  searchActive = (i + items.length) % items.length;
  items.forEach((li, k) => { li.classList.toggle('active', k === searchActive); li.setAttribute('aria-selected', String(k === searchActive)); });
  items[searchActive].scrollIntoView({ block: 'nearest' });
}
$('search').addEventListener('keydown', (e) => {
  const box = $('search-results');
  if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
    e.preventDefault();
    if (box.hidden && box.children.length) box.hidden = false;
    markResult(searchActive + (e.key === 'ArrowDown' ? 1 : -1));
  }
  if (e.key === 'Enter') {
    e.preventDefault();
    const items = box.querySelectorAll('li:not(.none)');
    const pick = items[Math.max(0, searchActive)];
    if (pick) pick.click();
  }
  if (e.key === 'Escape') { box.hidden = true; $('search').blur(); }
});
// "/" focuses the search from anywhere but a text field.
document.addEventListener('keydown', (e) => {
  if (e.key !== '/' || e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
  e.preventDefault();
  $('search').focus();
  $('search').select();
});

async function runSearch() {
  const text = $('search').value.trim();
  const box = $('search-results');
  if (!text) { box.hidden = true; return; }
  const seq = ++searchSeq;
  let res;
  try { res = await getJson('/search', { q: text, limit: 10, at: atParam() }); } catch (err) { return; }
  if (seq !== searchSeq) return;
  box.replaceChildren();
  const item = (kind, label, go) => box.append(el('li', { role: 'option', onclick: () => { box.hidden = true; go(); } },
    el('span', { class: 'kind', text: kind }), el('span', { text: label })));
  for (const a of res.areas || []) {
    const name = typeof a === 'string' ? a : a.name;
    item('area', name, () => navigate({ area: name, service: undefined, sel: undefined }));
  }
  for (const s of res.services || []) {
    const name = typeof s === 'string' ? s : s.name;
    item('service', `${name}${s.area ? ` (${s.area})` : ''}`, () => jumpToService(name, s.area));
  }
  for (const i of res.instances || []) {
    item('host', `${i.host || i.instance || i.name} · ${i.service}`, () => jumpToService(i.service, i.area));
  }
  for (const i of res.ips || []) {
    item('ip', `${i.ip} · ${i.service} on ${i.host}`, () => jumpToService(i.service, i.area));
  }
  if (!box.children.length) box.append(el('li', { class: 'none', text: 'nothing found' }));
  searchActive = -1;
  box.hidden = false;
}

async function jumpToService(name, area) {
  let owner = area;
  if (!owner) {
    try { owner = (await getJson(`/services/${enc(name)}/summary`, viewParams())).area; } catch (err) { owner = null; }
  }
  if (!owner) { showMessage(`no service named ${name}`); return; }
  navigate({ area: owner, service: name, sel: name, impact: undefined });
}

// -- start ------------------------------------------------------------------------------------

window.addEventListener('error', (e) => phobos.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => phobos.errors.push(String(e.reason)));
phobos.started = performance.now();
if (initViz()) refresh(); else { phobos.ready = true; }
// For tests and the console: go to a state as a click would.
phobos.navigate = navigate;
// What Vizceral really draws now: its current graph's level and nodes.
phobos.drawn = () => (viz && viz.currentGraph ? { view: viz.currentGraph.graphIndex,
  nodes: Object.keys(viz.currentGraph.nodes).sort() } : null);
// The classes Vizceral holds for the current level's nodes and connections, and
// the keys its particles are drawn with (tests check red is really drawn).
phobos.drawnHealth = () => {
  const graph = viz && viz.currentGraph;
  if (!graph) return null;
  const nodes = Object.fromEntries(Object.values(graph.nodes).map((n) => [n.getName(), n.getClass()]));
  const connections = Object.fromEntries(Object.values(graph.connections).map((c) => [c.getName(),
    { cls: c.class, keys: Object.keys(c.volume || {}).filter((k) => c.volume[k] > 0),
      line: c.view ? c.view.phobosTint || null : null }]));
  return { nodes, connections };
};
// Which nodes and connections of the current level Vizceral dims now (a
// selected or hovered node dims what is not its neighbour), and what is selected.
phobos.drawnDimming = () => {
  const graph = viz && viz.currentGraph;
  if (!graph) return null;
  const dimmed = (objects) => Object.fromEntries(Object.values(objects).filter((o) => o.getView && o.getView())
    .map((o) => [o.getName(), !!o.getView().dimmed]));
  return { selected: graph.highlightedObject ? graph.highlightedObject.getName() : null,
    nodes: dimmed(graph.nodes), connections: dimmed(graph.connections) };
};
// How the current level's lines are drawn: their tint (normal, warning,
// danger, new, vanished), whether dashed, and their particles' size.
phobos.drawnLines = () => {
  const graph = viz && viz.currentGraph;
  if (!graph) return null;
  return Object.fromEntries(Object.values(graph.connections).filter((c) => c.view).map((c) => [c.getName(),
    { tint: c.view.phobosTint || null, dashed: !!c.view.phobosDash, size: c.view.phobosSize || null,
      segments: c.view.connectionLine ? c.view.connectionLine.geometry.vertices.length : 0 }]));
};
// Points on the drawn edge source -> target, in page pixels, from its middle
// outwards (tests hover there; another node may sit on the middle).
phobos.edgePoints = (source, target) => {
  const a = phobos.nodePosition(source);
  const b = phobos.nodePosition(target);
  if (!a || !b) return null;
  return [0.5, 0.4, 0.6, 0.3, 0.7].map((f) => ({ x: a.x + (b.x - a.x) * f, y: a.y + (b.y - a.y) * f }));
};
// Where a node of the current view is drawn, in page pixels (tests click there).
phobos.nodePosition = (name) => {
  const graph = viz && viz.currentGraph;
  const node = graph && graph.nodes[name];
  const view = node && node.getView && node.getView();
  if (!view || !view.container || !view.container.parent) return null;
  const parent = view.container.parent;
  parent.updateMatrixWorld(true);
  const v = view.container.position.clone().applyMatrix4(parent.matrixWorld).project(viz.camera);
  const r = viz.renderer.domElement.getBoundingClientRect();
  return { x: r.left + ((v.x + 1) / 2) * r.width, y: r.top + ((1 - v.y) / 2) * r.height };
};
