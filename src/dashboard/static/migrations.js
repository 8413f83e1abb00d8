// Migrations this host takes part in: running ones with a progress bar, finished ones with totals.
import { Bar, bytes, duration, html, pct, shortId } from './ui.js'

const TERMINAL = new Set(['done', 'failed', 'cancelled'])

export function MigrationsView({ state, now, actions }) {
  const all = [...state.migrations.values()].sort((a, b) => b.startedAt - a.startedAt)
  const running = all.filter((m) => !TERMINAL.has(m.phase))
  const finished = all.filter((m) => TERMINAL.has(m.phase))
  return html`<section class="migrations">
    <h2>in progress <span class="muted">${running.length}</span></h2>
    ${running.length === 0 ? html`<p class="muted">No migration runs on this host now.</p>` : null}
    ${running.map((m) => html`<${Running} key=${m.id} m=${m} now=${now} actions=${actions} />`)}
    <h2>finished <span class="muted">${finished.length}</span></h2>
    <table class="grid" data-testid="finished-migrations">
      <thead><tr><th>VM</th><th>from → to</th><th>mode</th><th>outcome</th><th>total</th><th>downtime</th><th>rounds</th><th>bytes</th><th>wire</th></tr></thead>
      <tbody>
        ${finished.map(
          (m) => html`<tr key=${m.id} data-testid="finished-migration" data-phase=${m.phase}>
            <td>${m.vmName}</td>
            <td>${shortId(m.from)} → ${shortId(m.to)}</td>
            <td>${m.mode}${m.postcopy ? ' (post-copy)' : ''}</td>
            <td><span class=${`chip chip-${m.phase === 'done' ? 'alive' : 'dead'}`}>${m.phase}</span>${m.error ? html`<br /><span class="small">${m.error.message}</span>` : null}</td>
            <td class="num">${duration(m.totalMs)}</td>
            <td class="num">${m.downtimeMs === undefined ? '—' : duration(m.downtimeMs)}</td>
            <td class="num">${m.round}</td>
            <td class="num">${bytes(m.bytesSent)}</td>
            <td class="num">${bytes(m.wireBytes)}</td>
          </tr>`,
        )}
      </tbody>
    </table>
  </section>`
}

function Running({ m, now, actions }) {
  return html`<article class="migration" data-testid="migration" data-phase=${m.phase} data-progress=${m.progress}>
    <header>
      <strong class="vm-name">${m.vmName}</strong>
      <span class="muted">${m.direction === 'out' ? 'to' : 'from'} ${shortId(m.direction === 'out' ? m.to : m.from)}</span>
      <span class="chip chip-suspect" data-testid="migration-phase">${m.phase}</span>
      <button type="button" class="small-btn" onClick=${() => actions.cancelMigration(m)}>Cancel…</button>
    </header>
    <${Bar} value=${m.progress} label=${pct(m.progress)} testid="migration-bar" />
    <dl class="facts">
      <dt>mode</dt><dd>${m.mode}${m.postcopy ? ' → post-copy' : ''}</dd>
      <dt>round</dt><dd>${m.round}</dd>
      <dt>bandwidth</dt><dd>${m.bandwidthMiBps.toFixed(1)} MiB/s</dd>
      <dt>dirty rate</dt><dd>${m.dirtyRateMiBps.toFixed(1)} MiB/s</dd>
      <dt>sent</dt><dd>${bytes(m.bytesSent)} of ${bytes(m.vmBytes)} (wire ${bytes(m.wireBytes)})</dd>
      <dt>ETA</dt><dd>${m.etaMs === undefined ? '—' : duration(m.etaMs)}</dd>
      <dt>running for</dt><dd>${duration(now - m.startedAt)}</dd>
    </dl>
  </article>`
}
