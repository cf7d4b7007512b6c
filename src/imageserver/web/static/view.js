// The image on a canvas: the overview and zoomed tiles coloured from raw views, zoom and pan
// (wheel, drag, pinch), and the overlays (resolution rings, ice rings, beam centre, spots).

import { colourise, hasGeometry, ringRadiusPx, sampleRaw } from './raw.js';

export const RESOLUTION_RINGS = [1.5, 2, 2.5, 3, 4, 6];
export const ICE_RINGS = [3.897, 3.669, 3.441, 2.671, 2.249, 2.07, 1.95, 1.92, 1.88];

const TILE_PX = 512; // tile width below full resolution
const MAX_TILE_PX = 640; // the full-resolution level's tiles are at most this wide
const MAX_TILE_ZOOM = 64; // the server's default [limits] max_zoom
const MAX_SCALE = 40; // screen px per detector px
const MAX_TILES_KEPT = 96;
const SPOT_COLOUR = '#3dff6e'; // green: apart from the rings (amber, blue) and the beam (pink)
const SPOT_MIN_PX = 4; // a spot's circle on screen at least this radius, so it shows at "fit"
const SPOT_MARGIN = 1.5; // detector px between a spot's edge and its circle

/** A canvas holding one raw view (or bitmap) and the detector window it shows. */
class Layer {
  constructor(window) {
    this.window = window;
    this.canvas = document.createElement('canvas');
    this.raw = null;
    this.imageData = null;
  }

  setBitmap(bitmap) {
    this.raw = null;
    this.imageData = null;
    this.canvas.width = bitmap.width;
    this.canvas.height = bitmap.height;
    const ctx = this.canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    if (typeof bitmap.close === 'function') bitmap.close();
  }

  setRaw(raw, levels, cmap) {
    this.raw = raw;
    this.look = null;
    this.canvas.width = raw.width;
    this.canvas.height = raw.height;
    this.imageData = new ImageData(raw.width, raw.height);
    this.colour(levels, cmap);
  }

  colour(levels, cmap) {
    if (!this.raw) return;
    const look = `${levels.black}|${levels.white}|${cmap}`;
    if (look === this.look) return; // already coloured so
    this.look = look;
    colourise(this.raw, levels, cmap, new Uint32Array(this.imageData.data.buffer));
    this.canvas.getContext('2d').putImageData(this.imageData, 0, 0);
  }
}

export class ImageView {
  /**
   * stage: the element the canvases fill; canvas: the image canvas; overlay: the overlay
   * canvas; onHover(x, y) with detector pixel coordinates (or null); onViewChange() after a
   * zoom or pan.
   */
  constructor({ stage, canvas, overlay, onHover, onViewChange }) {
    this.stage = stage;
    this.canvas = canvas;
    this.overlay = overlay;
    this.onHover = onHover || (() => {});
    this.onViewChange = onViewChange || (() => {});
    this.width = 0; // detector pixels
    this.height = 0;
    this.scale = 1; // CSS px per detector pixel
    this.cx = 0;
    this.cy = 0;
    this.fitted = true;
    this.overviewLayer = null;
    this.tiles = new Map();
    this.levels = { black: 1, white: 0 };
    this.cmap = 'grey';
    this.geometry = null;
    this.show = { rings: false, ice: false, beam: true, spots: false };
    this.spots = null; // [{x, y, size_px}] of the frame shown, pixel centres at integers
    this.pointers = new Map();
    this.frameRequested = 0;
    this.lastHover = null;
    this.cssW = 1;
    this.cssH = 1;
    this.dpr = 1;
    this.bindEvents();
    this.resize();
    if (typeof ResizeObserver !== 'undefined') {
      new ResizeObserver(() => this.resize()).observe(stage);
    } else {
      window.addEventListener('resize', () => this.resize());
    }
  }

  // ------------------------------------------------------------ state

  get fitScale() {
    if (!this.width || !this.height) return 1;
    return Math.min(this.cssW / this.width, this.cssH / this.height);
  }

  /** Zoom relative to "fit" (1 = the whole detector fits). */
  get zoom() {
    return this.scale / this.fitScale;
  }

  setDetector(width, height) {
    if (width === this.width && height === this.height) return;
    this.width = width;
    this.height = height;
    this.fit();
  }

  hasImage() {
    return !!this.overviewLayer;
  }

