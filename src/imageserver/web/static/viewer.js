// The viewer: state, the URL, and the wiring between the API, the browser, the view and the
// controls. The other modules each do one job (api.js, raw.js, view.js, browser.js, spots.js).

import * as api from './api.js';
import {
  basename, datasetUrlPath, dirname, findDataset, frameFile, frameRequest, histogram,
  isTemplate, normaliseLevels, percentile, percentileLevels, rampCss, rawStats, resolutionAt,
} from './raw.js';
import { ImageView } from './view.js';
import { DatasetBrowser } from './browser.js';
import { SpotAnalysis } from './spots.js';

const OVERVIEW_SIZE = 1024; // width of the whole-detector view, px
const RAW_CACHE_ENTRIES = 10; // decoded whole-detector views kept (neighbours for prefetch)
const FOLLOW_PERIOD_MS = 500;
const HISTORY_MERGE_MS = 600; // URL changes closer together than this replace, not push
const ERROR_ORDER = ['session', 'image', 'list', 'follow', 'meta', 'whoami'];

const $ = (id) => document.getElementById(id);

const ui = {
  esaf: $('esaf'),
  login: $('login'),
  first: $('first-frame'),
  prev: $('prev-frame'),
  play: $('play'),
  next: $('next-frame'),
  last: $('last-frame'),
  slider: $('frame-slider'),
  frameNumber: $('frame-number'),
  frameRange: $('frame-range'),
  fps: $('fps'),
  follow: $('follow'),
  black: $('contrast-black'),
  white: $('contrast-white'),
  colormap: $('colormap'),
  auto: $('auto-levels'),
  histogram: $('histogram'),
  levelSource: $('level-source'),
  rings: $('rings'),
  ice: $('ice'),
  beam: $('beam'),
  spots: $('spots'),
  analysis: $('analysis'),
  geometryNote: $('geometry-note'),
  info: $('info'),
  stage: $('stage'),
  image: $('image'),
  overlay: $('overlay'),
  busy: $('busy'),
  placeholder: $('placeholder'),
  zoomIn: $('zoom-in'),
  zoomOut: $('zoom-out'),
  zoomFit: $('zoom-fit'),
  zoomLevel: $('zoom-level'),
  error: $('error'),
  readoutX: $('readout-x'),
  readoutY: $('readout-y'),
  readoutValue: $('readout-value'),
  readoutBox: $('readout-box'),
  readoutResolution: $('readout-resolution'),
  viewStatus: $('view-status'),
};

const state = {
  esaf: 0,
  esafs: [],
  login: null,
  dir: null,
  dataset: null, // a listing entry: {name, path, template, first_frame, last_frame, frames, ...}
  frame: 1,
  wantKey: null, // the overview wanted now
  attempt: null, // {key, frame, jpeg, raw}: what the requests for it did
  shown: null, // {key, frame, source: 'jpeg'|'raw', info, raw}
  levels: null,
  auto: true,
  colormap: 'grey',
  meta: null,
  playing: false,
  direction: 1,
  follow: false,
  lastUrlChange: 0,
};

const frames = new api.Scheduler(2); // overview requests: the frame shown and its neighbours
const tileRequests = new api.Scheduler(3); // zoomed tiles of the frame shown
const rawCache = new Map(); // key → {raw, info}, oldest first
const errors = new Map(); // source → ApiError

// ---------------------------------------------------------------- errors and status

function showError(source, err) {
  if (api.isAbort(err)) return;
  const e = err instanceof api.ApiError ? err : new api.ApiError(String((err && err.message) || err));
  errors.set(e.code === 'session_invalid' ? 'session' : source, e);
  renderError();
}

function clearError(source) {
  if (errors.delete(source)) renderError();
}

function renderError() {
  const source = ERROR_ORDER.find((s) => errors.has(s));
  if (!source) {
    ui.error.hidden = true;
    ui.error.textContent = '';
    delete ui.error.dataset.code;
    return;
  }
  const e = errors.get(source);
  ui.error.textContent = e.message;
  ui.error.dataset.code = e.code;
  ui.error.dataset.source = source;
  ui.error.hidden = false;
}

function setImageState(value) {
  ui.image.dataset.state = value;
  ui.busy.hidden = value !== 'loading' && tileRequests.inFlight === 0;
}

function setStatus(text) {
  ui.viewStatus.textContent = text || '';
}

// ---------------------------------------------------------------- keys and requests

function viewKey(req) {
  return `${state.esaf}|${req.path}|${req.frame}|${OVERVIEW_SIZE}`;
}

function cacheGet(key) {
  const hit = rawCache.get(key);
  if (hit) {
    rawCache.delete(key);
    rawCache.set(key, hit);
  }
  return hit;
}

function cachePut(key, value) {
  rawCache.delete(key);
  rawCache.set(key, value);
  while (rawCache.size > RAW_CACHE_ENTRIES) rawCache.delete(rawCache.keys().next().value);
}

/** Run `task` once the page has painted (the next frame's neighbours wait for this one). */
function afterPaint(task) {
  requestAnimationFrame(() => setTimeout(task, 0));
}

function whenIdle(task) {
  if (typeof requestIdleCallback === 'function') requestIdleCallback(task, { timeout: 500 });
  else setTimeout(task, 0);
}

function rawRequest(req, key, priority) {
  const params = { esaf: state.esaf, path: req.path, frame: req.frame, size: OVERVIEW_SIZE };
  return frames.request(`raw|${key}`, (signal) => api.imageRaw(params, { signal }), { priority })
    .then((result) => {
      cachePut(key, result);
      // A prefetched view's statistics while the page is idle, not when it is shown.
      if (key !== state.wantKey) whenIdle(() => rawStats(result.raw));
      return result;
    });
}

function jpegKey(key) {
  return state.auto
    ? `jpeg|${key}|auto|${state.colormap}`
    : `jpeg|${key}|${state.levels.black}|${state.levels.white}|${state.colormap}`;
}

