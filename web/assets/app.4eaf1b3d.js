// The expense tracker SPA: client-side routes /, /login, /expenses/:id.
import { api, el, formatAmount, getToken, setToken } from './api.0d42e689.js';

const root = document.getElementById('app');
const nav = document.getElementById('nav');
const message = document.getElementById('message');

function say(text, isError = true) {
  message.textContent = text || '';
  message.style.color = isError ? '' : 'inherit';
}

function navigate(path) {
  if (location.pathname !== path) history.pushState({}, '', path);
  render();
}

window.addEventListener('popstate', render);
document.addEventListener('click', (ev) => {
  const a = ev.target.closest('a[data-link]');
  if (a && a.origin === location.origin) {
    ev.preventDefault();
    navigate(a.pathname);
  }
});

function renderNav() {
  nav.replaceChildren();
  if (getToken()) {
    const out = el('button', { id: 'logout', class: 'secondary', type: 'button' }, 'Log out');
    out.addEventListener('click', () => { setToken(null); navigate('/login'); });
    nav.append(out);
  }
}

function renderLogin() {
  const form = el('form', { id: 'auth-form' },
    el('label', {}, 'Email', el('input', { id: 'email', name: 'email', type: 'email', autocomplete: 'username', required: '' })),
    el('label', {}, 'Password', el('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', minlength: '8', required: '' })),
    el('button', { id: 'login', type: 'submit' }, 'Log in'),
    el('button', { id: 'register', type: 'button', class: 'secondary' }, 'Register'),
  );
  const creds = () => ({ email: form.email.value, password: form.password.value });
  const login = async () => {
    const t = await api('POST', '/auth/login', creds());
    setToken(t.access_token);
    say('');
    navigate('/');
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try { await login(); } catch (err) { say(err.message); }
  });
  form.querySelector('#register').addEventListener('click', async () => {
    if (!form.reportValidity()) return;
    try {
      await api('POST', '/auth/register', creds());
      await login();
    } catch (err) { say(err.message); }
  });
  root.replaceChildren(el('section', {}, el('h1', {}, 'Log in or register'), form));
}

async function renderList() {
  const today = new Date().toISOString().slice(0, 10);
  const form = el('form', { id: 'add-form' },
    el('label', {}, 'Amount (cents)', el('input', { id: 'amount', name: 'amount_cents', type: 'number', min: '1', required: '' })),
    el('label', {}, 'Currency', el('input', { id: 'currency', name: 'currency', value: 'EUR', maxlength: '3', required: '' })),
    el('label', {}, 'Category', el('input', { id: 'category', name: 'category', required: '' })),
    el('label', {}, 'Date', el('input', { id: 'date', name: 'date', type: 'date', value: today, required: '' })),
    el('label', {}, 'Note', el('input', { id: 'note', name: 'note' })),
    el('button', { id: 'add', type: 'submit' }, 'Add'),
  );
  const list = el('ul', { class: 'expenses', id: 'expenses' });
  const total = el('p', { class: 'muted', id: 'total' });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    try {
      await api('POST', '/expenses', {
        amount_cents: Number(f.get('amount_cents')),
        currency: String(f.get('currency')).toUpperCase(),
        category: f.get('category'),
        date: f.get('date'),
        note: f.get('note'),
      });
      form.reset();
      form.date.value = today;
      say('');
      await load();
    } catch (err) { say(err.message); }
  });
  async function load() {
    const page = await api('GET', '/expenses?limit=100');
    list.replaceChildren(...page.items.map((e) => el('li', { class: 'expense', 'data-id': e.id },
      el('a', { href: `/expenses/${e.id}`, 'data-link': '' }, `${e.date} · ${e.category}${e.note ? ` — ${e.note}` : ''}`),
      el('span', { class: 'amount' }, formatAmount(e.amount_cents, e.currency)),
    )));
    total.textContent = `${page.total} expense${page.total === 1 ? '' : 's'}`;
  }
  root.replaceChildren(
    el('section', {}, el('h1', {}, 'Add an expense'), form),
    el('section', {}, el('h2', {}, 'Your expenses'), total, list),
  );
  await load();
}

async function render() {
  renderNav();
  const path = location.pathname;
  if (!getToken() && path !== '/login') {
    history.replaceState({}, '', '/login');
    renderNav();
    return renderLogin();
  }
  try {
    if (path === '/login') return renderLogin();
    const m = path.match(/^\/expenses\/(\d+)$/);
    if (m) {
      const { renderDetail } = await import('./detail.627fa6aa.js');
      return await renderDetail(root, m[1], { navigate, say });
    }
    if (path !== '/') history.replaceState({}, '', '/');
    return await renderList();
  } catch (err) {
    say(err.message);
    if (err.status === 401) navigate('/login');
    else if (err.status === 404) root.replaceChildren(el('section', {}, el('h1', {}, 'Not found'), el('a', { href: '/', 'data-link': '' }, 'Back')));
  }
}

render();
