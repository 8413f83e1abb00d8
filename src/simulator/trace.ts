// Workload traces: hosts, VMs with their initial host, and CPU demand over time. A synthetic generator
// (the default) and a reader for a simple CSV format, so public traces (Bitbrains, Azure, Google
// cluster data, BtrPlace instances) can be converted and replayed.
//
// CSV format, one record per line, `#` starts a comment, fields separated by commas:
//   host,<id>,<site>,<cpu cores>,<memory MiB>[,<disk MiB>]
//   vm,<id>,<host id or empty>,<vcpus>,<memory MiB>[,<dirty MiB/s>]
//   load,<time s>,<vm id>,<cpu cores in use>
// A VM's demand at time 0 is its load record at 0 (else 30 % of its vcpus) and holds until its next
// record; demand is capped at its vcpus. A VM without a host is placed first-fit (in file order). Without host records, --hosts identical hosts
// (32 cores, 128 GiB) are made. Load records may come in any order; a VM's demand holds until its next.
import { readFileSync } from 'node:fs'
import { type HostView, type Resources, type Rng, seededRng, type VmConstraints } from '../placement/index.js'

export const MiB = 1024 * 1024
const MIN = 60_000

export interface TraceVm {
  id: string
  /** Index of its initial host. */
  host: number
  vcpus: number
  memMiB: number
  dirtyBps: number
  cpu0: number
  constraints?: VmConstraints
}

/** Load changes at one instant: vm indexes and their new CPU demand (cores). */
export interface LoadBatch {
  t: number
  vms: number[]
  cpu: number[]
}

export interface Trace {
  hosts: HostView[]
  vms: TraceVm[]
  /** Simulated wall clock at t = 0 (ms since epoch): time-of-day rules read it. */
  startMs: number
  durationMs: number
  /** Load batches in time order, produced on demand. */
  loads: () => Iterator<LoadBatch>
}

export interface SyntheticInit {
  hosts: number
  vms: number
  seed: number
  durationMs?: number
  sites?: number
  /** A VM changes load about every this many ms on average. */
  changeEveryMs?: number
  /** Chance per VM per minute of a hot spell (CPU near 100 % for 5 to 20 min). */
  hotPerMinute?: number
}

const SITES = ['eu', 'us', 'asia', 'sa', 'af', 'oc']
const TYPES = [
  { vcpus: 1, mem: 2048, w: 0.3 },
  { vcpus: 2, mem: 4096, w: 0.3 },
  { vcpus: 4, mem: 8192, w: 0.25 },
  { vcpus: 8, mem: 16384, w: 0.12 },
  { vcpus: 16, mem: 32768, w: 0.03 },
]

export function hostId(i: number): string {
  return `h${String(i).padStart(5, '0')}`
}

