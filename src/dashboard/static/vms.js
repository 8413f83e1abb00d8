// The VMs table: where each VM runs, its size, load, address, time since it last moved; search and filter.
import { useState } from 'preact/hooks'
import { ago, html, mib, shortId } from './ui.js'

export function VmsView({ state, now, actions }) {
  const [query, setQuery] = useState('')
  const [host, setHost] = useState('')
  const [status, setStatus] = useState('')
  const [minMem, setMinMem] = useState('')
  const [busy, setBusy] = useState(false)
  const q = query.trim().toLowerCase()
  const rows = state.vms.filter((v) => {
    if (host && v.host !== host) return false
    if (status && v.status !== status && v.state !== status) return false
    if (minMem && v.memoryMiB < Number(minMem)) return false
    if (busy && v.cpu < 0.05 && v.dirtyMiBps < 0.5) return false
    if (!q) return true
    return [v.name, v.id, v.host, v.site ?? '', ...v.ips].some((s) => s.toLowerCase().includes(q))
  })
  const hosts = state.hosts.map((h) => h.peerId)
  return html`<section class="vms">
    <div class="toolbar">
      <input type="search" placeholder="search name, id, address, host" value=${query}
        onInput=${(e) => setQuery(e.currentTarget.value)} data-testid="vm-search" />
      <select value=${host} onChange=${(e) => setHost(e.currentTarget.value)} data-testid="vm-host-filter">
        <option value="">every host</option>
        ${hosts.map((p) => html`<option value=${p}>${shortId(p)}</option>`)}
      </select>
      <select value=${status} onChange=${(e) => setStatus(e.currentTarget.value)}>
        <option value="">any state</option>
        ${['running', 'paused', 'suspended', 'crashed', 'host-lost', 'host-left'].map((s) => html`<option value=${s}>${s}</option>`)}
      </select>
      <select value=${minMem} onChange=${(e) => setMinMem(e.currentTarget.value)}>
        <option value="">any size</option>
        ${[64, 256, 1024, 4096].map((m) => html`<option value=${m}>≥ ${mib(m)}</option>`)}
      </select>
      <label class="check"><input type="checkbox" checked=${busy} onChange=${(e) => setBusy(e.currentTarget.checked)} /> busy only</label>
      <span class="muted">${rows.length} of ${state.vms.length}</span>
      <button type="button" class="primary" onClick=${() => actions.createVm()} data-testid="create-vm">Create VM…</button>
    </div>
    <table class="grid" data-testid="vm-table">
      <thead><tr>
        <th>name</th><th>host</th><th>state</th><th>vCPU</th><th>memory</th><th>disk</th>
        <th>CPU load</th><th>dirty</th><th>address</th><th>last move</th><th></th>
      </tr></thead>
      <tbody>
        ${rows.map(
          (v) => html`<tr key=${v.id} data-testid="vm-row" data-vm=${v.id}>
            <td><span class="vm-name" data-testid="vm-name">${v.name}</span><br /><span class="muted small">${v.id}</span></td>
            <td title=${v.host}>${shortId(v.host)}<br /><span class="muted small">${v.site ?? ''}</span></td>
            <td>${v.status === 'ok' ? v.state : v.status}${v.migration ? html`<br /><span class="chip chip-suspect">${v.migration.phase}</span>` : null}</td>
            <td class="num">${v.vcpus}</td>
            <td class="num">${mib(v.memoryMiB)}</td>
            <td class="num">${mib(v.diskMiB)}</td>
            <td class="num">${v.cpu.toFixed(2)}</td>
            <td class="num">${v.dirtyMiBps.toFixed(1)} MiB/s</td>
            <td>${v.ips.length ? v.ips.join(', ') : '—'}</td>
            <td>${v.movedAt ? ago(now - v.movedAt) : v.epoch > 1 ? `moved (epoch ${v.epoch})` : 'never'}</td>
            <td class="actions">
              <button type="button" disabled=${!v.local || Boolean(v.migration)} title=${v.local ? '' : 'it runs on another host: use that agent’s dashboard'}
                onClick=${() => actions.migrate(v)} data-testid="migrate">Migrate…</button>
              <button type="button" class="danger" disabled=${!v.local || Boolean(v.migration)} onClick=${() => actions.remove(v)} data-testid="remove">Remove…</button>
            </td>
          </tr>`,
        )}
      </tbody>
    </table>
    ${state.vms.length === 0 ? html`<p class="muted pad">No VMs in the mesh yet.</p>` : null}
  </section>`
}