function jpegRequest(req, key) {
  const params = { esaf: state.esaf, path: req.path, frame: req.frame, size: OVERVIEW_SIZE, colormap: state.colormap };
  if (!state.auto && state.levels) {
    params.black = state.levels.black;
    params.white = state.levels.white;
  }
  const k = jpegKey(key);
  frames.retain((other) => !other.startsWith(`jpeg|${key}|`) || other === k);
  return frames.request(k, (signal) => api.imageBitmap(params, { signal }), { priority: 3 });
}

// ---------------------------------------------------------------- frames

function frameBounds() {
  const ds = state.dataset;
  if (!ds) return { first: 1, last: 1, known: false };
  const first = Number.isFinite(ds.first_frame) ? ds.first_frame : null;
  const last = Number.isFinite(ds.last_frame) ? ds.last_frame : null;
  return { first: first ?? 1, last: last ?? first ?? 1, known: first !== null && last !== null && !ds.provisional };
}

function clampFrame(n) {
  const b = frameBounds();
  let f = Math.round(Number(n));
  if (!Number.isFinite(f)) f = state.frame;
  if (b.known) f = Math.min(Math.max(f, b.first), b.last);
  return Math.max(f, 0);
}

function neighbours(n) {
  const b = frameBounds();
  const out = [];
  const inRange = (f) => f >= 0 && (!b.known || (f >= b.first && f <= b.last));
  const order = state.playing ? [n + state.direction, n + 2 * state.direction] : [n + state.direction, n - state.direction];
  for (const f of order) if (inRange(f) && f !== n) out.push(f);
  return out;
}

function updateFrameControls() {
  const b = frameBounds();
  const ds = state.dataset;
  ui.slider.min = String(b.first);
  ui.slider.max = String(Math.max(b.last, state.frame));
  ui.slider.value = String(state.frame);
  ui.slider.disabled = !ds || !b.known || b.first === b.last;
  if (!frameTyped) ui.frameNumber.value = String(state.frame);
  ui.frameNumber.min = String(b.known ? b.first : 0);
  if (b.known) ui.frameNumber.max = String(b.last);
  else ui.frameNumber.removeAttribute('max');
  ui.frameNumber.disabled = !ds;
  ui.frameRange.textContent = ds ? (b.known ? `${b.first}–${b.last}` : 'of ?') : 'of –';
  for (const button of [ui.first, ui.prev, ui.next, ui.last, ui.play]) button.disabled = !ds;
}

/** Show frame n of the current dataset. history: 'push' | 'replace' | 'none'. */
function showFrame(n, { history = 'push' } = {}) {
  if (!state.dataset) return;
  const f = clampFrame(n);
  if (f !== state.frame) state.direction = f > state.frame ? 1 : -1;
  state.frame = f;
  updateFrameControls();
  if (history !== 'none') updateUrl(history);
  loadCurrent();
}

function loadCurrent() {
  const ds = state.dataset;
  const n = state.frame;
  const req = frameRequest(ds, n);
  const key = viewKey(req);
  const sameAsBefore = state.wantKey === key;
  state.wantKey = key;
  updateSpots(); // the analysis of a frame no longer wanted is cancelled here
  ui.placeholder.hidden = true;

  // Keep only what is wanted now: this frame and its neighbours.
  const near = neighbours(n).map((f) => `raw|${viewKey(frameRequest(ds, f))}`);
  const wanted = new Set([`raw|${key}`, ...near]);
  frames.retain((k) => wanted.has(k) || k.startsWith(`jpeg|${key}|`));
  if (!state.shown || state.shown.key !== key) tileRequests.cancelAll();

  if (state.shown && state.shown.key === key && state.shown.source === 'raw') {
    setImageState('ready');
    prefetch();
    return;
  }
  const cached = cacheGet(key);
  if (cached) {
    displayRaw(key, n, cached);
    afterPaint(prefetch);
    return;
  }
  if (sameAsBefore && state.attempt && state.attempt.key === key && state.attempt.pending > 0) return;
  const attempt = { key, frame: n, jpeg: 'none', raw: 'pending', pending: 1 };
  state.attempt = attempt;
  setImageState('loading');

  // First paint from a JPEG, unless the raw view is already on its way; the raw view after
  // the JPEG (asked for together, they share the worker's cores and both come later).
  const first = frames.isRunning(`raw|${key}`) ? Promise.resolve(true) : startJpeg(attempt, req);
  first.then((jpegOk) => {
    if (!jpegOk || state.wantKey !== key) {
      attempt.raw = 'skipped'; // failed as the JPEG did, or no longer wanted
      attempt.pending--;
      return;
    }
    fetchRaw(attempt, req);
  });
}

function fetchRaw(attempt, req) {
  const { key, frame: n } = attempt;
  rawRequest(req, key, 2).then(
    (result) => {
      attempt.raw = 'ok';
      attempt.pending--;
      if (state.wantKey !== key) return;
      displayRaw(key, n, result);
      afterPaint(prefetch);
    },
    (err) => {
      attempt.pending--;
      if (api.isAbort(err)) { attempt.raw = 'aborted'; return; }
      attempt.raw = 'error';
      attempt.rawError = err;
      if (attempt.jpeg === 'none' && err.code !== 'session_invalid' && state.wantKey === key) {
        startJpeg(attempt, req); // the JPEG may still work where the raw view did not
        return;
      }
      imageFailed(attempt, err);
    },
  );
}

/** Ask for the frame's JPEG; resolves to whether it came (never rejects). */
function startJpeg(attempt, req) {
  const { key, frame: n } = attempt;
  attempt.jpeg = 'pending';
  attempt.pending++;
  return jpegRequest(req, key).then(
    ({ bitmap, info }) => {
      attempt.jpeg = 'ok';
      attempt.pending--;
      if (state.wantKey !== key) return true;
      if (state.shown && state.shown.key === key && state.shown.source === 'raw') return true;
      displayBitmap(key, n, bitmap, info);
      if (attempt.raw === 'error') setStatus(`Contrast by the server (no raw view: ${attempt.rawError.message})`);
      return true;
    },
    (err) => {
      attempt.pending--;
      if (api.isAbort(err)) { attempt.jpeg = 'aborted'; return false; }
      attempt.jpeg = 'error';
      imageFailed(attempt, err);
      return false;
    },
  );
}

