// The page's copy of the mesh: a snapshot from the agent's event stream, then its deltas.
const MAX_FINISHED = 20

export function createStore() {
  const listeners = new Set()
  const state = {
    connected: false,
    error: '',
    clockOffset: 0,
    meta: null,
    hosts: [],
    vms: [],
    migrations: new Map(),
    placement: null,
    history: [],
    images: null,
    vclusters: null,
    version: 0,
  }
  let queued = false
  const changed = () => {
    state.version++
    if (queued) return
    queued = true
    requestAnimationFrame(() => {
      queued = false
      for (const fn of listeners) fn(state.version)
    })
  }

  const apply = (delta) => {
    switch (delta.section) {
      case 'migration':
        state.migrations.set(delta.data.id, delta.data)
        prune(state.migrations)
        break
      case 'migration-gone':
        state.migrations.delete(delta.data)
        break
      case 'history':
        state.history.push(delta.data)
        if (state.history.length > 720) state.history.splice(0, state.history.length - 720)
        break
      default:
        state[delta.section] = delta.data
    }
  }

  let source
  const connect = () => {
    source = new EventSource('/dashboard/events')
    source.addEventListener('snapshot', (e) => {
      const snap = JSON.parse(e.data)
      state.clockOffset = snap.serverNow - Date.now()
      for (const k of ['meta', 'hosts', 'vms', 'placement', 'history', 'images', 'vclusters'])
        state[k] = snap[k]
      state.migrations = new Map(snap.migrations.map((m) => [m.id, m]))
      state.connected = true
      state.error = ''
      changed()
    })
    source.addEventListener('delta', (e) => {
      apply(JSON.parse(e.data))
      changed()
    })
    source.addEventListener('error', async () => {
      state.connected = false
      changed()
      // A stream refused for want of a session does not come back: back to the login page.
      const res = await fetch('/dashboard/api/v1/node', { headers: { 'x-skymesh-dashboard': '1' } }).catch(
        () => undefined,
      )
      if (res?.status === 401) return location.assign('/dashboard/login')
      state.error = res ? '' : 'the agent does not answer; retrying'
      // EventSource retries a dropped connection by itself, but not one refused with an error status.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000)
    })
  }

  return {
    state,
    connect,
    subscribe(fn) {
      listeners.add(fn)
      return () => listeners.delete(fn)
    },
    now: () => Date.now() + state.clockOffset,
  }
}

function prune(migrations) {
  const finished = [...migrations.values()].filter((m) => ['done', 'failed', 'cancelled'].includes(m.phase))
  if (finished.length <= MAX_FINISHED) return
  finished.sort((a, b) => a.startedAt - b.startedAt)
  for (const m of finished.slice(0, finished.length - MAX_FINISHED)) migrations.delete(m.id)
}
