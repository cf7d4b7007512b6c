// The dataset browser: a directory's subdirectories and datasets (GET /api/v1/files).

import { listFiles } from './api.js';

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'title' || k === 'type') {
      node.setAttribute(k, v === true ? '' : String(v));
    } else node[k] = v;
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function frameSummary(d) {
  const n = d.frames ?? (d.last_frame != null && d.first_frame != null ? d.last_frame - d.first_frame + 1 : null);
  if (n == null) return '';
  if (n === 1) return '1 frame';
  if (d.first_frame === 1 && d.last_frame === n) return `${n} frames`; // the range says no more
  return `${n} frames (${d.first_frame}–${d.last_frame})`;
}

function joinPath(dir, name) {
  return dir.endsWith('/') ? `${dir}${name}` : `${dir}/${name}`;
}

/**
 * root: the element with data-testid="dataset-browser". onOpenDir(dir) when a directory is
 * chosen; onOpenDataset(entry) when a dataset is.
 */
export class DatasetBrowser {
  constructor(root, { onOpenDir, onOpenDataset }) {
    this.root = root;
    this.onOpenDir = onOpenDir;
    this.onOpenDataset = onOpenDataset;
    this.listing = null;
    this.current = null; // path of the dataset shown
    this.controller = null;

    this.form = el('form', { class: 'dir-form', role: 'search' });
    this.dirInput = el('input', {
      type: 'text', class: 'dir-input', name: 'dir', spellcheck: false, autocomplete: 'off',
      'aria-label': 'Directory', placeholder: '/path/to/data', 'data-testid': 'dir-input',
    });
    const go = el('button', { type: 'submit', class: 'btn', text: 'Go', title: 'List this directory' });
    this.upButton = el('button', {
      type: 'button', class: 'btn', text: '↑', title: 'Parent directory', 'aria-label': 'Parent directory',
      'data-testid': 'dir-up',
    });
    this.form.append(this.upButton, this.dirInput, go);
    this.filter = el('input', {
      type: 'search', class: 'filter-input', placeholder: 'Filter', 'aria-label': 'Filter datasets',
      'data-testid': 'dataset-filter',
    });
    this.status = el('div', { class: 'browser-status', 'aria-live': 'polite' });
    this.list = el('ul', { class: 'entries', role: 'list', 'aria-label': 'Directories and datasets' });
    root.append(this.form, this.filter, this.status, this.list);

    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      const dir = this.dirInput.value.trim();
      if (dir) this.onOpenDir(dir);
    });
    this.upButton.addEventListener('click', () => {
      if (this.listing && this.listing.parent) this.onOpenDir(this.listing.parent);
    });
    this.filter.addEventListener('input', () => this.render());
  }

  /** List `dir` (as the ESAF's identity): resolves to the listing; rejects with ApiError. */
  async load(esaf, dir) {
    if (this.controller) this.controller.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.dirInput.value = dir;
    this.root.dataset.state = 'loading';
    this.status.textContent = 'Loading…';
    try {
      const listing = await listFiles(esaf, dir, { signal: controller.signal });
      if (this.controller !== controller) return listing;
      this.listing = listing;
      this.dirInput.value = listing.dir || dir;
      this.root.dataset.state = 'ready';
      this.root.dataset.dir = listing.dir || dir;
      this.render();
      return listing;
    } catch (err) {
      if (this.controller === controller) {
        this.root.dataset.state = 'error';
        this.status.textContent = 'Could not list this directory.';
      }
      throw err;
    }
  }

  setCurrent(path) {
    this.current = path;
    for (const b of this.list.querySelectorAll('[data-kind="dataset"]')) {
      const on = b.dataset.path === path || b.dataset.template === path;
      b.classList.toggle('current', on);
      if (on) b.setAttribute('aria-current', 'true');
      else b.removeAttribute('aria-current');
    }
  }

  render() {
    const listing = this.listing;
    this.list.replaceChildren();
    if (!listing) return;
    this.upButton.disabled = !listing.parent;
    const needle = this.filter.value.trim().toLowerCase();
    const match = (name) => !needle || name.toLowerCase().includes(needle);
    const dirs = (listing.dirs || []).filter(match);
    const datasets = (listing.datasets || []).filter((d) => match(d.name || ''));
    for (const name of dirs) {
      const path = joinPath(listing.dir, name);
      const b = el('button', {
        type: 'button', class: 'entry dir', 'data-kind': 'dir', 'data-path': path, title: path,
      }, el('span', { class: 'icon', 'aria-hidden': 'true', text: '▸' }), el('span', { class: 'name', text: `${name}/` }));
      b.addEventListener('click', () => this.onOpenDir(path));
      this.list.append(el('li', {}, b));
    }
    for (const d of datasets) {
      const b = el('button', {
        type: 'button', class: 'entry dataset', 'data-kind': 'dataset', 'data-path': d.path,
        'data-template': d.template || null, title: d.template || d.path,
      },
      el('span', { class: 'icon', 'aria-hidden': 'true', text: d.template ? '⋯' : '◼' }),
      el('span', { class: 'name', text: d.name || d.path }),
      el('span', { class: 'frames', text: frameSummary(d) }));
      b.addEventListener('click', () => this.onOpenDataset(d));
      this.list.append(el('li', {}, b));
    }
    const total = (listing.dirs || []).length + (listing.datasets || []).length;
    let text = `${(listing.datasets || []).length} datasets, ${(listing.dirs || []).length} directories`;
    if (needle) text = `${dirs.length + datasets.length} of ${total} shown`;
    if (listing.truncated) text += ' (listing truncated)';
    this.status.textContent = text;
    this.setCurrent(this.current);
  }
}