function imageFailed(attempt, err) {
  if (state.wantKey !== attempt.key) return;
  if (err && err.code === 'session_invalid') showError('session', err);
  const shownHere = state.shown && state.shown.key === attempt.key;
  if (shownHere) {
    // The JPEG is up; only the raw view failed: contrast goes through the server.
    setStatus(`Contrast by the server (no raw view: ${err.message})`);
    return;
  }
  if (attempt.jpeg === 'pending') return; // the JPEG may still come
  showError('image', err);
  ui.image.dataset.frame = String(attempt.frame);
  setImageState('error');
  view.clear();
  state.shown = null;
  updateSpots();
  drawHistogram();
  playAdvanced();
}

function detectorFrom(info) {
  const w = info && info.window;
  if (w && w[0] === 0 && w[1] === 0) return [Math.round(w[2]), Math.round(w[3])];
  if (state.meta && state.meta.width_px && state.meta.height_px) return [state.meta.width_px, state.meta.height_px];
  return null;
}

function learnFrameRange(info) {
  const ds = state.dataset;
  if (!ds || ds.template || !info) return;
  if (info.firstFrame !== null && info.lastFrame !== null
    && (ds.provisional || ds.first_frame !== info.firstFrame || ds.last_frame !== info.lastFrame)) {
    ds.first_frame = info.firstFrame;
    ds.last_frame = info.lastFrame;
    ds.frames = info.lastFrame - info.firstFrame + 1;
    ds.provisional = false;
    updateFrameControls();
    renderInfo();
  }
}

function beforeDisplay(key, info) {
  const dims = detectorFrom(info);
  if (dims) view.setDetector(dims[0], dims[1]);
  if (!state.shown || state.shown.key !== key) view.clearTiles();
  clearError('image');
  clearError('session');
  learnFrameRange(info);
}

function markShown(key, n, source, info, raw) {
  state.shown = { key, frame: n, source, info, raw };
  ui.image.dataset.frame = String(n);
  ui.image.dataset.render = source;
  ui.image.dataset.path = frameRequest(state.dataset, n).path;
  setImageState('ready');
  setStatus(statusText(info, source));
  renderInfo();
  view.refreshHover();
  updateSpots();
  playAdvanced();
}

function statusText(info, source) {
  if (!info) return '';
  const parts = [];
  if (info.mean !== null) parts.push(`mean ${fmt(info.mean, 1)}`);
  if (info.max !== null) parts.push(`max ${info.max}`);
  if (info.saturated) parts.push(`${info.saturated} overloaded`);
  parts.push(source === 'raw' ? 'contrast in the page' : 'JPEG');
  return parts.join(' · ');
}

function displayBitmap(key, n, bitmap, info) {
  beforeDisplay(key, info);
  if (state.auto && info.black !== null && info.white !== null) {
    setLevels({ black: info.black, white: info.white }, 'server');
  }
  view.showBitmap(bitmap, info.window);
  markShown(key, n, 'jpeg', info, null);
  drawHistogram();
}

function displayRaw(key, n, { raw, info }) {
  beforeDisplay(key, info);
  if (state.auto) {
    if (info.black !== null && info.white !== null) setLevels({ black: info.black, white: info.white }, 'server');
    else setLevels(percentileLevels(raw), 'percentiles');
  }
  view.setColouring(state.levels || percentileLevels(raw), state.colormap);
  view.showRaw(raw, info.window);
  markShown(key, n, 'raw', info, raw);
  drawHistogram();
  requestTiles();
}

function prefetch() {
  const ds = state.dataset;
  if (!ds) return;
  neighbours(state.frame).forEach((f, i) => {
    const req = frameRequest(ds, f);
    const key = viewKey(req);
    if (rawCache.has(key) || frames.has(`raw|${key}`)) return;
    rawRequest(req, key, 1 - i * 0.1).catch(() => {});
  });
}

// ---------------------------------------------------------------- tiles

let tilesPending = false;

function requestTiles() {
  if (tilesPending) return;
  tilesPending = true;
  requestAnimationFrame(() => {
    tilesPending = false;
    fetchTiles();
  });
}

function fetchTiles() {
  const shown = state.shown;
  const want = shown && shown.key === state.wantKey ? view.wantedTiles() : null;
  if (!want) {
    tileRequests.cancelAll();
    updateBusy();
    return;
  }
  const req = frameRequest(state.dataset, shown.frame);
  const keyOf = (t) => `tile|${shown.key}|${t.key}`;
  const keys = new Set(want.tiles.map(keyOf));
  tileRequests.retain((k) => keys.has(k));
  want.tiles.forEach((t, i) => {
    if (view.hasTile(t.key)) return;
    const params = {
      esaf: state.esaf, path: req.path, frame: req.frame, size: want.size, zoom: want.zoom, x: t.col, y: t.row,
    };
    tileRequests.request(keyOf(t), (signal) => api.imageRaw(params, { signal }), { priority: want.tiles.length - i })
      .then(({ raw, info }) => {
        if (!state.shown || state.shown.key !== shown.key) return;
        view.putTile(t.key, want.zoom, t.col, t.row, raw, info.window);
        view.refreshHover();
      })
      .catch((err) => {
        if (api.isAbort(err)) return;
        if (err.code === 'session_invalid') showError('session', err);
        else setStatus(`A zoomed tile failed: ${err.message}`);
      })
      .finally(updateBusy);
  });
  updateBusy();
}

function updateBusy() {
  ui.busy.hidden = ui.image.dataset.state !== 'loading' && tileRequests.inFlight === 0;
}

// ---------------------------------------------------------------- spots

/**
 * Ask for the analysis of the frame shown, once its image is up (the image goes first on the
 * user's worker; an analysis of a frame flicked past is never asked for), or say why not.
 */
