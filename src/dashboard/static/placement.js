// Placement: events (partition, plan, outcome), active hosts over time against the lower bound, dry runs.
import { useState } from 'preact/hooks'
import { count, duration, html, shortId } from './ui.js'

export function PlacementView({ state, actions }) {
  const p = state.placement
  const events = p ? [...p.open, ...p.recent] : []
  const names = new Map(state.vms.map((v) => [v.id, v.name]))
  return html`<section class="placement">
    <h2>active hosts over time</h2>
    <${Chart} points=${state.history} />
    <h2>plan (dry run)</h2>
    <${DryRun} actions=${actions} names=${names} />
    <h2>events ${p ? html`<span class="muted">${p.enabled ? 'placement on' : 'placement off'}${p.draining ? ', this host drains' : ''}${p.reservedBy ? `, reserved by ${p.reservedBy.id}` : ''}</span>` : null}</h2>
    ${!p ? html`<p class="muted">This agent runs no placement.</p>` : null}
    ${p && events.length === 0 ? html`<p class="muted">No placement event yet: every host is within its thresholds.</p>` : null}
    <table class="grid" data-testid="placement-events">
      <thead><tr><th>event</th><th>kind</th><th>state</th><th>partition</th><th>plan</th><th>duration</th></tr></thead>
      <tbody>
        ${events.map(
          (e) => html`<tr key=${e.id}>
            <td title=${e.id}>${shortId(e.id)}<br /><span class="muted small">${new Date(e.openedAt).toLocaleTimeString()}</span></td>
            <td>${e.kind}</td>
            <td><span class=${`chip chip-${e.state === 'done' ? 'alive' : e.state === 'growing' || e.state === 'executing' ? 'suspect' : 'left'}`}>${e.state}</span></td>
            <td>${e.members.map((m) => html`<span class="tag" title=${m}>${shortId(m)}</span>`)}</td>
            <td>${e.moves.length === 0 ? '—' : html`<ul class="moves">${e.moves.map((mv) => html`<li>${names.get(mv.vm) ?? mv.vm} ${shortId(mv.from)} → ${shortId(mv.to)} <span class="muted">${mv.reason}</span></li>`)}</ul>`}</td>
            <td class="num">${e.durationMs === undefined ? '…' : duration(e.durationMs)}</td>
          </tr>`,
        )}
      </tbody>
    </table>
  </section>`
}

function DryRun({ actions, names }) {
  const [policy, setPolicy] = useState('all')
  const [result, setResult] = useState(null)
  const [error, setError] = useState('')
  const run = async () => {
    setError('')
    try {
      setResult(await actions.plan(policy))
    } catch (err) {
      setError(err.message)
      setResult(null)
    }
  }
  return html`<div class="dryrun">
    <div class="toolbar">
      <select value=${policy} onChange=${(e) => setPolicy(e.currentTarget.value)} data-testid="plan-policy">
        ${['all', 'repair', 'balance', 'affinity', 'consolidate'].map((x) => html`<option value=${x}>${x}</option>`)}
      </select>
      <button type="button" onClick=${run} data-testid="plan">Dry-run plan</button>
      <span class="error">${error}</span>
    </div>
    ${
      result
        ? html`<div data-testid="plan-result">
            <p>${count(result.moves.length, 'move')} in ${count(result.waves, 'wave')} over ${count(result.hosts, 'host')} and ${count(result.vms, 'VM')}${result.emptied.length ? `; empties ${count(result.emptied.length, 'host')}` : ''}. Nothing moved.</p>
            ${
              result.moves.length
                ? html`<table class="grid"><thead><tr><th>VM</th><th>from → to</th><th>why</th></tr></thead><tbody>
              ${result.moves.map((m) => html`<tr><td title=${m.vm}>${names.get(m.vm) ?? m.vm}</td><td>${shortId(m.from)} → ${shortId(m.to)}</td><td>${m.why}</td></tr>`)}
            </tbody></table>`
                : null
            }
          </div>`
        : null
    }
  </div>`
}

/** Active hosts (solid) and the lower bound (dashed) as steps over time, in plain SVG. */
export function Chart({ points }) {
  const w = 720
  const hgt = 160
  const pad = 28
  if (points.length < 2)
    return html`<p class="muted" data-testid="chart">Collecting points (one every 5 s)…</p>`
  const t0 = points[0].t
  const t1 = points[points.length - 1].t
  const ymax = Math.max(1, ...points.map((p) => Math.max(p.active, p.lowerBound, p.alive)))
  const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (w - 2 * pad)
  const y = (v) => hgt - pad + 4 - (v / ymax) * (hgt - 2 * pad)
  const steps = (key) =>
    points
      .map(
        (p, i) =>
          `${i === 0 ? 'M' : 'H'}${x(p.t).toFixed(1)} ${i === 0 ? `${y(p[key]).toFixed(1)}` : ''}V${y(p[key]).toFixed(1)}`,
      )
      .join(' ')
  const last = points[points.length - 1]
  return html`<figure class="chart" data-testid="chart">
    <svg viewBox=${`0 0 ${w} ${hgt}`} role="img" aria-label="active hosts and lower bound over time">
      ${[0, ymax].map((v) => html`<g><line x1=${pad} x2=${w - pad} y1=${y(v)} y2=${y(v)} class="grid-line" /><text x="4" y=${y(v) + 4} class="axis">${v}</text></g>`)}
      <path d=${steps('alive')} class="line-alive" />
      <path d=${steps('active')} class="line-active" />
      <path d=${steps('lowerBound')} class="line-bound" />
      <text x=${pad} y=${hgt - 6} class="axis">${new Date(t0).toLocaleTimeString()}</text>
      <text x=${w - pad} y=${hgt - 6} class="axis" text-anchor="end">${new Date(t1).toLocaleTimeString()}</text>
    </svg>
    <figcaption><span class="key key-active"></span> active hosts ${last.active}
      <span class="key key-bound"></span> lower bound ${last.lowerBound}
      <span class="key key-alive"></span> live hosts ${last.alive}</figcaption>
  </figure>`
}
