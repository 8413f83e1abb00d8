// Shared helpers of the dashboard page: htm bound to preact, formatting. Every name the page shows goes
// through preact as text (never innerHTML), so a VM named <script> is shown, not run.
import htm from 'htm'
import { h } from 'preact'

export const html = htm.bind(h)

/** "1 host", "3 hosts": a count with its noun in the right number. */
export function count(n, noun, plural = `${noun}s`) {
  return `${n} ${n === 1 ? noun : plural}`
}

export function shortId(id) {
  if (typeof id !== 'string') return ''
  return id.length > 16 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id
}

export function bytes(n) {
  if (!Number.isFinite(n)) return '—'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`
}

export function mib(n) {
  return Number.isFinite(n) ? bytes(n * 1024 * 1024) : '—'
}

export function duration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '—'
  if (ms < 1000) return `${Math.round(ms)} ms`
  const s = ms / 1000
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`
  const hours = Math.floor(m / 60)
  if (hours < 48) return `${hours} h ${m % 60} min`
  return `${Math.floor(hours / 24)} d ${hours % 24} h`
}

export function ago(ms) {
  return ms === undefined || ms === null ? '—' : `${duration(ms)} ago`
}

export function pct(x) {
  return Number.isFinite(x) ? `${Math.round(x * 100)} %` : '—'
}

/** A horizontal bar for a 0..1 share; `warn` above 0.8. */
export function Bar({ value, label, testid }) {
  const v = Number.isFinite(value) ? Math.max(0, Math.min(1, value)) : 0
  const cls = v > 0.9 ? 'bar-fill hot' : v > 0.8 ? 'bar-fill warn' : 'bar-fill'
  return html`<div class="bar" title=${label ?? pct(v)} data-testid=${testid} data-value=${v.toFixed(4)}>
    <div class=${cls} style=${{ width: `${(v * 100).toFixed(1)}%` }}></div>
    ${label ? html`<span class="bar-label">${label}</span>` : null}
  </div>`
}
