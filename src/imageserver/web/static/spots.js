// Spot finding of the frame shown: /api/v1/analysis (DIALS's per-image analysis) for one
// frame at a time, and its summary in the sidebar. A new frame costs the user's worker
// 0.1–1 s of spot finding, so nothing is prefetched and a request for a frame no longer shown
// is cancelled: at most one analysis is ever in flight.

import * as api from './api.js';

const KEPT = 32; // analyses kept in the page: stepping back shows them without a request

/** `analysis` with only spots that can be drawn (finite centroids), or throws in words. */
export function checkedAnalysis(analysis) {
  if (!analysis || !Array.isArray(analysis.spots)) {
    throw new api.ApiError('The image server sent an analysis without a spot list', { code: 'bad_reply' });
  }
  const spots = analysis.spots.filter((s) => s && Number.isFinite(s.x) && Number.isFinite(s.y));
  return { ...analysis, spots };
}

/** A count for the summary: DIALS's −1 (and anything missing) as a dash. */
function count(v) {
  return Number.isFinite(v) && v >= 0 ? String(v) : '—';
}

/** A resolution for the summary in Å, a dash for DIALS's −1 ("not estimated"). */
function resolution(v) {
  return Number.isFinite(v) && v > 0 ? `${v.toFixed(2)} Å` : '—';
}

const ROWS = [
  ['n_spots_total', 'Spots', count],
  ['n_spots_no_ice', 'Without ice', count],
  ['n_spots_4A', 'At 4 Å', count],
  ['estimated_d_min', 'Estimated d_min', resolution],
];

export class SpotAnalysis {
  /**
   * panel: the summary's element; onResult(key, analysis) when the analysis wanted arrives
   * (also from the page's own cache).
   */
  constructor(panel, { onResult }) {
    this.panel = panel;
    this.onResult = onResult;
    this.cache = new Map(); // key → analysis, oldest first
    this.target = null; // the analysis wanted now (as `want` takes it)
    this.controller = null; // of the one request in flight
    this.idle('off');
  }

  /** The analysis of this frame is kept in the page (no request needed). */
  get(key) {
    return this.cache.get(key) || null;
  }

  /**
   * Want the analysis of `target`: {key, esaf, path, fileFrame (the request's), frame (the
   * viewer's)}. Anything else in flight is cancelled. The frame wanted already is left as it
   * is: running, shown, or failed (a failure is not retried for each repaint of its image;
   * turning Spots off and on again retries).
   */
  want(target) {
    if (this.target && this.target.key === target.key) return;
    this.cancel();
    this.target = target;
    const hit = this.cache.get(target.key);
    if (hit) {
      this.show(target, hit);
      return;
    }
    this.fetch(target);
  }

  /**
   * No analysis wanted: cancel what is in flight and say why. state: 'off' (the toggle),
   * 'waiting' (for the frame's image, which goes first), 'empty' (nothing open), 'no-image'
   * (the frame's image failed: its error is the banner's), 'playing'.
   */
  idle(state) {
    this.cancel();
    this.target = null;
    const words = {
      off: 'Turn on Spots to find the spots of the frame shown.',
      waiting: 'finding spots…',
      empty: 'No frame shown.',
      'no-image': 'No image, so no spots.',
      playing: 'Spots when play stops.',
    };
    this.render(state, null, words[state] || '');
  }

  cancel() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  fetch(target) {
    const controller = new AbortController();
    this.controller = controller;
    this.render('loading', target, 'finding spots…');
    const params = { esaf: target.esaf, path: target.path, frame: target.fileFrame };
    api.getJson('analysis', params, { signal: controller.signal })
      .then(checkedAnalysis)
      .then((analysis) => {
        this.remember(target.key, analysis);
        if (this.controller !== controller) return; // cancelled meanwhile
        this.controller = null;
        this.show(target, analysis);
      }, (err) => {
        if (api.isAbort(err) || this.controller !== controller) return;
        this.controller = null;
        this.render('error', target, `No spots: ${err.message}`);
      });
  }

  remember(key, analysis) {
    this.cache.delete(key);
    this.cache.set(key, analysis);
    while (this.cache.size > KEPT) this.cache.delete(this.cache.keys().next().value);
  }

  show(target, analysis) {
    this.renderSummary(target, analysis);
    this.onResult(target.key, analysis);
  }

  // ------------------------------------------------------------ the panel

  /** The panel's state and frame as attributes (what tests and styles key on), then `text`. */
  render(state, target, text) {
    this.mark(state, target);
    const p = document.createElement('p');
    p.className = state === 'error' ? 'analysis-error' : 'muted small';
    p.textContent = text;
    this.panel.replaceChildren(p);
  }

  renderSummary(target, analysis) {
    this.mark('ready', target);
    const dl = document.createElement('dl');
    dl.className = 'info';
    for (const [field, label, format] of ROWS) {
      const dt = document.createElement('dt');
      dt.textContent = label;
      const dd = document.createElement('dd');
      dd.dataset.field = field;
      dd.textContent = format(analysis[field]);
      dl.append(dt, dd);
    }
    this.panel.replaceChildren(dl);
  }

  mark(state, target) {
    const d = this.panel.dataset;
    d.state = state;
    if (target) {
      d.frame = String(target.frame);
      d.path = target.path;
    } else {
      delete d.frame;
      delete d.path;
    }
  }
}