function updateSpots() {
  if (!ui.spots.checked) spotFinder.idle('off');
  else if (!state.dataset) spotFinder.idle('empty');
  // Not while playing: each frame would start an analysis the next one cancels, and the
  // worker would spend on spots the cores the frames need.
  else if (state.playing) spotFinder.idle('playing');
  else if (imageFailedHere()) spotFinder.idle('no-image');
  else if (!state.shown || state.shown.key !== state.wantKey) spotFinder.idle('waiting');
  else spotFinder.want(spotTarget(state.shown));
  syncSpots();
}

function imageFailedHere() {
  return ui.image.dataset.state === 'error' && ui.image.dataset.frame === String(state.frame);
}

function spotTarget(shown) {
  const req = frameRequest(state.dataset, shown.frame);
  return { key: shown.key, esaf: state.esaf, path: req.path, fileFrame: req.frame, frame: shown.frame };
}

/** Give the view the spots of the frame shown, never those of another frame. */
function syncSpots() {
  const hit = ui.spots.checked && state.shown ? spotFinder.get(state.shown.key) : null;
  view.setSpots(hit ? hit.spots : null);
}

// ---------------------------------------------------------------- contrast

function fmt(v, digits) {
  return Number.isInteger(v) ? String(v) : Number(v).toFixed(digits);
}

/** Set the levels; `source` says where they came from; `editing` is the input being typed in. */
function setLevels(levels, source, editing = null) {
  state.levels = normaliseLevels(levels);
  if (editing !== ui.black) ui.black.value = String(state.levels.black);
  if (editing !== ui.white) ui.white.value = String(state.levels.white);
  ui.levelSource.textContent = source === 'user' ? '' : `levels: ${source}`;
  ui.auto.setAttribute('aria-pressed', String(state.auto));
  ui.image.dataset.black = String(state.levels.black);
  ui.image.dataset.white = String(state.levels.white);
  view.setColouring(state.levels, state.colormap);
  drawHistogram();
}

/** The user changed levels or colour map: repaint in the page, or ask the server for a JPEG. */
function contrastChanged() {
  state.auto = false;
  ui.auto.setAttribute('aria-pressed', 'false');
  ui.image.dataset.colormap = state.colormap;
  view.setColouring(state.levels, state.colormap);
  updateUrl('replace');
  if (!state.shown || state.shown.source !== 'raw') serverRecolour();
}

let recolourTimer = null;

function serverRecolour() {
  clearTimeout(recolourTimer);
  recolourTimer = setTimeout(() => {
    const shown = state.shown;
    if (!shown || shown.source === 'raw' || shown.key !== state.wantKey) return;
    const req = frameRequest(state.dataset, shown.frame);
    const key = shown.key;
    jpegRequest(req, key).then(({ bitmap, info }) => {
      if (state.wantKey !== key || (state.shown && state.shown.source === 'raw')) return;
      displayBitmap(key, shown.frame, bitmap, info);
    }, (err) => showError('image', err));
  }, 150);
}

function readLevelInput(input) {
  const v = input.value.trim();
  if (v === '') return null;
  const n = Number(v);
  return Number.isFinite(n) ? Math.round(n) : null;
}

function onLevelInput(e) {
  const black = readLevelInput(ui.black);
  const white = readLevelInput(ui.white);
  if (black === null || white === null) return;
  state.auto = false;
  setLevels({ black, white }, 'user', e.type === 'input' ? e.target : null);
  contrastChanged();
}

function setAuto({ url = true } = {}) {
  state.auto = true;
  ui.auto.setAttribute('aria-pressed', 'true');
  const shown = state.shown;
  if (shown && shown.info && shown.info.black !== null && shown.info.white !== null) {
    setLevels({ black: shown.info.black, white: shown.info.white }, 'server');
  } else if (shown && shown.raw) {
    setLevels(percentileLevels(shown.raw), 'percentiles');
  }
  if (url) updateUrl('replace');
  if (shown && shown.source !== 'raw') serverRecolour();
}

// ---------------------------------------------------------------- histogram

const hist = { raw: null, data: null, drag: null, stale: false, pending: false };

function histogramFor(raw, fresh = false) {
  if (!raw) return null;
  if (!fresh && hist.raw === raw && hist.data) return hist.data;
  const stats = rawStats(raw);
  const lo = Math.min(stats.min, state.levels ? state.levels.white : stats.min);
  const p999 = stats.sorted.length ? percentile(stats.sorted, 99.9) : stats.max;
  let hi = Math.max(p999, state.levels ? state.levels.black : 0) * 1.25;
  hi = Math.max(Math.min(hi, Math.max(stats.max, state.levels ? state.levels.black : 0)), lo + 1);
  hist.raw = raw;
  hist.data = histogram(raw, lo, hi, 200);
  return hist.data;
}

/** Draw the histogram after the image's next paint (the image first; calls coalesce). */
function drawHistogram() {
  if (hist.pending) return;
  hist.pending = true;
  requestAnimationFrame(() => setTimeout(() => {
    hist.pending = false;
    paintHistogram();
  }, 0));
}

