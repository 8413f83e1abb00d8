// What `skymesh demo` shows each tick: pure functions from a snapshot of the agents to text.
import type { NodeInfo, VmRecord } from '../node/types.js'
import { formatDuration, formatMiB, formatRate, shortId, table } from './format.js'

export interface AgentSnapshot {
  index: number
  site: string
  dataDir: string
  api?: string
  peerId?: string
  node?: NodeInfo
  peers?: number
  /** The agent's own view of the VMs. */
  vms?: VmRecord[]
  /** Why the agent could not be asked (exited, unreachable). */
  error?: string
}

/** Every VM any agent reports, once: the record with the highest location epoch wins. */
export function mergeVms(agents: AgentSnapshot[]): VmRecord[] {
  const byId = new Map<string, VmRecord>()
  for (const a of agents) {
    for (const vm of a.vms ?? []) {
      const seen = byId.get(vm.id)
      if (!seen || vm.epoch > seen.epoch || (vm.epoch === seen.epoch && vm.updatedAt > seen.updatedAt)) {
        byId.set(vm.id, vm)
      }
    }
  }
  return [...byId.values()].sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }))
}

/** `#2 12D3…abcdef` for a host that is one of the demo's agents, the short peer id otherwise. */
export function hostLabel(agents: AgentSnapshot[], peerId: string): string {
  const a = agents.find((x) => (x.node?.peerId ?? x.peerId) === peerId)
  return a ? `#${a.index} ${shortId(peerId)}` : shortId(peerId)
}

export function agentsTable(agents: AgentSnapshot[]): string {
  return table(
    ['AGENT', 'PEER', 'SITE', 'PEERS', 'VMS', 'MEMORY USED', 'STATUS'],
    agents.map((a) => [
      `#${a.index}`,
      shortId(a.node?.peerId ?? a.peerId),
      a.node?.site ?? a.site,
      a.peers === undefined ? '-' : String(a.peers),
      a.node ? String(a.node.vmCount) : '-',
      a.node ? `${formatMiB(a.node.used.memoryMiB)} / ${formatMiB(a.node.capacity.memoryMiB)}` : '-',
      a.error ?? 'up',
    ]),
    ['left', 'left', 'left', 'right', 'right', 'right', 'left'],
  )
}

export function vmsTable(agents: AgentSnapshot[], vms: VmRecord[]): string {
  if (vms.length === 0) return 'no VMs\n'
  return table(
    ['VM', 'HOST', 'STATE', 'MEMORY', 'DIRTY', 'EPOCH'],
    vms.map((v) => [
      v.name,
      hostLabel(agents, v.host),
      v.state,
      formatMiB(v.memoryMiB),
      formatRate(v.workload?.dirtyMiBps),
      String(v.epoch),
    ]),
    ['left', 'left', 'left', 'right', 'right', 'right'],
  )
}

export function hint(dataDir: string): string {
  return (
    `talk to the mesh meanwhile:  skymesh status --data-dir ${dataDir}\n` +
    `                             skymesh vm ls --data-dir ${dataDir}\n`
  )
}

/** The full-screen view (the caller clears the screen first). */
export function renderView(agents: AgentSnapshot[], elapsedMs: number, stopHint: string): string {
  const vms = mergeVms(agents)
  const up = agents.filter((a) => a.node).length
  return (
    `skymesh demo: ${up}/${agents.length} agents up, ${vms.length} VMs, ${formatDuration(elapsedMs)}  (${stopHint})\n\n` +
    `${agentsTable(agents)}\n${vmsTable(agents, vms)}\n${hint(agents[0]?.dataDir ?? '?')}`
  )
}

/** One line per tick when stdout is not a terminal. */
export function renderLine(agents: AgentSnapshot[], elapsedMs: number): string {
  const vms = mergeVms(agents)
  const up = agents.filter((a) => a.node)
  const used = up.reduce((s, a) => s + (a.node?.used.memoryMiB ?? 0), 0)
  const cap = up.reduce((s, a) => s + (a.node?.capacity.memoryMiB ?? 0), 0)
  const running = vms.filter((v) => v.state === 'running').length
  const peers = agents.map((a) => (a.peers === undefined ? '-' : String(a.peers))).join('/')
  return (
    `[${formatDuration(elapsedMs)}] agents ${up.length}/${agents.length} up, peers ${peers}, ` +
    `vms ${vms.length} (${running} running), memory ${formatMiB(used)} / ${formatMiB(cap)}\n`
  )
}