export function syntheticTrace(init: SyntheticInit): Trace {
  const rnd = seededRng(init.seed)
  const nSites = Math.min(SITES.length, init.sites ?? 4)
  const durationMs = init.durationMs ?? 3_600_000
  const hosts: HostView[] = Array.from({ length: init.hosts }, (_, i) => ({
    id: hostId(i),
    // Sites in contiguous blocks of the ring, as hosts of one site share an id prefix.
    site: SITES[Math.floor((i * nSites) / init.hosts)]!,
    capacity: { cpu: 32, mem: 131_072, disk: 2_097_152 },
    state: 'up',
  }))
  // Uneven initial placement: some hosts busy, some nearly idle (room for consolidation).
  const weight = hosts.map(() => 0.25 + 1.5 * rnd())
  const cum: number[] = []
  let acc = 0
  for (const w of weight) {
    acc += w
    cum.push(acc)
  }
  const usedMem = new Float64Array(init.hosts)
  const usedCpu = new Float64Array(init.hosts)
  const base = new Float64Array(init.vms)
  const vms: TraceVm[] = []
  for (let k = 0; k < init.vms; k++) {
    const x = rnd()
    let seen = 0
    const type =
      TYPES.find((t) => {
        seen += t.w
        return x < seen
      }) ?? TYPES[0]!
    base[k] = 0.08 + 0.55 * rnd() ** 1.6
    const cpu0 = type.vcpus * base[k]!
    let h = pickWeighted(cum, rnd() * acc)
    for (let tries = 0; tries < init.hosts; tries++) {
      if (
        usedMem[h]! + type.mem <= hosts[h]!.capacity.mem &&
        usedCpu[h]! + cpu0 <= 0.85 * hosts[h]!.capacity.cpu
      )
        break
      h = (h + 1) % init.hosts
    }
    usedMem[h] = usedMem[h]! + type.mem
    usedCpu[h] = usedCpu[h]! + cpu0
    const c = rnd()
    const site = hosts[h]!.site
    const constraints: VmConstraints | undefined =
      c < 0.01
        ? { pin: hosts[h]!.id }
        : c < 0.04
          ? { antiAffinity: `g${Math.floor(k / 3)}` }
          : c < 0.08
            ? { sites: followTheSun(site, nSites, rnd) }
            : undefined
    vms.push({
      id: `v${String(k).padStart(6, '0')}`,
      host: h,
      vcpus: type.vcpus,
      memMiB: type.mem,
      dirtyBps: (5 + 60 * rnd()) * MiB,
      cpu0,
      ...(constraints ? { constraints } : {}),
    })
  }
  const startMs = Date.UTC(2026, 0, 5, 8, 0, 0)
  const changeP = Math.min(1, MIN / (init.changeEveryMs ?? 300_000))
  const hotP = init.hotPerMinute ?? 0.0004
  const loads = function* (): Iterator<LoadBatch> {
    const r = seededRng(init.seed ^ 0x5eed)
    const hotUntil = new Float64Array(init.vms)
    for (let t = MIN; t < durationMs; t += MIN) {
      const batch: LoadBatch = { t, vms: [], cpu: [] }
      const hourAngle = (2 * Math.PI * (startMs + t)) / 86_400_000
      for (let k = 0; k < init.vms; k++) {
        const v = vms[k]!
        const wasHot = hotUntil[k]! > t - MIN && hotUntil[k]! <= t
        let change = r() < changeP || wasHot
        if (hotUntil[k]! <= t && r() < hotP) {
          hotUntil[k] = t + (5 + 15 * r()) * MIN
          change = true
        }
        if (!change) continue
        let u: number
        if (hotUntil[k]! > t) u = 0.9 + 0.1 * r()
        else {
          const siteShift = (hosts[v.host]!.site.charCodeAt(0) % 6) / 3
          const diurnal = 1 + 0.35 * Math.sin(hourAngle - Math.PI / 2 + siteShift)
          u = base[k]! * diurnal * (0.75 + 0.5 * r())
        }
        batch.vms.push(k)
        batch.cpu.push(Math.min(1, Math.max(0.02, u)) * v.vcpus)
      }
      yield batch
    }
  }
  return { hosts, vms, startMs, durationMs, loads }
}

function followTheSun(home: string, nSites: number, rnd: Rng): VmConstraints['sites'] {
  // Users near home during its day, on another site the other half of the day.
  const other = SITES[Math.floor(rnd() * nSites)]!
  return [
    { site: home, fromHour: 6, toHour: 18 },
    { site: other, fromHour: 18, toHour: 6 },
  ]
}

function pickWeighted(cum: readonly number[], x: number): number {
  let lo = 0
  let hi = cum.length - 1
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (cum[mid]! < x) lo = mid + 1
    else hi = mid
  }
  return lo
}

export class TraceError extends Error {
  readonly code = 'bad-trace'
}

/** Reads the CSV format above. Throws TraceError naming the line of the first bad record. */
export function readCsvTrace(path: string, opts: { hosts?: number; durationMs?: number } = {}): Trace {
  return parseCsvTrace(readFileSync(path, 'utf8'), opts)
}