function paintHistogram() {
  const canvas = ui.histogram;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, w, h);
  const raw = state.shown && state.shown.raw;
  const data = raw ? histogramFor(raw, hist.stale) : null;
  hist.stale = false;
  ctx.font = `${10 * dpr}px system-ui, sans-serif`;
  if (!data) {
    ctx.fillStyle = '#8a93a3';
    ctx.fillText(state.shown ? 'Histogram when the raw view arrives' : 'No image', 8 * dpr, h / 2);
    return;
  }
  const barH = h - 16 * dpr;
  const rampH = 5 * dpr;
  let max = 0;
  for (const c of data.counts) if (c > max) max = c;
  const logMax = Math.log10(1 + max) || 1;
  const bw = w / data.bins;
  ctx.fillStyle = '#5d6b82';
  for (let i = 0; i < data.bins; i++) {
    const c = data.counts[i];
    if (!c) continue;
    const bh = (Math.log10(1 + c) / logMax) * (barH - 4 * dpr);
    ctx.fillRect(i * bw, barH - bh, Math.max(1, bw - 0.5), bh);
  }
  // The colour ramp between the levels, under the bars.
  const xOf = (v) => ((v - data.lo) / (data.hi - data.lo)) * w;
  const lv = state.levels || { black: data.hi, white: data.lo };
  for (let x = 0; x < w; x += 2) {
    const v = data.lo + (x / w) * (data.hi - data.lo);
    const t = Math.min(Math.max((v - lv.white) / Math.max(lv.black - lv.white, 1), 0), 1);
    ctx.fillStyle = rampCss(state.colormap, t);
    ctx.fillRect(x, barH + 1 * dpr, 2, rampH);
  }
  // Markers.
  // Markers; the white level's label left of its line, the black level's right of it,
  // the second one lower down when they would overlap.
  const marker = (v, colour, label, side, taken = null) => {
    const x = Math.min(Math.max(xOf(v), 1), w - 1);
    ctx.fillStyle = colour;
    ctx.fillRect(x - dpr, 0, 2 * dpr, barH);
    ctx.beginPath();
    ctx.moveTo(x - 5 * dpr, 0);
    ctx.lineTo(x + 5 * dpr, 0);
    ctx.lineTo(x, 7 * dpr);
    ctx.fill();
    const tw = ctx.measureText(label).width;
    let tx = side < 0 ? x - 4 * dpr - tw : x + 4 * dpr;
    tx = Math.min(Math.max(tx, 2 * dpr), w - tw - 2 * dpr);
    const overlaps = taken && tx < taken[1] + 4 * dpr && tx + tw > taken[0] - 4 * dpr;
    ctx.fillText(label, tx, (overlaps ? 30 : 18) * dpr);
    return [tx, tx + tw];
  };
  const whiteLabel = marker(lv.white, '#e8ecf2', `W ${lv.white}`, -1);
  marker(lv.black, '#ffc428', `B ${lv.black}`, 1, whiteLabel);
  ctx.fillStyle = '#8a93a3';
  ctx.fillText(String(Math.round(data.lo)), 2 * dpr, h - 2 * dpr);
  const hiText = String(Math.round(data.hi));
  ctx.fillText(hiText, w - ctx.measureText(hiText).width - 2 * dpr, h - 2 * dpr);
}

function bindHistogram() {
  const canvas = ui.histogram;
  const valueAt = (e) => {
    const data = hist.data;
    const rect = canvas.getBoundingClientRect();
    const t = Math.min(Math.max((e.clientX - rect.left) / rect.width, 0), 1);
    return Math.round(data.lo + t * (data.hi - data.lo));
  };
  canvas.addEventListener('pointerdown', (e) => {
    if (!hist.data || !state.levels || !(state.shown && state.shown.raw)) return;
    const v = valueAt(e);
    const which = Math.abs(v - state.levels.white) <= Math.abs(v - state.levels.black) ? 'white' : 'black';
    hist.drag = which;
    canvas.setPointerCapture(e.pointerId);
    move(e);
  });
  const move = (e) => {
    if (!hist.drag) return;
    const v = valueAt(e);
    const next = { ...state.levels };
    if (hist.drag === 'white') next.white = Math.min(v, next.black - 1);
    else next.black = Math.max(v, next.white + 1);
    state.auto = false;
    setLevels(next, 'user');
    contrastChanged();
  };
  canvas.addEventListener('pointermove', move);
  const end = () => {
    if (!hist.drag) return;
    hist.drag = null;
    hist.stale = true;
    drawHistogram();
  };
  canvas.addEventListener('pointerup', end);
  canvas.addEventListener('pointercancel', end);
}

// ---------------------------------------------------------------- readout

function onHover(x, y) {
  if (x === null || x === undefined) {
    ui.readoutX.textContent = '–';
    ui.readoutY.textContent = '–';
    ui.readoutValue.textContent = '–';
    ui.readoutBox.textContent = '';
    ui.readoutResolution.textContent = '–';
    return;
  }
  ui.readoutX.textContent = String(x);
  ui.readoutY.textContent = String(y);
  const s = view.sample(x, y);
  if (!s) {
    ui.readoutValue.textContent = '–';
    ui.readoutBox.textContent = '';
  } else {
    ui.readoutValue.textContent = s.flag === 1 ? 'masked' : s.flag >= 2 ? 'overload' : String(s.value);
    const bw = Math.round(s.boxW);
    const bh = Math.round(s.boxH);
    ui.readoutBox.textContent = bw > 1 || bh > 1 ? ` (max of ${bw}×${bh} px)` : '';
  }
  const d = state.meta ? resolutionAt(state.meta, x + 0.5, y + 0.5) : NaN;
  ui.readoutResolution.textContent = Number.isFinite(d) ? d.toFixed(2) : d === Infinity ? '∞' : '–';
}

// ---------------------------------------------------------------- datasets and metadata

function datasetId(ds) {
  return ds ? datasetUrlPath(ds) : null;
}

let metaController = null;

function loadMeta() {
  const ds = state.dataset;
  if (metaController) metaController.abort();
  const controller = new AbortController();
  metaController = controller;
  const req = frameRequest(ds, state.frame);
  const id = datasetId(ds);
  state.meta = null;
  view.setGeometry(null);
  api.meta(state.esaf, req.path, req.frame, { signal: controller.signal }).then((m) => {
    if (datasetId(state.dataset) !== id) return;
    state.meta = m;
    view.setGeometry(m);
    if (m.width_px && m.height_px && !view.width) view.setDetector(m.width_px, m.height_px);
    const cur = state.dataset;
    if (!cur.template && Number.isFinite(m.first_frame) && Number.isFinite(m.last_frame)) {
      cur.first_frame = m.first_frame;
      cur.last_frame = m.last_frame;
      cur.frames = m.last_frame - m.first_frame + 1;
      cur.provisional = false;
      updateFrameControls();
    }
    clearError('meta');
    const missing = !view.geometry;
    ui.geometryNote.hidden = !missing;
    ui.geometryNote.textContent = missing ? 'This file does not give the full geometry: no rings or resolution.' : '';
    renderInfo();
  }, (err) => {
    if (api.isAbort(err)) return;
    if (err.code === 'session_invalid') showError('session', err);
    ui.geometryNote.hidden = false;
    ui.geometryNote.textContent = `No geometry: ${err.message}`;
    renderInfo();
  });
}

