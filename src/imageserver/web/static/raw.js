// Raw views: decoding, statistics, colour maps, and the pure geometry the viewer needs.
// No DOM here: every function is testable under node.

export const FLAG_OK = 0;
export const FLAG_MASKED = 1;
export const FLAG_SATURATED = 2;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const MAX_SPAN = 2 ** 40; // as the server's kernel: a wider span changes no index
const MAX_WHITE = 2 ** 33;

/** "h,w" → [h, w]; throws on anything else. */
export function parseShape(text) {
  const parts = String(text || '').split(',').map((s) => s.trim());
  if (parts.length !== 2 || !parts.every((p) => /^\d+$/.test(p))) {
    throw new Error(`bad raw shape ${JSON.stringify(text)}`);
  }
  return [Number(parts[0]), Number(parts[1])];
}

/** "x0,y0,x1,y1" → [x0, y0, x1, y1] (numbers), or null. */
export function parseWindow(text) {
  if (!text) return null;
  const parts = String(text).split(',').map(Number);
  if (parts.length !== 4 || !parts.every(Number.isFinite)) return null;
  if (!(parts[2] > parts[0] && parts[3] > parts[1])) return null;
  return parts;
}

/**
 * Decode the body of a format=raw image: the values as byte planes (every pixel's least
 * significant byte, then every pixel's next byte, … for the dtype's size), then height ×
 * width flag bytes. Byte planes compress 2–3× faster than interleaved values (the high
 * planes are nearly all zero). Returns {width, height, dtype, values, flags, maxValue}.
 */
export function decodeRaw(buffer, dtype, shapeText) {
  const [height, width] = parseShape(shapeText);
  let itemsize;
  if (dtype === 'uint16') itemsize = 2;
  else if (dtype === 'uint32') itemsize = 4;
  else throw new Error(`unknown raw dtype ${JSON.stringify(dtype)}`);
  const n = height * width;
  const expected = n * (itemsize + 1);
  if (buffer.byteLength !== expected) {
    throw new Error(
      `raw view of ${width} × ${height} ${dtype} should be ${expected} bytes, got ${buffer.byteLength}`,
    );
  }
  const values = itemsize === 2 ? new Uint16Array(n) : new Uint32Array(n);
  const bytes = new Uint8Array(buffer, 0, n * itemsize);
  let maxValue = 0;
  if (itemsize === 2) {
    const low = bytes.subarray(0, n);
    const high = bytes.subarray(n, 2 * n);
    for (let i = 0; i < n; i++) {
      const v = low[i] | (high[i] << 8);
      values[i] = v;
      if (v > maxValue) maxValue = v;
    }
  } else {
    const b0 = bytes.subarray(0, n);
    const b1 = bytes.subarray(n, 2 * n);
    const b2 = bytes.subarray(2 * n, 3 * n);
    const b3 = bytes.subarray(3 * n, 4 * n);
    for (let i = 0; i < n; i++) {
      const v = (b0[i] | (b1[i] << 8) | (b2[i] << 16) | (b3[i] << 24)) >>> 0;
      values[i] = v;
      if (v > maxValue) maxValue = v;
    }
  }
  const flags = new Uint8Array(buffer, n * itemsize, n);
  return { width, height, dtype, values, flags, maxValue };
}

