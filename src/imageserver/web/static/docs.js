// The API reference page: /openapi.json rendered as a list of paths, methods and parameters.

const METHODS = ['get', 'post', 'put', 'patch', 'delete', 'head', 'options'];

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

/** Follow a local "$ref" ("#/components/parameters/esaf") inside the document. */
function resolve(doc, obj) {
  let seen = 0;
  while (obj && typeof obj.$ref === 'string' && obj.$ref.startsWith('#/') && seen++ < 10) {
    obj = obj.$ref.slice(2).split('/').reduce((o, k) => (o ? o[k.replace(/~1/g, '/').replace(/~0/g, '~')] : undefined), doc);
  }
  return obj || {};
}

function typeOf(doc, schema) {
  const s = resolve(doc, schema);
  if (!schema) return '';
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(' | ');
  if (Array.isArray(s.anyOf || s.oneOf)) return (s.anyOf || s.oneOf).map((x) => typeOf(doc, x)).join(' | ');
  let t = s.type || '';
  if (Array.isArray(t)) t = t.join(' | ');
  if (t === 'array' && s.items) t = `${typeOf(doc, s.items)}[]`;
  if (s.default !== undefined) t += ` (default ${JSON.stringify(s.default)})`;
  return t;
}

function parameterTable(doc, params) {
  const table = el('table', 'params');
  const head = el('tr');
  for (const h of ['name', 'in', 'type', 'required', 'description']) head.append(el('th', null, h));
  const thead = el('thead');
  thead.append(head);
  const body = el('tbody');
  for (const raw of params) {
    const p = resolve(doc, raw);
    const tr = el('tr');
    tr.append(
      el('td', 'name', p.name),
      el('td', null, p.in),
      el('td', 'type', typeOf(doc, p.schema)),
      el('td', null, p.required ? 'yes' : ''),
      el('td', null, p.description || ''),
    );
    body.append(tr);
  }
  table.append(thead, body);
  return table;
}

function render(doc) {
  const info = doc.info || {};
  document.getElementById('title').textContent = `${info.title || 'API'} ${info.version ? `(${info.version})` : ''}`.trim();
  document.getElementById('description').textContent = info.description || '';
  const root = document.getElementById('endpoints');
  root.replaceChildren();
  const paths = doc.paths || {};
  let count = 0;
  for (const path of Object.keys(paths).sort()) {
    const item = resolve(doc, paths[path]);
    const shared = item.parameters || [];
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      count++;
      const section = el('section', 'endpoint');
      section.dataset.path = path;
      section.dataset.method = method;
      const h = el('h2');
      h.append(el('span', `method ${method}`, method.toUpperCase()), el('code', 'path', path));
      section.append(h);
      if (op.summary) section.append(el('p', 'summary', op.summary));
      if (op.description && op.description !== op.summary) section.append(el('p', 'description muted', op.description));
      const params = [...shared, ...(op.parameters || [])];
      if (params.length) section.append(parameterTable(doc, params));
      else section.append(el('p', 'muted', 'No parameters.'));
      const responses = Object.keys(op.responses || {});
      if (responses.length) section.append(el('p', 'responses muted', `Responses: ${responses.join(', ')}`));
      root.append(section);
    }
  }
  document.getElementById('status').textContent = `${count} operations`;
}

async function main() {
  const status = document.getElementById('status');
  const error = document.getElementById('error');
  try {
    const response = await fetch('/openapi.json', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(`/openapi.json answered ${response.status} ${response.statusText}`.trim());
    render(await response.json());
  } catch (err) {
    status.textContent = '';
    error.textContent = `The API description could not be loaded: ${err.message || err}`;
    error.hidden = false;
  }
}

main();