/** Open a dataset (a listing entry) at `frame` (default its first). */
function openDataset(ds, frame, { history = 'push' } = {}) {
  const changed = datasetId(ds) !== datasetId(state.dataset);
  state.dataset = { ...ds };
  if (frame === null || frame === undefined) frame = Number.isFinite(ds.first_frame) ? ds.first_frame : 1;
  browser.setCurrent(datasetId(ds));
  if (changed) {
    state.frame = clampFrame(frame);
    state.wantKey = null;
    tileRequests.cancelAll();
    loadMeta();
  }
  showFrame(frame, { history });
  renderInfo();
}

/** Adopt a fuller listing entry for the dataset shown (same identity), keeping the frame. */
function refineDataset(entry) {
  if (!state.dataset || datasetId(entry) !== datasetId(state.dataset)) return;
  state.dataset = { ...entry };
  updateFrameControls();
  renderInfo();
}

function renderInfo() {
  const ds = state.dataset;
  const m = state.meta;
  const rows = [];
  if (ds) {
    rows.push(['Name', ds.name || basename(ds.path)]);
    rows.push([ds.template ? 'Template' : 'File', ds.template || ds.path]);
    const b = frameBounds();
    if (b.known) rows.push(['Frames', `${b.first}–${b.last}`]);
  }
  if (m) {
    if (m.detector) rows.push(['Detector', m.detector]);
    if (m.width_px && m.height_px) rows.push(['Size', `${m.width_px} × ${m.height_px} px`]);
    if (Number.isFinite(m.wavelength_a)) rows.push(['Wavelength', `${m.wavelength_a.toFixed(4)} Å`]);
    if (Number.isFinite(m.photon_energy_ev)) rows.push(['Energy', `${(m.photon_energy_ev / 1000).toFixed(3)} keV`]);
    if (Number.isFinite(m.distance_m)) rows.push(['Distance', `${(m.distance_m * 1000).toFixed(1)} mm`]);
    if (Number.isFinite(m.beam_center_x_px) && Number.isFinite(m.beam_center_y_px)) {
      rows.push(['Beam', `${m.beam_center_x_px.toFixed(1)}, ${m.beam_center_y_px.toFixed(1)} px`]);
    }
    if (Number.isFinite(m.pixel_size_x_m)) rows.push(['Pixel', `${(m.pixel_size_x_m * 1e6).toFixed(0)} µm`]);
    if (Number.isFinite(m.exposure_time_s)) rows.push(['Exposure', `${Number(m.exposure_time_s.toPrecision(4))} s`]);
    if (Number.isFinite(m.saturation_value)) rows.push(['Saturation', String(m.saturation_value)]);
  }
  if (state.meta && view.geometry) {
    const corner = Math.min(
      ...[[0, 0], [view.width, 0], [0, view.height], [view.width, view.height]]
        .map(([x, y]) => resolutionAt(state.meta, x, y)),
    );
    if (Number.isFinite(corner)) rows.push(['Corner d', `${corner.toFixed(2)} Å`]);
  }
  const nodes = [];
  for (const [k, v] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    nodes.push(dt, dd);
  }
  ui.info.replaceChildren(...nodes);
}

/** List a directory in the browser; `quiet`: failures only as the browser's status. */
async function loadDir(dir, { quiet = false } = {}) {
  state.dir = dir;
  try {
    const listing = await browser.load(state.esaf, dir);
    if (state.dir === dir) state.dir = listing.dir || dir;
    clearError('list');
    try { localStorage.setItem(`imageserver.dir.${state.esaf}`, state.dir); } catch (_) { /* private mode */ }
    return listing;
  } catch (err) {
    if (api.isAbort(err)) return null;
    if (!quiet || err.code === 'session_invalid') showError('list', err);
    return null;
  }
}

// ---------------------------------------------------------------- URL