/** Linear-interpolated percentile (numpy's default) of an ascending array; p in 0..100. */
export function percentile(sorted, p) {
  const n = sorted.length;
  if (n === 0) return NaN;
  const pos = (Math.min(Math.max(p, 0), 100) / 100) * (n - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, n - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/**
 * Statistics of the usable (flag 0) pixels: min, max, count, and a sorted sample (every
 * pixel up to `maxSample`, an even stride beyond) for percentiles. Kept on the raw object.
 */
export function rawStats(raw, maxSample = 1 << 17) {
  if (raw.stats) return raw.stats;
  const { values, flags } = raw;
  const n = values.length;
  let count = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    if (flags[i] !== FLAG_OK) continue;
    const v = values[i];
    count++;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const stride = Math.max(1, Math.ceil(count / maxSample));
  const sample = new Float64Array(Math.ceil(count / stride));
  let k = 0;
  let seen = 0;
  for (let i = 0; i < n; i++) {
    if (flags[i] !== FLAG_OK) continue;
    if (seen++ % stride === 0 && k < sample.length) sample[k++] = values[i];
  }
  const sorted = sample.subarray(0, k).sort();
  raw.stats = { count, min: count ? min : 0, max: count ? max : 0, sorted };
  return raw.stats;
}

/** Client-side default levels: white = 10th, black = 99.5th percentile of usable pixels. */
export function percentileLevels(raw) {
  const { sorted } = rawStats(raw);
  if (!sorted.length) return { black: 1, white: 0 };
  return normaliseLevels({
    black: Math.ceil(percentile(sorted, 99.5)),
    white: Math.floor(percentile(sorted, 10)),
  });
}

/** Integer levels with white ≥ 0 and black > white, as the server clamps them. */
export function normaliseLevels({ black, white }) {
  let w = Math.max(0, Math.round(Number(white) || 0));
  let b = Math.round(Number(black));
  if (!Number.isFinite(b)) b = w + 1;
  if (b <= w) b = w + 1;
  return { black: b, white: w };
}

/**
 * Histogram of usable pixels over [lo, hi] in `bins` equal bins; values above hi are counted
 * in `above`, below lo in `below`.
 */
export function histogram(raw, lo, hi, bins = 256) {
  const counts = new Float64Array(bins);
  const { values, flags } = raw;
  const span = Math.max(hi - lo, 1e-9);
  const scale = bins / span;
  let above = 0;
  let below = 0;
  for (let i = 0; i < values.length; i++) {
    if (flags[i] !== FLAG_OK) continue;
    const v = values[i];
    if (v > hi) { above++; continue; }
    if (v < lo) { below++; continue; }
    let b = Math.floor((v - lo) * scale);
    if (b >= bins) b = bins - 1;
    counts[b]++;
  }
  return { counts, lo, hi, bins, above, below };
}

// ---------------------------------------------------------------- colour maps

function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** A 256-entry ramp through equally spaced knots (as imaging/colormaps.py ramp_lut). */
export function rampLut(knots) {
  const lut = new Uint8Array(256 * 3);
  const segments = knots.length - 1;
  for (let i = 0; i < 256; i++) {
    const pos = (i / 255) * segments;
    const k = Math.min(Math.floor(pos), segments - 1);
    const t = pos - k;
    for (let ch = 0; ch < 3; ch++) {
      const a = knots[k][ch];
      const b = knots[k + 1][ch];
      lut[i * 3 + ch] = Math.min(255, Math.max(0, roundHalfEven(a + (b - a) * t)));
    }
  }
  return lut;
}

const RED = [255, 0, 0];
const CYAN = [0, 255, 255];
const BLUE_GREY = [110, 125, 150];
const MID_GREY = [128, 128, 128];
const VIRIDIS_KNOTS = [
  [0x44, 0x01, 0x54], [0x48, 0x28, 0x78], [0x3e, 0x4a, 0x89], [0x31, 0x68, 0x8e],
  [0x26, 0x82, 0x8e], [0x1f, 0x9e, 0x89], [0x35, 0xb7, 0x79], [0x6d, 0xcd, 0x59],
  [0xb4, 0xde, 0x2c], [0xfd, 0xe7, 0x25],
];

/** The server's colour maps: index 0 = at or below white, 255 = at or above black. */
export const COLORMAPS = {
  grey: { label: 'Grey (film)', lut: rampLut([[255, 255, 255], [0, 0, 0]]), overload: RED, masked: BLUE_GREY },
  inverse: { label: 'Inverse', lut: rampLut([[0, 0, 0], [255, 255, 255]]), overload: RED, masked: BLUE_GREY },
  heat: {
    label: 'Heat',
    lut: rampLut([[0, 0, 0], [255, 0, 0], [255, 255, 0], [255, 255, 255]]),
    overload: CYAN,
    masked: BLUE_GREY,
  },
  viridis: { label: 'Viridis', lut: rampLut(VIRIDIS_KNOTS), overload: RED, masked: MID_GREY },
};

const paletteCache = new Map();

/** 258 colours packed for a little-endian RGBA Uint32 view: ramp, masked, overload. */
export function palette(name) {
  const key = COLORMAPS[name] ? name : 'grey';
  let pal = paletteCache.get(key);
  if (pal) return pal;
  const cm = COLORMAPS[key];
  const pack = (r, g, b) => (LITTLE_ENDIAN
    ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0
    : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0);
  pal = new Uint32Array(258);
  for (let i = 0; i < 256; i++) pal[i] = pack(cm.lut[i * 3], cm.lut[i * 3 + 1], cm.lut[i * 3 + 2]);
  pal[256] = pack(...cm.masked);
  pal[257] = pack(...cm.overload);
  paletteCache.set(key, pal);
  return pal;
}

/** The ramp index of a usable value (the server's ⌊255·(v − white)/(black − white)⌋, clamped). */
export function rampIndex(v, white, black) {
  const w = Math.min(Math.max(white, 0), MAX_WHITE);
  const span = Math.min(Math.max(black - w, 1), MAX_SPAN);
  const d = Math.min(Math.max(v - w, 0), span);
  return Math.floor((255 * d) / span);
}

/**
 * Colour the raw view into `out` (a Uint32Array over RGBA bytes, width × height):
 * flag 1 → masked colour, flag ≥ 2 → overload colour, else the ramp.
 */
export function colourise(raw, levels, cmapName, out) {
  const pal = palette(cmapName);
  const { values, flags } = raw;
  const n = values.length;
  const white = Math.min(Math.max(levels.white, 0), MAX_WHITE);
  const span = Math.min(Math.max(levels.black - white, 1), MAX_SPAN);
  const masked = pal[256];
  const overload = pal[257];
  const top = pal[255];
  const bottom = pal[0];
  // A table up to the black level (every value above it is the top colour): one lookup per
  // pixel while dragging.
  const limit = Math.min(raw.maxValue, white + span);
  if (limit <= (1 << 20)) {
    const table = new Uint32Array(limit + 1);
    for (let v = 0; v <= limit; v++) {
      const d = v - white;
      table[v] = d <= 0 ? bottom : d >= span ? top : pal[Math.floor((255 * d) / span)];
    }
    for (let i = 0; i < n; i++) {
      const f = flags[i];
      if (f === 0) {
        const v = values[i];
        out[i] = v <= limit ? table[v] : top;
      } else {
        out[i] = f === 1 ? masked : overload;
      }
    }
    return out;
  }
  for (let i = 0; i < n; i++) {
    const f = flags[i];
    if (f !== 0) { out[i] = f === 1 ? masked : overload; continue; }
    const d = values[i] - white;
    out[i] = d <= 0 ? bottom : d >= span ? top : pal[Math.floor((255 * d) / span)];
  }
  return out;
}

/** CSS colour of a map's ramp at t in 0..1 (for legends). */
export function rampCss(name, t) {
  const cm = COLORMAPS[name] || COLORMAPS.grey;
  const i = Math.min(255, Math.max(0, Math.round(t * 255)));
  return `rgb(${cm.lut[i * 3]}, ${cm.lut[i * 3 + 1]}, ${cm.lut[i * 3 + 2]})`;
}

// ---------------------------------------------------------------- view geometry

/**
 * The output index (0..n-1) along one axis whose source box holds source pixel `x`, for a view
 * of `n` output pixels over the source window [start, end) (imaging/geometry.py axis_bounds);
 * -1 when none does.
 */
export function outputIndex(x, start, end, n) {
  const step = (end - start) / n;
  if (!(step > 0) || n < 1) return -1;
  if (step >= 1) {
    let c = Math.floor((x + 0.5 - start) / step);
    c = Math.min(Math.max(c, 0), n - 1);
    while (c > 0 && Math.floor(start + c * step) > x) c--;
    while (c < n - 1 && Math.floor(start + (c + 1) * step) <= x) c++;
    const lo = Math.floor(start + c * step);
    const hi = Math.floor(start + (c + 1) * step);
    return lo <= x && x < hi ? c : -1;
  }
  // Magnifying: output c shows the source pixel under its centre.
  const c = Math.ceil((x - start) / step - 0.5);
  for (const k of [c, c - 1, c + 1]) {
    if (k >= 0 && k < n && Math.floor(start + (k + 0.5) * step) === x) return k;
  }
  return -1;
}

/** The value under source pixel (x, y) in a raw view of `window`: {value, flag, boxW, boxH} or null. */
export function sampleRaw(raw, window, x, y) {
  if (!raw || !window) return null;
  const [x0, y0, x1, y1] = window;
  const c = outputIndex(x, x0, x1, raw.width);
  const r = outputIndex(y, y0, y1, raw.height);
  if (c < 0 || r < 0) return null;
  const i = r * raw.width + c;
  return {
    value: raw.values[i],
    flag: raw.flags[i],
    boxW: Math.max(1, (x1 - x0) / raw.width),
    boxH: Math.max(1, (y1 - y0) / raw.height),
  };
}

// ---------------------------------------------------------------- diffraction geometry

/** True when the geometry has everything resolution needs. */
export function hasGeometry(g) {
  return !!g && ['beam_center_x_px', 'beam_center_y_px', 'distance_m', 'wavelength_a',
    'pixel_size_x_m', 'pixel_size_y_m'].every((k) => Number.isFinite(g[k]) && (k.startsWith('beam') || g[k] > 0));
}

/**
 * Resolution d (Å) at detector position (x, y) in pixel-edge coordinates, for a flat detector
 * normal to the beam: 2θ = atan(r / distance), d = λ / (2 sin θ). Infinity at the beam centre.
 */
export function resolutionAt(g, x, y) {
  if (!hasGeometry(g)) return NaN;
  const dx = (x - g.beam_center_x_px) * g.pixel_size_x_m;
  const dy = (y - g.beam_center_y_px) * g.pixel_size_y_m;
  const r = Math.hypot(dx, dy);
  if (r === 0) return Infinity;
  const theta = Math.atan(r / g.distance_m) / 2;
  return g.wavelength_a / (2 * Math.sin(theta));
}

/** Radii {rx, ry} in pixels of the ring of resolution d (Å), or null when it cannot be reached. */
export function ringRadiusPx(g, d) {
  if (!hasGeometry(g) || !(d > 0)) return null;
  const s = g.wavelength_a / (2 * d);
  if (s >= 1) return null;
  const twoTheta = 2 * Math.asin(s);
  if (twoTheta >= Math.PI / 2) return null;
  const r = g.distance_m * Math.tan(twoTheta);
  return { rx: r / g.pixel_size_x_m, ry: r / g.pixel_size_y_m };
}

// ---------------------------------------------------------------- datasets and frames

/** True for a path whose basename holds a run of '#' (a template of single-frame files). */
export function isTemplate(path) {
  const base = String(path || '').split('/').pop();
  return /#/.test(base);
}

/** The file of frame n of a template: the last run of '#' replaced by n zero-padded to its width. */
export function frameFile(template, n) {
  const text = String(template);
  const slash = text.lastIndexOf('/');
  const dir = text.slice(0, slash + 1);
  const base = text.slice(slash + 1);
  const m = /#+(?!.*#)/.exec(base);
  if (!m) return text;
  const digits = String(Math.max(0, Math.trunc(n))).padStart(m[0].length, '0');
  return dir + base.slice(0, m.index) + digits + base.slice(m.index + m[0].length);
}

/** The frame number a file path has in a template, or null when it is not one of its files. */
export function frameInTemplate(template, path) {
  const text = String(template);
  const slash = text.lastIndexOf('/');
  const base = text.slice(slash + 1);
  const m = /#+(?!.*#)/.exec(base);
  if (!m) return null;
  const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const re = new RegExp(
    `^${esc(text.slice(0, slash + 1) + base.slice(0, m.index))}(\\d{${m[0].length},})${esc(base.slice(m.index + m[0].length))}$`,
  );
  const hit = re.exec(String(path));
  return hit ? Number(hit[1]) : null;
}

/** What to ask the server for frame n of a dataset: {path, frame}. */
export function frameRequest(dataset, n) {
  if (dataset && dataset.template) return { path: frameFile(dataset.template, n), frame: 1 };
  return { path: dataset.path, frame: n };
}

/** The path a URL names a dataset by: its template for a run, else its path. */
export function datasetUrlPath(dataset) {
  return dataset.template || dataset.path;
}

/** The directory part of an absolute path ("/" for a top-level file). */
export function dirname(path) {
  const text = String(path || '');
  const i = text.lastIndexOf('/');
  if (i < 0) return '';
  if (i === 0) return '/';
  return text.slice(0, i);
}

export function basename(path) {
  return String(path || '').split('/').pop();
}

/** Find the listing entry for a URL path (master, template, or any file of a run). */
export function findDataset(listing, path) {
  if (!listing || !Array.isArray(listing.datasets)) return null;
  for (const d of listing.datasets) {
    if (d.path === path || (d.template && d.template === path)) return { dataset: d, frame: null };
  }
  for (const d of listing.datasets) {
    if (!d.template) continue;
    const n = frameInTemplate(d.template, path);
    if (n !== null) return { dataset: d, frame: n };
  }
  return null;
}
