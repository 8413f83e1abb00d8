// Images (content-addressed, pushed to many hosts) and virtual clusters, when this agent has them.
import { bytes, html, pct, shortId } from './ui.js'

export function ImagesView({ state }) {
  const images = state.images ?? []
  const vclusters = state.vclusters ?? []
  return html`<section class="images">
    <h2>images <span class="muted">${images.length}</span></h2>
    ${state.images === null ? html`<p class="muted">This agent serves no images.</p>` : null}
    <table class="grid">
      <thead><tr><th>name</th><th>id</th><th>size</th><th>here</th></tr></thead>
      <tbody>${images.map(
        (
          i,
        ) => html`<tr key=${i.id}><td>${String(i.name ?? '')}</td><td title=${i.id}>${shortId(String(i.id ?? ''))}</td>
          <td class="num">${bytes(i.size)}</td><td>${i.complete ? 'complete' : pct(i.chunks ? i.have / i.chunks : 0)}</td></tr>`,
      )}</tbody>
    </table>
    <h2>virtual clusters <span class="muted">${vclusters.length}</span></h2>
    <table class="grid">
      <thead><tr><th>name</th><th>image</th><th>VMs</th><th>push</th><th>created</th></tr></thead>
      <tbody>${vclusters.map(
        (
          c,
        ) => html`<tr key=${c.name}><td>${String(c.name ?? '')}</td><td title=${c.image}>${shortId(String(c.image ?? ''))}</td>
          <td class="num">${Array.isArray(c.vms) ? c.vms.length : '—'}</td>
          <td>${c.push ? `${c.push.state}` : '—'}</td><td>${c.createdAt ? new Date(c.createdAt).toLocaleString() : ''}</td></tr>`,
      )}</tbody>
    </table>
  </section>`
}