function parseUrl() {
  // A '#' in an unencoded template ends the query: take it back from the fragment.
  const text = location.search.slice(1) + (location.hash ? location.hash.replace(/#/g, '%23') : '');
  const q = new URLSearchParams(text);
  const int = (name) => {
    const v = q.get(name);
    if (v === null || v.trim() === '') return null;
    const n = Number(v);
    return Number.isFinite(n) ? Math.round(n) : null;
  };
  return {
    esaf: int('esaf'),
    path: q.get('path') || null,
    dir: q.get('dir') || null,
    frame: int('frame'),
    black: int('black'),
    white: int('white'),
    colormap: q.get('colormap'),
  };
}

function urlFor() {
  const q = new URLSearchParams();
  q.set('esaf', String(state.esaf));
  if (state.dataset) {
    q.set('path', datasetUrlPath(state.dataset));
    q.set('frame', String(state.frame));
  } else if (state.dir) {
    q.set('dir', state.dir);
  }
  if (!state.auto && state.levels) {
    q.set('black', String(state.levels.black));
    q.set('white', String(state.levels.white));
  }
  if (state.colormap !== 'grey') q.set('colormap', state.colormap);
  return `${location.pathname}?${q}`;
}

/** 'push' adds a history entry (merged with one made moments ago); 'replace' does not. */
function updateUrl(mode) {
  const url = urlFor();
  const now = performance.now();
  if (url === location.pathname + location.search && !location.hash) return;
  if (mode === 'push' && now - state.lastUrlChange > HISTORY_MERGE_MS) history.pushState(null, '', url);
  else history.replaceState(null, '', url);
  state.lastUrlChange = now;
}

async function applyUrl({ initial = false } = {}) {
  const p = parseUrl();
  if (p.esaf !== null && p.esaf !== state.esaf) setEsaf(p.esaf, { reload: false });
  if (p.colormap && ['grey', 'inverse', 'heat', 'viridis'].includes(p.colormap)) state.colormap = p.colormap;
  else state.colormap = 'grey';
  ui.colormap.value = state.colormap;
  ui.image.dataset.colormap = state.colormap;
  if (p.black !== null && p.white !== null) {
    state.auto = false;
    setLevels({ black: p.black, white: p.white }, 'user');
  } else if (!initial && !state.auto) {
    setAuto({ url: false }); // the URL is the one being restored: leave it
  }

  if (p.path) {
    const urlPath = p.path;
    const frame = p.frame;
    if (state.dataset && datasetId(state.dataset) === urlPath) {
      showFrame(frame ?? state.frame, { history: 'none' });
    } else {
      // Show at once from what the URL says; the listing fills in the frame range.
      const template = isTemplate(urlPath);
      const f = frame ?? 1;
      openDataset({
        name: basename(urlPath),
        path: template ? frameFile(urlPath, f) : urlPath,
        template: template ? urlPath : null,
        first_frame: null,
        last_frame: null,
        frames: null,
        provisional: true,
      }, f, { history: 'none' });
    }
    const dir = dirname(urlPath);
    const listing = state.dir === dir && browser.listing && browser.listing.dir === dir
      ? browser.listing
      : await loadDir(dir, { quiet: false });
    const hit = findDataset(listing, urlPath);
    if (hit && datasetId(state.dataset) === urlPath) {
      if (datasetId(hit.dataset) === urlPath) refineDataset(hit.dataset);
      else openDataset(hit.dataset, hit.frame, { history: 'replace' }); // a file of a run
    }
    return;
  }
  if (state.dataset) {
    state.dataset = null;
    state.shown = null;
    state.wantKey = null;
    frames.cancelAll();
    tileRequests.cancelAll();
    view.clear();
    updateSpots();
    ui.placeholder.hidden = false;
    setImageState('empty');
    updateFrameControls();
    renderInfo();
  }
  let dir = p.dir;
  let quiet = false;
  if (!dir) {
    try { dir = localStorage.getItem(`imageserver.dir.${state.esaf}`); } catch (_) { dir = null; }
    quiet = true;
    dir = dir || '.';
  }
  await loadDir(dir, { quiet });
}

// ---------------------------------------------------------------- ESAF

function fillEsafs(esafs, login = state.login) {
  state.esafs = esafs;
  state.login = login;
  ui.login.textContent = login ? `as ${login}` : '';
  const values = [...new Set([0, ...esafs, state.esaf])];
  ui.esaf.replaceChildren(...values.map((v) => {
    const o = document.createElement('option');
    o.value = String(v);
    o.textContent = v === 0 ? 'none (0)' : String(v);
    return o;
  }));
  ui.esaf.value = String(state.esaf);
}

function setEsaf(esaf, { reload = true } = {}) {
  state.esaf = esaf;
  if (![...ui.esaf.options].some((o) => o.value === String(esaf))) fillEsafs(state.esafs);
  ui.esaf.value = String(esaf);
  if (!reload) return;
  frames.cancelAll();
  tileRequests.cancelAll();
  if (state.dir) loadDir(state.dir);
  if (state.dataset) {
    state.wantKey = null;
    state.shown = null;
    loadMeta();
    showFrame(state.frame, { history: 'push' });
  } else {
    updateUrl('push');
  }
}

// ---------------------------------------------------------------- play and follow

let frameTyped = false; // the frame-number input holds what the user typed, not yet entered
let playTimer = null;
let lastAdvance = 0;

function setPlaying(on) {
  state.playing = on;
  ui.play.setAttribute('aria-pressed', String(on));
  ui.play.textContent = on ? '❚❚' : '▶';
  ui.play.title = on ? 'Pause (space)' : 'Play (space)';
  ui.play.setAttribute('aria-label', on ? 'Pause' : 'Play');
  clearTimeout(playTimer);
  if (on) {
    if (state.follow) setFollow(false);
    state.direction = 1;
    lastAdvance = 0;
    playTick();
  } else {
    updateUrl('push');
  }
  updateSpots();
}

function playAdvanced() {
  if (state.playing) playTick();
}

function playTick() {
  clearTimeout(playTimer);
  if (!state.playing || !state.dataset) return;
  const period = 1000 / Number(ui.fps.value || 5);
  const settled = ui.image.dataset.state !== 'loading';
  const now = performance.now();
  if (settled && now - lastAdvance >= period) {
    const b = frameBounds();
    let next = state.frame + 1;
    if (b.known && next > b.last) next = b.first;
    lastAdvance = now;
    showFrame(next, { history: 'replace' });
    playTimer = setTimeout(playTick, period);
  } else {
    playTimer = setTimeout(playTick, settled ? period - (now - lastAdvance) : 20);
  }
}

let followTimer = null;
let followController = null;

function setFollow(on) {
  state.follow = on;
  ui.follow.checked = on;
  clearTimeout(followTimer);
  if (followController) followController.abort();
  if (on) {
    if (state.playing) setPlaying(false);
    pollLatest();
  } else {
    clearError('follow');
  }
}

async function pollLatest() {
  if (!state.follow) return;
  const started = performance.now();
  const dir = state.dir;
  if (dir) {
    const controller = new AbortController();
    followController = controller;
    try {
      const r = await api.latest(state.esaf, dir, { signal: controller.signal });
      if (!state.follow || controller.signal.aborted) return;
      clearError('follow');
      if (r && r.dataset && r.frame !== null && r.frame !== undefined) {
        const ds = r.dataset;
        if (datasetId(ds) !== datasetId(state.dataset)) {
          openDataset(ds, r.frame, { history: 'replace' });
          const listed = browser.listing && (browser.listing.datasets || []).some((d) => datasetId(d) === datasetId(ds));
          if (!listed) loadDir(dir, { quiet: true });
        } else {
          const cur = state.dataset;
          if (Number.isFinite(ds.last_frame) && ds.last_frame !== cur.last_frame) refineDataset(ds);
          if (r.frame !== state.frame) showFrame(r.frame, { history: 'replace' });
        }
      }
    } catch (err) {
      if (!api.isAbort(err)) showError('follow', err);
    }
  }
  if (!state.follow) return;
  const wait = Math.max(50, FOLLOW_PERIOD_MS - (performance.now() - started));
  followTimer = setTimeout(pollLatest, wait);
}

/** A user moved through frames or datasets by hand: stop following. */
function byHand() {
  if (state.follow) setFollow(false);
}

// ---------------------------------------------------------------- wiring

let view = null;
view = new ImageView({
  stage: ui.stage,
  canvas: ui.image,
  overlay: ui.overlay,
  onHover: (x, y) => onHover(x, y),
  onViewChange: () => {
    if (!view) return;
    const z = view.zoom;
    ui.zoomLevel.textContent = `×${z < 10 ? z.toFixed(1) : Math.round(z)}`;
    if (state && state.shown) requestTiles();
  },
});

const spotFinder = new SpotAnalysis(ui.analysis, { onResult: () => syncSpots() });

const browser = new DatasetBrowser($('browser'), {
  onOpenDir: (dir) => {
    loadDir(dir);
    if (!state.dataset) updateUrl('push');
  },
  onOpenDataset: (ds) => {
    byHand();
    openDataset(ds, null, { history: 'push' });
  },
});

function step(delta) {
  if (!state.dataset) return;
  byHand();
  showFrame(state.frame + delta, { history: 'push' });
}

function goTo(n) {
  if (!state.dataset) return;
  byHand();
  showFrame(n, { history: 'push' });
}

function bind() {
  ui.first.addEventListener('click', () => goTo(frameBounds().first));
  ui.last.addEventListener('click', () => goTo(frameBounds().last));
  ui.prev.addEventListener('click', () => step(-1));
  ui.next.addEventListener('click', () => step(1));
  ui.play.addEventListener('click', () => setPlaying(!state.playing));
  ui.fps.addEventListener('change', () => playAdvanced());
  ui.follow.addEventListener('change', () => setFollow(ui.follow.checked));

  ui.slider.addEventListener('input', () => goTo(Number(ui.slider.value)));
  ui.frameNumber.addEventListener('input', () => { frameTyped = true; });
  const frameEntered = () => {
    if (!frameTyped) return;
    frameTyped = false;
    const v = ui.frameNumber.value.trim();
    if (v === '' || !Number.isFinite(Number(v))) {
      ui.frameNumber.value = String(state.frame);
      return;
    }
    const n = Math.round(Number(v));
    if (n !== state.frame || !state.shown) goTo(n);
    ui.frameNumber.value = String(state.frame);
  };
  ui.frameNumber.addEventListener('change', frameEntered);
  ui.frameNumber.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      frameEntered();
    }
  });

  ui.black.addEventListener('input', onLevelInput);
  ui.white.addEventListener('input', onLevelInput);
  ui.black.addEventListener('change', onLevelInput);
  ui.white.addEventListener('change', onLevelInput);
  ui.colormap.addEventListener('change', () => {
    state.colormap = ui.colormap.value;
    ui.image.dataset.colormap = state.colormap;
    view.setColouring(state.levels || { black: 1, white: 0 }, state.colormap);
    drawHistogram();
    updateUrl('replace');
    if (!state.shown || state.shown.source !== 'raw') serverRecolour();
  });
  ui.auto.addEventListener('click', () => setAuto());

  const overlays = () => view.setOverlays({
    rings: ui.rings.checked, ice: ui.ice.checked, beam: ui.beam.checked, spots: ui.spots.checked,
  });
  ui.rings.addEventListener('change', overlays);
  ui.ice.addEventListener('change', overlays);
  ui.beam.addEventListener('change', overlays);
  ui.spots.addEventListener('change', () => {
    overlays();
    updateSpots();
  });
  overlays();

  ui.zoomIn.addEventListener('click', () => view.zoomBy(2));
  ui.zoomOut.addEventListener('click', () => view.zoomBy(0.5));
  ui.zoomFit.addEventListener('click', () => view.fit());

  ui.esaf.addEventListener('change', () => {
    byHand();
    setEsaf(Number(ui.esaf.value));
  });

  document.addEventListener('keydown', (e) => {
    if (e.defaultPrevented || e.altKey || e.ctrlKey || e.metaKey) return;
    const t = e.target;
    const tag = t && t.tagName;
    const typing = tag === 'TEXTAREA' || tag === 'SELECT' || (t && t.isContentEditable)
      || (tag === 'INPUT' && !['checkbox', 'radio', 'button'].includes(t.type));
    if (typing) return;
    const actions = {
      ArrowRight: () => step(1),
      ArrowLeft: () => step(-1),
      PageUp: () => step(10),
      PageDown: () => step(-10),
      Home: () => goTo(frameBounds().first),
      End: () => goTo(frameBounds().last),
      '+': () => view.zoomBy(2),
      '=': () => view.zoomBy(2),
      '-': () => view.zoomBy(0.5),
      0: () => view.fit(),
    };
    if (e.key === ' ' && tag !== 'BUTTON' && tag !== 'INPUT') {
      e.preventDefault();
      setPlaying(!state.playing);
      return;
    }
    const act = actions[e.key];
    if (!act) return;
    e.preventDefault();
    act();
  });

  window.addEventListener('popstate', () => {
    byHand();
    applyUrl();
  });
  window.addEventListener('resize', () => drawHistogram());
  bindHistogram();
}

async function start() {
  bind();
  updateFrameControls();
  renderError();
  setImageState('empty');
  const p = parseUrl();
  const who = api.whoami().then((w) => {
    const esafs = Array.isArray(w.esafs) ? w.esafs.map(Number).filter(Number.isFinite) : [];
    if (p.esaf === null && esafs.length && !state.dataset && state.esaf === 0) state.esaf = esafs[0];
    fillEsafs(esafs, w.login);
    clearError('whoami');
    return true;
  }, (err) => {
    fillEsafs([], null);
    showError('whoami', err);
    return false;
  });
  // Without an ESAF in the URL, wait for the session's list to choose one.
  if (p.esaf === null && !p.path) await who;
  else if (p.esaf !== null) state.esaf = p.esaf;
  fillEsafs(state.esafs);
  who.then(() => { ui.esaf.value = String(state.esaf); });
  await applyUrl({ initial: true });
  if (!p.path) updateUrl('replace');
}

start();