  clear() {
    this.overviewLayer = null;
    this.tiles.clear();
    this.invalidate();
  }

  clearTiles() {
    this.tiles.clear();
    this.invalidate();
  }

  showBitmap(bitmap, window) {
    const layer = new Layer(window || [0, 0, this.width, this.height]);
    layer.setBitmap(bitmap);
    this.overviewLayer = layer;
    this.invalidate();
  }

  showRaw(raw, window) {
    const layer = new Layer(window || [0, 0, this.width, this.height]);
    layer.setRaw(raw, this.levels, this.cmap);
    this.overviewLayer = layer;
    this.invalidate();
  }

  /** The raw view under the overview, if any. */
  get overviewRaw() {
    return this.overviewLayer ? this.overviewLayer.raw : null;
  }

  setColouring(levels, cmap) {
    this.levels = { ...levels };
    this.cmap = cmap;
    if (this.colourPending) return;
    this.colourPending = true;
    requestAnimationFrame(() => {
      this.colourPending = false;
      if (this.overviewLayer) this.overviewLayer.colour(this.levels, this.cmap);
      for (const t of this.tiles.values()) t.colour(this.levels, this.cmap);
      this.draw();
    });
  }

  setGeometry(geometry) {
    this.geometry = hasGeometry(geometry) ? geometry : null;
    this.invalidate();
  }

  setOverlays(show) {
    Object.assign(this.show, show);
    this.invalidate();
  }

  /** The spots to draw (null: none); the viewer gives only those of the frame shown. */
  setSpots(spots) {
    this.spots = spots && spots.length ? spots : null;
    this.overlay.dataset.spots = String(this.spots ? this.spots.length : 0);
    this.invalidate();
  }

  // ------------------------------------------------------------ tiles

  /**
   * The tiles this view wants at its zoom, nearest the centre first: {zoom, size, tiles:
   * [{key, col, row}]}, or null when the overview is sharp enough.
   */
  wantedTiles() {
    const level = this.tileLevel();
    if (!level) return null;
    const { zoom, size } = level;
    const tw = this.width / zoom;
    const th = this.height / zoom;
    const [vx0, vy0] = this.toDetector(0, 0);
    const [vx1, vy1] = this.toDetector(this.cssW, this.cssH);
    const c0 = Math.max(0, Math.floor(Math.max(vx0, 0) / tw));
    const c1 = Math.min(zoom - 1, Math.floor((Math.min(vx1, this.width) - 1e-6) / tw));
    const r0 = Math.max(0, Math.floor(Math.max(vy0, 0) / th));
    const r1 = Math.min(zoom - 1, Math.floor((Math.min(vy1, this.height) - 1e-6) / th));
    const tiles = [];
    for (let row = r0; row <= r1; row++) {
      for (let col = c0; col <= c1; col++) {
        const dx = (col + 0.5) * tw - this.cx;
        const dy = (row + 0.5) * th - this.cy;
        tiles.push({ key: `${zoom}/${col}/${row}/${size}`, col, row, dist: dx * dx + dy * dy });
      }
    }
    tiles.sort((a, b) => a.dist - b.dist);
    return { zoom, size, tiles };
  }

  /** The tile level this view's scale needs: {zoom, size}, or null when the overview will do. */
  tileLevel() {
    if (!this.width || !this.overviewLayer) return null;
    if (this.zoom <= 1.01) return null;
    const need = this.scale * this.dpr; // device px per detector px
    const have = this.overviewLayer.canvas.width / (this.overviewLayer.window[2] - this.overviewLayer.window[0]);
    if (need <= have * 1.15) return null;
    let zmax = 2;
    while (this.width / zmax > MAX_TILE_PX && zmax < MAX_TILE_ZOOM) zmax *= 2;
    let zoom = 2;
    while (zoom < zmax && (TILE_PX * zoom) / this.width < need * 0.9) zoom *= 2;
    return { zoom, size: zoom === zmax ? Math.ceil(this.width / zoom) : TILE_PX };
  }

  hasTile(key) {
    return this.tiles.has(key);
  }

