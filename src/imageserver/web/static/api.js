// The HTTP API: fetch, typed errors in words, cancellation, and a scheduler that keeps few
// image requests in flight, always the newest wanted.

import { decodeRaw, parseWindow } from './raw.js';

export const SESSION_MESSAGE = 'Your session has expired or is not valid; log in again';

/** An error to show a user: `message` is in words; `code` the API's code; `status` HTTP's. */
export class ApiError extends Error {
  constructor(message, { code = 'error', status = 0 } = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
  }
}

export function isAbort(err) {
  return !!err && (err.name === 'AbortError' || err.code === 'aborted');
}

export function abortError() {
  // DOMException is global in browsers and node ≥ 17.
  return new DOMException('The request was cancelled', 'AbortError');
}

/** A query string from an object, leaving out null, undefined and ''. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === '') continue;
    q.set(k, String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

async function errorFrom(response) {
  let code = 'error';
  let message = '';
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || '';
    }
  } catch (_) {
    // not JSON: words from the status below
  }
  if (response.status === 401 || code === 'session_invalid') {
    return new ApiError(SESSION_MESSAGE, { code: 'session_invalid', status: 401 });
  }
  if (!message) {
    const text = response.statusText ? ` ${response.statusText}` : '';
    message = `The image server answered ${response.status}${text}`;
  }
  return new ApiError(message, { code, status: response.status });
}

async function send(path, params, { signal, accept } = {}) {
  let response;
  try {
    response = await fetch(`${path}${query(params)}`, {
      credentials: 'same-origin',
      headers: accept ? { Accept: accept } : {},
      signal,
    });
  } catch (err) {
    if (isAbort(err) || (signal && signal.aborted)) throw abortError();
    throw new ApiError(`Cannot reach the image server (${err.message || err})`, { code: 'network' });
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** GET a JSON endpoint under /api/v1. */
export async function getJson(endpoint, params = {}, { signal } = {}) {
  const response = await send(`/api/v1/${endpoint}`, params, { signal, accept: 'application/json' });
  try {
    return await response.json();
  } catch (err) {
    if (isAbort(err) || (signal && signal.aborted)) throw abortError();
    throw new ApiError(`The image server sent a reply that is not JSON (${endpoint})`, { code: 'bad_reply' });
  }
}

export const whoami = (opts) => getJson('whoami', {}, opts);
export const listFiles = (esaf, dir, opts) => getJson('files', { esaf, dir }, opts);
export const latest = (esaf, dir, opts) => getJson('latest', { esaf, dir }, opts);
export const meta = (esaf, path, frame, opts) => getJson('meta', { esaf, path, frame }, opts);

