// The parent's handle on a migration destination in a child process (bench/lib/dest-peer.ts): two
// processes, as two hosts have, so the source's and the destination's event loops, TLS and hashing do
// not take turns on one thread (which the in-process pair of bench/lib/mesh.ts makes them do).
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { LogRecord } from './mesh.js'

export interface DestProcess {
  peerId: PeerId
  /** The child's process id (for its CPU time in /proc). */
  pid: number
  addrs: Multiaddr[]
  /** The child's forwarded records: each migration's end record and every warning. */
  logs: LogRecord[]
  /** Waits (up to `ms`) for the destination's end record of `migrationId`. */
  finished(migrationId: string, ms?: number): Promise<LogRecord | undefined>
  /** Destroys the VM `id` there, if it is there. */
  drop(id: string): Promise<void>
  stop(): Promise<void>
}

export async function startDestProcess(pingAbort = true, retainMiB = 0): Promise<DestProcess> {
  const file = fileURLToPath(new URL('./dest-peer.js', import.meta.url))
  // BENCH_DEST_NODE_ARGS: node options for the child only, e.g. '--cpu-prof --cpu-prof-dir=/tmp/p' or
  // '--trace-gc' (options given to the parent's node are passed on too, as fork does by default)
  const extra = (process.env.BENCH_DEST_NODE_ARGS ?? '').split(' ').filter((a) => a !== '')
  const child = fork(file, [pingAbort ? 'ping-abort' : 'no-ping-abort', String(retainMiB)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv: [...process.execArgv, ...extra],
  })
  const kill = () => {
    if (child.exitCode === null && child.pid) child.kill('SIGTERM')
  }
  process.once('exit', kill)
  const logs: LogRecord[] = []
  const waiters = new Set<() => void>()
  const wake = () => {
    for (const w of [...waiters]) w()
  }
  const dropped = new Set<string>()
  const ready = await new Promise<{ peerId: string; addrs: string[] }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the destination process did not start in 30 s')), 30_000)
    child.on(
      'message',
      (m: { ready?: boolean; peerId: string; addrs: string[]; log?: LogRecord; dropped?: string }) => {
        if (m.ready) {
          clearTimeout(timer)
          resolve(m)
        }
        if (m.log) logs.push(m.log)
        if (m.dropped !== undefined) dropped.add(m.dropped)
        wake()
      },
    )
    child.once('exit', (code) => reject(new Error(`the destination process exited (${code})`)))
  })
  const until = async (ok: () => boolean, ms: number) => {
    const end = performance.now() + ms
    while (!ok() && performance.now() < end) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.max(1, end - performance.now()))
        function done() {
          clearTimeout(t)
          waiters.delete(done)
          resolve()
        }
        waiters.add(done)
      })
    }
  }
  const endRecord = (id: string) =>
    logs.find((l) => l.msg === 'incoming migration finished' && l.migration === id)
  return {
    peerId: peerIdFromString(ready.peerId),
    pid: child.pid ?? 0,
    addrs: ready.addrs.map((a) => multiaddr(a)),
    logs,
    async finished(id, ms = 5000) {
      await until(() => endRecord(id) !== undefined, ms)
      return endRecord(id)
    },
    async drop(id) {
      dropped.delete(id)
      child.send({ drop: id })
      await until(() => dropped.has(id), 30_000)
    },
    async stop() {
      const exited = new Promise((r) => child.once('exit', r))
      if (child.connected) child.disconnect()
      await Promise.race([exited, new Promise((r) => setTimeout(r, 8000))])
      kill()
      process.off('exit', kill)
    },
  }
}