  putTile(key, zoom, col, row, raw, window) {
    const tw = this.width / zoom;
    const th = this.height / zoom;
    const layer = new Layer(window || [col * tw, row * th, (col + 1) * tw, (row + 1) * th]);
    layer.zoom = zoom;
    layer.setRaw(raw, this.levels, this.cmap);
    this.tiles.set(key, layer);
    if (this.tiles.size > MAX_TILES_KEPT) {
      const wanted = new Set(((this.wantedTiles() || {}).tiles || []).map((t) => t.key));
      for (const k of this.tiles.keys()) {
        if (this.tiles.size <= MAX_TILES_KEPT) break;
        if (!wanted.has(k)) this.tiles.delete(k);
      }
    }
    this.invalidate();
  }

  /** The count under detector pixel (x, y): from the finest tile holding it, else the overview. */
  sample(x, y) {
    const layers = [...this.tiles.values()].sort((a, b) => b.zoom - a.zoom);
    for (const t of layers) {
      const [x0, y0, x1, y1] = t.window;
      if (x >= x0 && x < x1 && y >= y0 && y < y1 && t.raw) {
        const s = sampleRaw(t.raw, t.window, x, y);
        if (s) return s;
      }
    }
    if (this.overviewLayer && this.overviewLayer.raw) {
      return sampleRaw(this.overviewLayer.raw, this.overviewLayer.window, x, y);
    }
    return null;
  }

  // ------------------------------------------------------------ geometry of the view

  toDetector(sx, sy) {
    return [(sx - this.cssW / 2) / this.scale + this.cx, (sy - this.cssH / 2) / this.scale + this.cy];
  }

  toScreen(x, y) {
    return [(x - this.cx) * this.scale + this.cssW / 2, (y - this.cy) * this.scale + this.cssH / 2];
  }

  fit() {
    this.fitted = true;
    this.scale = this.fitScale;
    this.cx = this.width / 2;
    this.cy = this.height / 2;
    this.changed();
  }

  /** Zoom by `factor` keeping the detector point under screen (sx, sy) still (default: centre). */
  zoomBy(factor, sx = this.cssW / 2, sy = this.cssH / 2) {
    if (!this.width) return;
    const [dx, dy] = this.toDetector(sx, sy);
    const min = this.fitScale * 0.5;
    const scale = Math.min(Math.max(this.scale * factor, min), MAX_SCALE);
    this.scale = scale;
    this.cx = dx - (sx - this.cssW / 2) / scale;
    this.cy = dy - (sy - this.cssH / 2) / scale;
    this.fitted = false;
    this.clampCentre();
    this.changed();
  }

  panBy(dsx, dsy) {
    if (!this.width) return;
    this.cx -= dsx / this.scale;
    this.cy -= dsy / this.scale;
    this.fitted = false;
    this.clampCentre();
    this.changed();
  }

  clampCentre() {
    this.cx = Math.min(Math.max(this.cx, 0), this.width);
    this.cy = Math.min(Math.max(this.cy, 0), this.height);
  }

  changed() {
    this.canvas.dataset.zoom = this.zoom.toFixed(2);
    this.invalidate();
    this.onViewChange();
  }

  resize() {
    const rect = this.stage.getBoundingClientRect();
    this.cssW = Math.max(1, Math.round(rect.width));
    this.cssH = Math.max(1, Math.round(rect.height));
    this.dpr = window.devicePixelRatio || 1;
    for (const c of [this.canvas, this.overlay]) {
      c.width = Math.round(this.cssW * this.dpr);
      c.height = Math.round(this.cssH * this.dpr);
    }
    if (this.fitted) this.fit();
    else this.changed();
    this.draw();
  }

  // ------------------------------------------------------------ drawing

