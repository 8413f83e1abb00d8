// The dashboard page: a live view of the mesh as this agent sees it, and the operator's actions.
import { render } from 'preact'
import { useEffect, useState } from 'preact/hooks'
import { api } from './api.js'
import { ImagesView } from './images.js'
import { MeshView } from './mesh.js'
import { MigrationsView } from './migrations.js'
import { PlacementView } from './placement.js'
import { createStore } from './store.js'
import { count, html, mib, shortId } from './ui.js'
import { VmsView } from './vms.js'

const store = createStore()
const TABS = [
  ['mesh', 'Mesh'],
  ['vms', 'VMs'],
  ['migrations', 'Migrations'],
  ['placement', 'Placement'],
  ['images', 'Images'],
]

function useStore() {
  const [, setVersion] = useState(0)
  useEffect(() => store.subscribe(setVersion), [])
  // "ago" columns age even when nothing changes
  useEffect(() => {
    const t = setInterval(() => setVersion((v) => v + 1), 1000)
    return () => clearInterval(t)
  }, [])
  return store.state
}

function App() {
  const state = useStore()
  const [tab, setTab] = useState(location.hash.slice(1) || 'mesh')
  const [dialog, setDialog] = useState(null)
  const [toast, setToast] = useState(null)
  useEffect(() => {
    const on = () => setTab(location.hash.slice(1) || 'mesh')
    addEventListener('hashchange', on)
    return () => removeEventListener('hashchange', on)
  }, [])
  const say = (text, kind = 'ok') => {
    setToast({ text, kind })
    setTimeout(() => setToast(null), 6000)
  }
  const actions = makeActions(state, setDialog, say)
  const now = store.now()
  const counts = { alive: 0, suspect: 0, dead: 0, left: 0 }
  for (const h of state.hosts) if (h.status in counts) counts[h.status]++
  const view =
    {
      mesh: MeshView,
      vms: VmsView,
      migrations: MigrationsView,
      placement: PlacementView,
      images: ImagesView,
    }[tab] ?? MeshView
  return html`<div class="app">
    <header class="top">
      <h1>skymesh</h1>
      ${state.meta ? html`<span class="muted" title=${state.meta.peerId}>agent ${shortId(state.meta.peerId)} · site ${state.meta.site} · ${state.meta.version}</span>` : null}
      <span class="counts" data-testid="counts">
        <span class="chip chip-alive">${counts.alive} alive</span>
        ${counts.suspect ? html`<span class="chip chip-suspect">${counts.suspect} suspect</span>` : null}
        ${counts.dead ? html`<span class="chip chip-dead">${counts.dead} dead</span>` : null}
        <span class="chip">${count(state.vms.length, 'VM')}</span>
      </span>
      <span class=${state.connected ? 'live on' : 'live off'} data-testid="live">${state.connected ? 'live' : state.error || 'connecting…'}</span>
      <button type="button" class="link" onClick=${logout}>Sign out</button>
    </header>
    <nav class="tabs">
      ${TABS.map(([id, label]) => html`<a href=${`#${id}`} class=${tab === id ? 'tab active' : 'tab'} data-testid=${`tab-${id}`}>${label}${id === 'migrations' ? badge(state) : ''}</a>`)}
    </nav>
    <main>${state.meta ? html`<${view} state=${state} now=${now} actions=${actions} />` : html`<p class="muted pad">Connecting to the agent…</p>`}</main>
    ${dialog ? html`<${Dialog} ...${dialog} close=${() => setDialog(null)} />` : null}
    ${toast ? html`<div class=${`toast ${toast.kind}`} role="status" data-testid="toast">${toast.text}</div>` : null}
  </div>`
}

function badge(state) {
  const n = [...state.migrations.values()].filter(
    (m) => !['done', 'failed', 'cancelled'].includes(m.phase),
  ).length
  return n ? ` (${n})` : ''
}

async function logout() {
  await fetch('/dashboard/logout', { method: 'POST', credentials: 'same-origin' }).catch(() => undefined)
  location.assign('/dashboard/login')
}

/** A confirmation: `body` renders the question (and any fields), `run` does it and says what happened. */
function Dialog({ title, body, confirmLabel, run, close, danger }) {
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState('')
  const [values, setValues] = useState({})
  const set = (k, v) => setValues((old) => ({ ...old, [k]: v }))
  const submit = async (e) => {
    e.preventDefault()
    setBusy(true)
    setError('')
    try {
      await run(values)
      close()
    } catch (err) {
      setError(err.message)
      setBusy(false)
    }
  }
  return html`<div class="backdrop" onClick=${(e) => e.target === e.currentTarget && close()}>
    <form class="dialog" role="dialog" aria-modal="true" aria-label=${title} onSubmit=${submit} data-testid="dialog">
      <h2>${title}</h2>
      ${body(values, set)}
      <p class="error" role="alert">${error}</p>
      <div class="buttons">
        <button type="button" onClick=${close}>Cancel</button>
        <button type="submit" class=${danger ? 'danger' : 'primary'} disabled=${busy} data-testid="confirm">${busy ? '…' : confirmLabel}</button>
      </div>
    </form>
  </div>`
}

