// Human output: aligned tables, key/value blocks, sizes, ages and short peer ids.

export type Align = 'left' | 'right'

/** Columns padded to their widest cell, two spaces apart, no trailing blanks. */
export function table(headers: string[], rows: string[][], align: Align[] = []): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]) =>
    widths
      .map((w, i) => {
        const cell = cells[i] ?? ''
        return align[i] === 'right' ? cell.padStart(w) : cell.padEnd(w)
      })
      .join('  ')
      .trimEnd()
  return `${[line(headers), ...rows.map(line)].join('\n')}\n`
}

/** `key  value` lines with the keys padded to one width. */
export function keyValues(pairs: [string, string][]): string {
  const w = Math.max(0, ...pairs.map(([k]) => k.length))
  return pairs.map(([k, v]) => `${k.padEnd(w)}  ${v}`.trimEnd()).join('\n') + (pairs.length ? '\n' : '')
}

function trimNumber(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(n < 10 ? 2 : 1).replace(/\.?0+$/, '')
}

/** 256 → `256 MiB`, 1536 → `1.5 GiB`, 0.5 → `512 KiB`. */
export function formatMiB(mib: number): string {
  if (!Number.isFinite(mib)) return '-'
  if (mib !== 0 && Math.abs(mib) < 1) return `${trimNumber(mib * 1024)} KiB`
  if (Math.abs(mib) >= 1024 * 1024) return `${trimNumber(mib / (1024 * 1024))} TiB`
  if (Math.abs(mib) >= 1024) return `${trimNumber(mib / 1024)} GiB`
  return `${trimNumber(mib)} MiB`
}

/** A rate in MiB/s, `-` when zero or unknown. */
export function formatRate(mibps: number | undefined): string {
  return mibps ? `${trimNumber(mibps)} MiB/s` : '-'
}

/** Milliseconds as `45s`, `3m12s`, `2h05m`, `3d04h`. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '-'
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${s}s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`
  const h = Math.floor(m / 60)
  if (h < 24) return `${h}h${String(m % 60).padStart(2, '0')}m`
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`
}

/** Time since an ISO 8601 date, `-` if it does not parse. */
export function formatAge(iso: string | undefined, now = Date.now()): string {
  const t = iso ? Date.parse(iso) : Number.NaN
  return Number.isNaN(t) ? '-' : formatDuration(Math.max(0, now - t))
}

/** `12D3KooWAbc…xyz123` → `12D3…xyz123`: peer ids share their prefix, the tail tells them apart. */
export function shortId(id: string | undefined): string {
  if (!id) return '-'
  return id.length > 14 ? `${id.slice(0, 4)}…${id.slice(-6)}` : id
}