function num(headers, name) {
  const v = headers.get(name);
  if (v === null || v === '') return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

/** What every image's headers say. */
export function imageHeaders(headers) {
  return {
    frame: num(headers, 'X-Frame'),
    firstFrame: num(headers, 'X-First-Frame'),
    lastFrame: num(headers, 'X-Last-Frame'),
    black: num(headers, 'X-Level-Black'),
    white: num(headers, 'X-Level-White'),
    mean: num(headers, 'X-View-Mean'),
    stddev: num(headers, 'X-View-Stddev'),
    min: num(headers, 'X-View-Min'),
    max: num(headers, 'X-View-Max'),
    saturated: num(headers, 'X-View-Saturated'),
    viewWidth: num(headers, 'X-View-Width'),
    viewHeight: num(headers, 'X-View-Height'),
    window: parseWindow(headers.get('X-Source-Window')),
  };
}

/**
 * GET /api/v1/image with format=jpeg (or png): {bitmap, info}. `params` are the API's:
 * esaf, path, frame, size, zoom, x, y, black, white, colormap.
 */
export async function imageBitmap(params, { signal } = {}) {
  const response = await send('/api/v1/image', { ...params, format: params.format || 'jpeg' }, { signal });
  const info = imageHeaders(response.headers);
  let blob;
  try {
    blob = await response.blob();
  } catch (err) {
    if (isAbort(err) || (signal && signal.aborted)) throw abortError();
    throw new ApiError('The image could not be read', { code: 'bad_reply' });
  }
  if (signal && signal.aborted) throw abortError();
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch (_) {
    throw new ApiError('The image server sent an image the browser cannot decode', { code: 'bad_reply' });
  }
  return { bitmap, info };
}

/** GET /api/v1/image with format=raw: {raw, info} (raw from raw.js decodeRaw). */
export async function imageRaw(params, { signal } = {}) {
  const response = await send('/api/v1/image', { ...params, format: 'raw' }, { signal });
  const info = imageHeaders(response.headers);
  let buffer;
  try {
    buffer = await response.arrayBuffer();
  } catch (err) {
    if (isAbort(err) || (signal && signal.aborted)) throw abortError();
    throw new ApiError('The raw view could not be read', { code: 'bad_reply' });
  }
  if (signal && signal.aborted) throw abortError();
  try {
    const raw = decodeRaw(buffer, response.headers.get('X-Raw-Dtype'), response.headers.get('X-Raw-Shape'));
    return { raw, info };
  } catch (err) {
    throw new ApiError(`The image server sent a raw view that does not add up: ${err.message}`, { code: 'bad_reply' });
  }
}

/**
 * Runs at most `max` jobs at once. A job has a key; asking again for a key pending or running
 * returns the same promise. Pending jobs start highest priority first, newest first within a
 * priority. `retain(keep)` aborts every running and drops every pending job whose key `keep`
 * refuses, so a fast sweep never queues what the user has scrolled past.
 */
export class Scheduler {
  constructor(max = 2) {
    this.max = max;
    this.pending = [];
    this.running = new Map();
    this.seq = 0;
  }

  has(key) {
    return this.running.has(key) || this.pending.some((j) => j.key === key);
  }

  isRunning(key) {
    return this.running.has(key);
  }

  get inFlight() {
    return this.running.size;
  }

  request(key, run, { priority = 0 } = {}) {
    const running = this.running.get(key);
    if (running) return running.promise;
    const waiting = this.pending.find((j) => j.key === key);
    if (waiting) {
      if (priority > waiting.priority) waiting.priority = priority;
      waiting.seq = ++this.seq;
      this.pump();
      return waiting.promise;
    }
    const job = { key, run, priority, seq: ++this.seq };
    job.promise = new Promise((resolve, reject) => {
      job.resolve = resolve;
      job.reject = reject;
    });
    this.pending.push(job);
    this.pump();
    return job.promise;
  }

  retain(keep) {
    const dropped = this.pending.filter((j) => !keep(j.key));
    this.pending = this.pending.filter((j) => keep(j.key));
    for (const j of dropped) j.reject(abortError());
    for (const [key, j] of this.running) {
      if (!keep(key)) {
        j.controller.abort();
        this.running.delete(key);
        j.reject(abortError());
      }
    }
    this.pump();
  }

  cancelAll() {
    this.retain(() => false);
  }

  pump() {
    while (this.running.size < this.max && this.pending.length) {
      let best = 0;
      for (let i = 1; i < this.pending.length; i++) {
        const a = this.pending[i];
        const b = this.pending[best];
        if (a.priority > b.priority || (a.priority === b.priority && a.seq > b.seq)) best = i;
      }
      const job = this.pending.splice(best, 1)[0];
      job.controller = new AbortController();
      this.running.set(job.key, job);
      let result;
      try {
        result = Promise.resolve(job.run(job.controller.signal));
      } catch (err) {
        result = Promise.reject(err);
      }
      result.then(
        (value) => this.finish(job, () => job.resolve(value)),
        (err) => this.finish(job, () => job.reject(err)),
      );
    }
  }

  finish(job, settle) {
    if (this.running.get(job.key) === job) {
      this.running.delete(job.key);
      settle();
    }
    // else: aborted by retain, already rejected
    this.pump();
  }
}