function makeActions(state, open, say) {
  const liveHosts = () => state.hosts.filter((h) => h.status === 'alive' || h.self)
  return {
    migrate(vm) {
      const targets = liveHosts().filter((h) => h.peerId !== vm.host)
      open({
        title: `Migrate ${vm.name}`,
        confirmLabel: 'Migrate',
        body: (
          v,
          set,
        ) => html`<p>Live-migrate VM <strong>${vm.name}</strong> (${mib(vm.memoryMiB)} memory, ${mib(vm.diskMiB)} disk) from ${shortId(vm.host)} to:</p>
          <label>destination <select required value=${v.to ?? ''} onChange=${(e) => set('to', e.currentTarget.value)} data-testid="migrate-target">
            <option value="" disabled>choose a host</option>
            ${targets.map((h) => html`<option value=${h.peerId}>${shortId(h.peerId)} (site ${h.site}${h.capacity ? `, ${mib(h.capacity.memoryMiB - (h.used?.memoryMiB ?? 0))} free` : ''})</option>`)}
          </select></label>
          <label>mode <select value=${v.mode ?? 'auto'} onChange=${(e) => set('mode', e.currentTarget.value)}>
            <option value="auto">auto (pre-copy, post-copy if it does not converge)</option>
            <option value="precopy">pre-copy</option><option value="postcopy">post-copy</option>
          </select></label>
          <label>bandwidth cap in MiB/s (empty: none) <input type="number" min="1" value=${v.bandwidth ?? ''}
            onInput=${(e) => set('bandwidth', e.currentTarget.value)} data-testid="migrate-bandwidth" /></label>`,
        run: async (v) => {
          if (!v.to) throw new Error('choose a destination')
          const req = { to: v.to, mode: v.mode ?? 'auto' }
          if (v.bandwidth) req.bandwidthMiBps = Number(v.bandwidth)
          const m = await api('POST', `/v1/vms/${encodeURIComponent(vm.id)}/migrate`, req)
          say(`migration ${m.id} of ${vm.name} started`)
          location.hash = 'migrations'
        },
      })
    },
    remove(vm) {
      open({
        title: `Remove ${vm.name}`,
        confirmLabel: 'Remove',
        danger: true,
        body: () =>
          html`<p>Delete VM <strong>${vm.name}</strong> (${vm.id}) and its disk? This cannot be undone.</p>`,
        run: async () => {
          await api('DELETE', `/v1/vms/${encodeURIComponent(vm.id)}`)
          say(`VM ${vm.name} removed`)
        },
      })
    },
    createVm() {
      open({
        title: 'Create a VM on this host',
        confirmLabel: 'Create',
        body: (v, set) => html`<div class="form-grid">
          <label>name <input required maxlength="63" value=${v.name ?? ''} onInput=${(e) => set('name', e.currentTarget.value)} data-testid="vm-form-name" /></label>
          <label>vCPUs <input type="number" min="1" max="64" value=${v.vcpus ?? 1} onInput=${(e) => set('vcpus', e.currentTarget.value)} /></label>
          <label>memory (MiB) <input type="number" min="1" value=${v.memoryMiB ?? 64} onInput=${(e) => set('memoryMiB', e.currentTarget.value)} /></label>
          <label>disk (MiB) <input type="number" min="1" value=${v.diskMiB ?? 64} onInput=${(e) => set('diskMiB', e.currentTarget.value)} /></label>
          <label>guest writes (MiB/s) <input type="number" min="0" value=${v.dirtyMiBps ?? 0} onInput=${(e) => set('dirtyMiBps', e.currentTarget.value)} /></label>
        </div>`,
        run: async (v) => {
          const memoryMiB = Number(v.memoryMiB ?? 64)
          const vm = await api('POST', '/v1/vms', {
            name: String(v.name ?? '').trim(),
            vcpus: Number(v.vcpus ?? 1),
            memoryMiB,
            diskMiB: Number(v.diskMiB ?? 64),
            workload: { dirtyMiBps: Number(v.dirtyMiBps ?? 0), hotSetMiB: Math.min(16, memoryMiB) },
          })
          say(`VM ${vm.name} created (${vm.id})`)
        },
      })
    },
    drain(host) {
      open({
        title: `Drain ${shortId(host.peerId)}`,
        confirmLabel: 'Drain',
        danger: true,
        body: () =>
          html`<p>Move every VM off host <strong title=${host.peerId}>${shortId(host.peerId)}</strong> (site ${host.site}, ${count(host.vmCount, 'VM')})? Placement finds them new hosts; the host takes no new VMs.</p>`,
        run: async () => {
          const r = await api('POST', `/v1/hosts/${encodeURIComponent(host.peerId)}/drain`)
          say(`draining ${shortId(r.host)}: ${count(r.vms, 'VM')} to move`)
        },
      })
    },
    cancelMigration(m) {
      open({
        title: `Cancel migration of ${m.vmName}`,
        confirmLabel: 'Cancel migration',
        danger: true,
        body: () => html`<p>Stop migration ${m.id}? Before its handover the VM stays on its source host.</p>`,
        run: async () => {
          await api('DELETE', `/v1/migrations/${encodeURIComponent(m.id)}`)
          say(`migration ${m.id} cancelled`)
        },
      })
    },
    plan: (policy) => api('POST', '/v1/placement/plan', { dryRun: true, policy }),
  }
}

store.connect()
const root = document.getElementById('app')
root.textContent = ''
render(html`<${App} />`, root)