export function parseCsvTrace(text: string, opts: { hosts?: number; durationMs?: number } = {}): Trace {
  const hosts: HostView[] = []
  const hostIndex = new Map<string, number>()
  const vmRows: { id: string; host: string; vcpus: number; mem: number; dirty: number; line: number }[] = []
  const loadRows: { t: number; vm: string; cpu: number; line: number }[] = []
  const lines = text.split(/\r?\n/)
  lines.forEach((raw, n) => {
    const line = raw.replace(/#.*/, '').trim()
    if (!line) return
    const f = line.split(',').map((s) => s.trim())
    const num = (i: number, name: string, optional = false): number => {
      const s = f[i]
      if ((s === undefined || s === '') && optional) return Number.NaN
      const v = Number(s)
      if (!Number.isFinite(v) || v < 0) throw new TraceError(`line ${n + 1}: ${name} must be a number >= 0`)
      return v
    }
    if (f[0] === 'host') {
      if (!f[1]) throw new TraceError(`line ${n + 1}: host id missing`)
      if (hostIndex.has(f[1])) throw new TraceError(`line ${n + 1}: duplicate host ${f[1]}`)
      hostIndex.set(f[1], hosts.length)
      const disk = num(5, 'disk', true)
      hosts.push({
        id: f[1],
        site: f[2] || 'default',
        capacity: { cpu: num(3, 'cpu'), mem: num(4, 'memory'), disk: Number.isNaN(disk) ? 1e12 : disk },
        state: 'up',
      })
    } else if (f[0] === 'vm') {
      if (!f[1]) throw new TraceError(`line ${n + 1}: vm id missing`)
      const dirty = num(5, 'dirty rate', true)
      vmRows.push({
        id: f[1],
        host: f[2] ?? '',
        vcpus: num(3, 'vcpus'),
        mem: num(4, 'memory'),
        dirty: Number.isNaN(dirty) ? 20 : dirty,
        line: n + 1,
      })
    } else if (f[0] === 'load') {
      loadRows.push({ t: num(1, 'time') * 1000, vm: f[2] ?? '', cpu: num(3, 'cpu'), line: n + 1 })
    } else throw new TraceError(`line ${n + 1}: unknown record "${f[0]}" (host, vm or load)`)
  })
  if (hosts.length === 0) {
    const n = opts.hosts ?? 100
    for (let i = 0; i < n; i++) {
      hostIndex.set(hostId(i), i)
      hosts.push({
        id: hostId(i),
        site: 'default',
        capacity: { cpu: 32, mem: 131_072, disk: 1e12 },
        state: 'up',
      })
    }
  }
  const vmIndex = new Map<string, number>()
  const used = hosts.map(() => ({ cpu: 0, mem: 0 }))
  const firstLoad = new Map<string, number>()
  for (const l of loadRows) if (l.t === 0) firstLoad.set(l.vm, l.cpu)
  const vms: TraceVm[] = vmRows.map((r, k) => {
    if (vmIndex.has(r.id)) throw new TraceError(`line ${r.line}: duplicate vm ${r.id}`)
    vmIndex.set(r.id, k)
    const cpu0 = Math.min(r.vcpus, firstLoad.get(r.id) ?? r.vcpus * 0.3)
    let h = r.host ? hostIndex.get(r.host) : undefined
    if (r.host && h === undefined) throw new TraceError(`line ${r.line}: unknown host ${r.host}`)
    if (h === undefined) {
      h = used.findIndex(
        (u, i) => u.mem + r.mem <= hosts[i]!.capacity.mem && u.cpu + cpu0 <= hosts[i]!.capacity.cpu,
      )
      if (h < 0) throw new TraceError(`line ${r.line}: no host has room for vm ${r.id}`)
    }
    used[h]!.cpu += cpu0
    used[h]!.mem += r.mem
    return { id: r.id, host: h, vcpus: r.vcpus, memMiB: r.mem, dirtyBps: r.dirty * MiB, cpu0 }
  })
  for (const l of loadRows)
    if (!vmIndex.has(l.vm)) throw new TraceError(`line ${l.line}: load for unknown vm ${l.vm}`)
  const sorted = loadRows.filter((l) => l.t > 0).sort((a, b) => a.t - b.t || a.line - b.line)
  const last = sorted.length ? sorted[sorted.length - 1]!.t : 0
  const durationMs = opts.durationMs ?? Math.max(last + 600_000, 600_000)
  const loads = function* (): Iterator<LoadBatch> {
    let i = 0
    while (i < sorted.length) {
      const t = sorted[i]!.t
      const batch: LoadBatch = { t, vms: [], cpu: [] }
      for (; i < sorted.length && sorted[i]!.t === t; i++) {
        const l = sorted[i]!
        const k = vmIndex.get(l.vm)!
        batch.vms.push(k)
        batch.cpu.push(Math.min(vms[k]!.vcpus, l.cpu))
      }
      yield batch
    }
  }
  return { hosts, vms, startMs: Date.UTC(2026, 0, 5, 8, 0, 0), durationMs, loads }
}

export type { Resources }
