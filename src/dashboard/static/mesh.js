// The mesh view: hosts grouped by site, each with liveness, CPU/memory/disk bars and its VMs.
import { Bar, count, html, mib, shortId } from './ui.js'

const ratio = (used, cap) => (cap > 0 ? used / cap : 0)

export function MeshView({ state, actions }) {
  const bySite = new Map()
  for (const h of state.hosts) {
    const site = h.site || '(no site)'
    if (!bySite.has(site)) bySite.set(site, [])
    bySite.get(site).push(h)
  }
  const vmsOf = new Map()
  for (const v of state.vms) {
    if (!vmsOf.has(v.host)) vmsOf.set(v.host, [])
    vmsOf.get(v.host).push(v)
  }
  return html`<section class="mesh">
    ${[...bySite].map(
      ([site, hosts]) => html`<div class="site" data-testid="site">
        <h2>site <span class="site-name">${site}</span> <span class="muted site-count">${count(hosts.length, 'host')}</span></h2>
        <div class="hosts">
          ${hosts.map((h) => html`<${HostCard} key=${h.peerId} host=${h} vms=${vmsOf.get(h.peerId) ?? []} actions=${actions} />`)}
        </div>
      </div>`,
    )}
  </section>`
}

function HostCard({ host, vms, actions }) {
  const cap = host.capacity
  const used = host.used
  const live = host.status === 'alive' || host.self
  return html`<article class=${`host status-${host.status}`} data-testid="host" data-peer=${host.peerId} data-status=${host.status}>
    <header>
      <span class="host-id" title=${host.peerId}>${shortId(host.peerId)}</span>
      ${host.self ? html`<span class="badge">this agent</span>` : null}
      <span class=${`chip chip-${host.status}`} data-testid="host-status">${host.status}</span>
    </header>
    ${
      cap && used
        ? html`<div class="gauges">
            <label>CPU</label><${Bar} value=${ratio(host.cpuLoad ?? 0, cap.vcpus)} label=${`${(host.cpuLoad ?? 0).toFixed(1)} / ${cap.vcpus}`} />
            <label>mem</label><${Bar} value=${ratio(used.memoryMiB, cap.memoryMiB)} label=${`${mib(used.memoryMiB)} / ${mib(cap.memoryMiB)}`} />
            <label>disk</label><${Bar} value=${ratio(used.diskMiB, cap.diskMiB)} label=${`${mib(used.diskMiB)} / ${mib(cap.diskMiB)}`} />
          </div>`
        : html`<p class="muted">no state gossiped yet</p>`
    }
    <ul class="host-vms">
      ${vms.map(
        (v) => html`<li key=${v.id} class=${`vm vm-${v.status}`} data-testid="host-vm" title=${v.id}>
          <span class="vm-name">${v.name}</span> <span class="muted">${v.status === 'ok' ? v.state : v.status}</span>
        </li>`,
      )}
      ${vms.length === 0 ? html`<li class="muted">no VMs</li>` : null}
    </ul>
    <footer>
      <button type="button" disabled=${!live} onClick=${() => actions.drain(host)} data-testid="drain">Drain…</button>
    </footer>
  </article>`
}
