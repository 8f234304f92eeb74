// Lazily loaded: one expense, editable (route /expenses/:id).
import { api, el, formatAmount } from './api.0d42e689.js';

export async function renderDetail(root, id, { navigate, say }) {
  const e = await api('GET', `/expenses/${id}`);
  const field = (label, name, attrs) => el('label', {}, label, el('input', { id: `edit-${name}`, name, ...attrs }));
  const form = el('form', { id: 'edit-form' },
    field('Amount (cents)', 'amount_cents', { type: 'number', min: '1', value: e.amount_cents, required: '' }),
    field('Currency', 'currency', { value: e.currency, maxlength: '3', required: '' }),
    field('Category', 'category', { value: e.category, required: '' }),
    field('Date', 'date', { type: 'date', value: e.date, required: '' }),
    field('Note', 'note', { value: e.note }),
    el('button', { id: 'save', type: 'submit' }, 'Save'),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    try {
      await api('PUT', `/expenses/${id}`, {
        amount_cents: Number(f.get('amount_cents')),
        currency: String(f.get('currency')).toUpperCase(),
        category: f.get('category'),
        date: f.get('date'),
        note: f.get('note'),
      });
      say('Saved.', false);
      navigate('/');
    } catch (err) {
      say(err.message);
    }
  });
  const del = el('button', { id: 'delete', class: 'danger', type: 'button' }, 'Delete');
  del.addEventListener('click', async () => {
    try {
      await api('DELETE', `/expenses/${id}`);
      navigate('/');
    } catch (err) {
      say(err.message);
    }
  });
  root.replaceChildren(
    el('section', {},
      el('h1', { id: 'detail-title' }, `${e.category} · `, el('span', { id: 'detail-amount', class: 'amount' }, formatAmount(e.amount_cents, e.currency))),
      el('p', { class: 'muted' }, `${e.date}${e.note ? ` — ${e.note}` : ''}`),
      form,
      el('p', {}, del, ' ', el('a', { href: '/', 'data-link': '' }, 'Back')),
    ),
  );
}
