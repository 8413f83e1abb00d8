// Small helpers shared by the benchmarks: number formatting, a markdown table on stdout, statistics.

/** `x` with `d` decimals, or '-' when it is not a finite number. */
export function f(x: number | undefined, d = 0): string {
  return x !== undefined && Number.isFinite(x) ? x.toFixed(d) : '-'
}

/** A ratio as `0.42×`, or '-'. */
export function ratio(x: number | undefined, d = 2): string {
  return x !== undefined && Number.isFinite(x) ? `${x.toFixed(d)}×` : '-'
}

/** A markdown table (right-aligned cells, first column left-aligned) as lines of text. */
export function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const pad = (c: string, i: number) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))
  const line = (cells: string[]) => `| ${cells.map((c, i) => pad(c, i)).join(' | ')} |`
  const rule = `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`
  return [line(head), rule, ...rows.map(line)].join('\n')
}

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

export const MiB = 1024 * 1024

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}
