// The simulator's report: a text table (modes side by side, ratios against the central solver) and an
// SVG plot of load and active hosts over time.
import type { ModeResult } from './simulate.js'
import { round } from './stats.js'

const GiB = 1024 ** 3

export function table(results: readonly ModeResult[]): string {
  const central = results.find((r) => r.mode === 'central')
  const rows: [string, (r: ModeResult) => string][] = [
    ['overload episodes', (r) => `${r.overload.episodes}`],
    ['overload duration p50 / p99 (s)', (r) => `${r.overload.p50S} / ${r.overload.p99S}`],
    [
      'overloads past the grace: count, p50 / p99 beyond it (s)',
      (r) => `${r.overload.pastGrace}: ${r.overload.pastGraceP50S} / ${r.overload.pastGraceP99S}`,
    ],
    ['cumulated overload time (s)', (r) => `${r.overload.cumulativeS}`],
    [
      'cumulated overload vs central',
      (r) =>
        central && central.overload.cumulativeS > 0
          ? `${round(r.overload.cumulativeS / central.overload.cumulativeS, 2)}x`
          : '-',
    ],
    ['still overloaded at end', (r) => `${r.overload.openAtEnd}`],
    ['events (done/unresolved/yielded/failed)', (r) => outcomes(r)],
    [
      'overload event: open -> plan p50 / p99 (ms)',
      (r) => (r.mode === 'cooperative' ? `${r.events.toPlanP50Ms} / ${r.events.toPlanP99Ms}` : '-'),
    ],
    [
      'overload event: open -> host relieved p50 / p99 (s)',
      (r) =>
        r.mode === 'cooperative'
          ? `${round(r.events.toReliefP50Ms / 1000, 2)} / ${round(r.events.toReliefP99Ms / 1000, 2)}`
          : '-',
    ],
    [
      'overload event: open -> last migration done p50 / p99 (s)',
      (r) =>
        r.mode === 'cooperative'
          ? `${round(r.events.toDoneP50Ms / 1000, 1)} / ${round(r.events.toDoneP99Ms / 1000, 1)}`
          : '-',
    ],
    [
      'partition size p50 / max',
      (r) => (r.mode === 'cooperative' ? `${r.events.partitionP50} / ${r.events.partitionMax}` : '-'),
    ],
    [
      'planner ms per event p50 / p99 / max',
      (r) => (r.plannerMs.count ? `${r.plannerMs.p50} / ${r.plannerMs.p99} / ${r.plannerMs.max}` : '-'),
    ],
    ['migrations (failed)', (r) => `${r.migrations} (${r.failedMigrations})`],
    ['GiB moved', (r) => `${round(r.bytes / GiB, 1)}`],
    ['active hosts start -> end', (r) => `${r.activeHosts.start} -> ${r.activeHosts.end}`],
    ['lower bound / FFD (same view, end)', (r) => `${r.lowerBoundEnd} / ${r.ffdEnd}`],
    ['active hosts vs FFD', (r) => (r.ffdEnd ? `${round(r.activeHosts.end / r.ffdEnd, 3)}x` : '-')],
    [
      'over-commits / unreserved / double moves',
      (r) => `${r.violations.overcommit} / ${r.violations.unreserved} / ${r.violations.doubleMove}`,
    ],
    ['wall time (s)', (r) => `${round(r.wallMs / 1000, 1)}`],
  ]
  const head = `| metric | ${results.map((r) => r.mode).join(' | ')} |`
  const sep = `|---|${results.map(() => '---').join('|')}|`
  return [head, sep, ...rows.map(([name, f]) => `| ${name} | ${results.map(f).join(' | ')} |`)].join('\n')
}

function outcomes(r: ModeResult): string {
  const o = r.events.outcomes
  return `${o.done ?? 0}/${o.unresolved ?? 0}/${o.yielded ?? 0}/${o.failed ?? 0}`
}

const COLORS: Record<string, string> = { cooperative: '#1f77b4', central: '#d62728', none: '#7f7f7f' }

/** Two panels over time: CPU load and overloaded hosts; active hosts per mode with the lower bound and FFD. */
export function svg(results: readonly ModeResult[], title: string): string {
  const W = 900
  const H = 300
  const pad = 50
  const tMax = Math.max(1, ...results.flatMap((r) => r.series.map((s) => s.t)))
  const x = (t: number) => pad + ((W - 2 * pad) * t) / tMax
  const panel = (
    top: number,
    yMax: number,
    lines: { pts: [number, number][]; color: string; label: string; dash?: boolean }[],
    yLabel: string,
  ) => {
    const y = (v: number) => top + H - pad - ((H - 2 * pad) * v) / (yMax || 1)
    const parts = [
      `<rect x="${pad}" y="${top + pad}" width="${W - 2 * pad}" height="${H - 2 * pad}" fill="none" stroke="#ccc"/>`,
      `<text x="10" y="${top + pad - 10}" font-size="12">${yLabel} (max ${round(yMax, 2)})</text>`,
      `<text x="${W - pad}" y="${top + H - pad + 16}" font-size="11" text-anchor="end">${tMax} s</text>`,
    ]
    lines.forEach((l, i) => {
      const d = l.pts.map(([t, v]) => `${round(x(t), 1)},${round(y(v), 1)}`).join(' ')
      parts.push(
        `<polyline fill="none" stroke="${l.color}" stroke-width="1.5"${l.dash ? ' stroke-dasharray="4 3"' : ''} points="${d}"/>`,
        `<text x="${pad + 10 + i * 150}" y="${top + H - 12}" font-size="11" fill="${l.color}">${l.label}</text>`,
      )
    })
    return parts.join('\n')
  }
  const first = results[0]!
  const load = [
    ...results.map((r) => ({
      pts: r.series.map((s) => [s.t, s.overloaded] as [number, number]),
      color: COLORS[r.mode] ?? '#000',
      label: `overloaded hosts, ${r.mode}`,
    })),
  ]
  const loadMax = Math.max(1, ...load.flatMap((l) => l.pts.map((p) => p[1])))
  const cpuLine = {
    pts: first.series.map((s) => [s.t, s.cpuLoad * loadMax] as [number, number]),
    color: '#2ca02c',
    label: `CPU load (scaled, peak ${round(Math.max(...first.series.map((s) => s.cpuLoad)) * 100, 1)} %)`,
    dash: true,
  }
  const active = [
    ...results.map((r) => ({
      pts: r.series.map((s) => [s.t, s.active] as [number, number]),
      color: COLORS[r.mode] ?? '#000',
      label: `active, ${r.mode}`,
    })),
    {
      pts: first.series.map((s) => [s.t, s.lowerBound] as [number, number]),
      color: '#000',
      label: 'lower bound',
      dash: true,
    },
    {
      pts:
        results
          .find((r) => r.mode === 'cooperative')
          ?.series.filter((s) => s.ffd !== undefined)
          .map((s) => [s.t, s.ffd!] as [number, number]) ?? [],
      color: '#ff7f0e',
      label: 'FFD (coop view)',
      dash: true,
    },
  ]
  const activeMax = Math.max(1, ...active.flatMap((l) => l.pts.map((p) => p[1])))
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${2 * H + 30}" font-family="sans-serif">`,
    `<text x="${W / 2}" y="18" font-size="14" text-anchor="middle">${escapeXml(title)}</text>`,
    panel(20, loadMax, [...load, cpuLine], 'overloaded hosts and CPU load'),
    panel(20 + H, activeMax, active, 'active hosts'),
    '</svg>',
  ].join('\n')
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;')
}