  invalidate() {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      this.draw();
    });
  }

  draw() {
    const ctx = this.canvas.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    if (this.width && this.overviewLayer) {
      // The detector's area, under the views (visible where they are not yet).
      const [ax, ay] = this.toScreen(0, 0);
      ctx.fillStyle = '#1b1f27';
      ctx.fillRect(ax, ay, this.width * this.scale, this.height * this.scale);
      this.drawLayer(ctx, this.overviewLayer);
      // Tiles finer than this scale needs are left out: shrunk, they would blur the spots
      // the overview's max-pooling keeps.
      const level = this.tileLevel();
      const finest = level ? level.zoom : 0;
      const tiles = [...this.tiles.values()].filter((t) => t.zoom <= finest).sort((a, b) => a.zoom - b.zoom);
      for (const t of tiles) this.drawLayer(ctx, t);
    }
    this.drawOverlay();
  }

  drawLayer(ctx, layer) {
    const [x0, y0, x1, y1] = layer.window;
    const [sx0, sy0] = this.toScreen(x0, y0);
    const [sx1, sy1] = this.toScreen(x1, y1);
    if (sx1 < 0 || sy1 < 0 || sx0 > this.cssW || sy0 > this.cssH) return;
    const devicePerImagePx = ((sx1 - sx0) * this.dpr) / layer.canvas.width;
    ctx.imageSmoothingEnabled = devicePerImagePx < 1;
    ctx.drawImage(layer.canvas, sx0, sy0, sx1 - sx0, sy1 - sy0);
  }

  drawOverlay() {
    const ctx = this.overlay.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.overlay.width, this.overlay.height);
    if (!this.width || !this.overviewLayer) return;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    const g = this.geometry;
    // Rings and spots only on the detector (rings leave it; a spot's circle may too).
    ctx.save();
    const [ax, ay] = this.toScreen(0, 0);
    ctx.beginPath();
    ctx.rect(ax, ay, this.width * this.scale, this.height * this.scale);
    ctx.clip();
    if (g) this.drawRings(ctx, g);
    if (this.show.spots && this.spots) this.drawSpots(ctx);
    ctx.restore();
    if (g && this.show.beam) this.drawBeam(ctx, g);
  }

  drawRings(ctx, g) {
    const [bx, by] = this.toScreen(g.beam_center_x_px, g.beam_center_y_px);
    if (this.show.ice) {
      ctx.setLineDash([6, 4]);
      for (const d of ICE_RINGS) this.ring(ctx, g, d, bx, by, 'rgba(90, 200, 255, 0.85)', 1, null);
      ctx.setLineDash([]);
    }
    if (this.show.rings) {
      for (const d of RESOLUTION_RINGS) {
        this.ring(ctx, g, d, bx, by, 'rgba(255, 196, 40, 0.95)', 1.5, `${d} Å`);
      }
    }
  }

  drawBeam(ctx, g) {
    const [bx, by] = this.toScreen(g.beam_center_x_px, g.beam_center_y_px);
    ctx.lineWidth = 3;
    ctx.strokeStyle = 'rgba(0, 0, 0, 0.6)';
    this.cross(ctx, bx, by);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = '#ff4fd8';
    this.cross(ctx, bx, by);
  }

  /**
   * Each spot as a circle round its centroid: one path for all (thousands of spots draw in
   * one stroke), a dark outline under the colour so it shows on white and on black.
   */
  drawSpots(ctx) {
    const path = new Path2D();
    for (const s of this.spots) {
      // Centroids have pixel centres at integers; this view's pixel i spans [i, i + 1).
      const [sx, sy] = this.toScreen(s.x + 0.5, s.y + 0.5);
      const r = this.spotRadius(s);
      if (sx < -r || sy < -r || sx > this.cssW + r || sy > this.cssH + r) continue;
      path.moveTo(sx + r, sy);
      path.arc(sx, sy, r, 0, 2 * Math.PI);
    }
    ctx.lineWidth = 3;
    ctx.strokeStyle = 'rgba(0, 0, 0, 0.55)';
    ctx.stroke(path);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = SPOT_COLOUR;
    ctx.stroke(path);
  }

  /** Screen radius of a spot's circle: round the spot's area when zoomed in, never tiny. */
  spotRadius(s) {
    const area = Number.isFinite(s.size_px) && s.size_px > 0 ? s.size_px : 1;
    return Math.max(SPOT_MIN_PX, (Math.sqrt(area / Math.PI) + SPOT_MARGIN) * this.scale);
  }

  cross(ctx, x, y) {
    ctx.beginPath();
    ctx.moveTo(x - 10, y);
    ctx.lineTo(x - 3, y);
    ctx.moveTo(x + 3, y);
    ctx.lineTo(x + 10, y);
    ctx.moveTo(x, y - 10);
    ctx.lineTo(x, y - 3);
    ctx.moveTo(x, y + 3);
    ctx.lineTo(x, y + 10);
    ctx.stroke();
  }

  ring(ctx, g, d, bx, by, colour, width, label) {
    const r = ringRadiusPx(g, d);
    if (!r) return;
    const rx = r.rx * this.scale;
    const ry = r.ry * this.scale;
    ctx.beginPath();
    ctx.ellipse(bx, by, rx, ry, 0, 0, 2 * Math.PI);
    ctx.lineWidth = width + 2;
    ctx.strokeStyle = 'rgba(0, 0, 0, 0.45)';
    ctx.stroke();
    ctx.lineWidth = width;
    ctx.strokeStyle = colour;
    ctx.stroke();
    if (!label) return;
    // The label where the ring is on the detector and in sight.
    const angles = [-Math.PI / 4, -3 * Math.PI / 4, Math.PI / 4, 3 * Math.PI / 4, -Math.PI / 2, Math.PI / 2, 0, Math.PI];
    for (const a of angles) {
      const dx = g.beam_center_x_px + r.rx * Math.cos(a);
      const dy = g.beam_center_y_px + r.ry * Math.sin(a);
      if (dx < 0 || dy < 0 || dx > this.width || dy > this.height) continue;
      const [sx, sy] = this.toScreen(dx, dy);
      if (sx < 4 || sy < 12 || sx > this.cssW - 40 || sy > this.cssH - 4) continue;
      ctx.font = '12px system-ui, sans-serif';
      ctx.lineWidth = 3;
      ctx.strokeStyle = 'rgba(0, 0, 0, 0.75)';
      ctx.strokeText(label, sx + 3, sy - 3);
      ctx.fillStyle = colour;
      ctx.fillText(label, sx + 3, sy - 3);
      break;
    }
  }

  // ------------------------------------------------------------ input

  bindEvents() {
    const el = this.canvas;
    const local = (e) => {
      const rect = el.getBoundingClientRect();
      return [e.clientX - rect.left, e.clientY - rect.top];
    };
    el.addEventListener('wheel', (e) => {
      e.preventDefault();
      let dy = e.deltaY;
      if (e.deltaMode === 1) dy *= 16;
      else if (e.deltaMode === 2) dy *= this.cssH;
      const [sx, sy] = local(e);
      this.zoomBy(Math.exp(-dy * 0.0015), sx, sy);
    }, { passive: false });
    el.addEventListener('dblclick', (e) => {
      const [sx, sy] = local(e);
      this.zoomBy(e.shiftKey ? 0.5 : 2, sx, sy);
    });
    el.addEventListener('pointerdown', (e) => {
      if (e.button !== undefined && e.button !== 0 && e.pointerType === 'mouse') return;
      el.setPointerCapture(e.pointerId);
      this.pointers.set(e.pointerId, local(e));
      el.classList.add('dragging');
    });
    el.addEventListener('pointermove', (e) => {
      const p = local(e);
      const prev = this.pointers.get(e.pointerId);
      if (prev) {
        if (this.pointers.size === 1) {
          this.panBy(p[0] - prev[0], p[1] - prev[1]);
        } else if (this.pointers.size === 2) {
          const other = [...this.pointers.entries()].find(([id]) => id !== e.pointerId)[1];
          const d0 = Math.hypot(prev[0] - other[0], prev[1] - other[1]);
          const d1 = Math.hypot(p[0] - other[0], p[1] - other[1]);
          const m0 = [(prev[0] + other[0]) / 2, (prev[1] + other[1]) / 2];
          const m1 = [(p[0] + other[0]) / 2, (p[1] + other[1]) / 2];
          if (d0 > 0 && d1 > 0) this.zoomBy(d1 / d0, m1[0], m1[1]);
          this.panBy(m1[0] - m0[0], m1[1] - m0[1]);
        }
        this.pointers.set(e.pointerId, p);
      }
      this.hover(p);
    });
    const up = (e) => {
      this.pointers.delete(e.pointerId);
      if (!this.pointers.size) el.classList.remove('dragging');
    };
    el.addEventListener('pointerup', up);
    el.addEventListener('pointercancel', up);
    el.addEventListener('pointerleave', (e) => {
      if (e.pointerType === 'mouse' && !this.pointers.size) {
        this.lastHover = null;
        this.onHover(null);
      }
    });
  }

  hover(p) {
    this.lastHover = p;
    if (!this.width) return;
    const [x, y] = this.toDetector(p[0], p[1]);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) this.onHover(null);
    else this.onHover(Math.floor(x), Math.floor(y));
  }

  /** Report the hover again (after the image under the cursor changed). */
  refreshHover() {
    if (this.lastHover) this.hover(this.lastHover);
  }
}
