// A small QMP client: QEMU's JSON machine protocol over a unix socket. One JSON object per line;
// QEMU greets with {"QMP": ...}, we answer with qmp_capabilities; every command carries an id
// and gets a {return}/{error} with the same id; asynchronous {event} messages come in between.

import { EventEmitter } from 'node:events'
import { createConnection, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

export interface QmpEvent {
  event: string
  data?: Record<string, unknown>
  timestamp?: { seconds: number; microseconds: number }
}

/** A command QEMU answered with {"error": {class, desc}}, or a transport failure (class 'Transport'). */
export class QmpError extends Error {
  constructor(
    readonly errorClass: string,
    message: string,
    readonly command?: string,
  ) {
    super(command ? `QMP ${command}: ${message}` : `QMP: ${message}`)
    this.name = 'QmpError'
  }
}

interface Pending {
  command: string
  resolve: (value: unknown) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

export interface QmpConnectOptions {
  /** How long to keep retrying while the socket does not exist yet or refuses (QEMU starting). */
  connectTimeoutMs?: number
  /** Default timeout of each command. */
  commandTimeoutMs?: number
}

/**
 * Events: 'event' (QmpEvent), and `close` (Error | undefined) once, when the socket closes
 * (QEMU exited or `close()` was called).
 */
export class QmpClient extends EventEmitter {
  private buf = ''
  private nextId = 1
  private readonly pending = new Map<string, Pending>()
  private closed = false
  greeting: Record<string, unknown> | undefined

  private constructor(
    private readonly socket: Socket,
    private readonly commandTimeoutMs: number,
  ) {
    super()
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => this.onData(chunk))
    socket.on('error', (err) => this.shutdown(err))
    socket.on('close', () => this.shutdown(undefined))
  }

  /** Connects, reads the greeting and enters command mode. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const deadline = Date.now() + (opts.connectTimeoutMs ?? 10_000)
    let socket: Socket
    for (;;) {
      try {
        socket = await openSocket(path)
        break
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) {
          throw new QmpError('Transport', `cannot connect to ${path}: ${(err as Error).message}`)
        }
        await sleep(50)
      }
    }
    const client = new QmpClient(socket, opts.commandTimeoutMs ?? 30_000)
    client.greeting = await client.waitGreeting(Math.max(1000, deadline - Date.now()))
    await client.execute('qmp_capabilities')
    return client
  }

  get isClosed(): boolean {
    return this.closed
  }

  /** Runs a command; resolves with its `return` value, rejects with QmpError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    if (this.closed) return Promise.reject(new QmpError('Transport', 'connection closed', command))
    const id = String(this.nextId++)
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new QmpError('Timeout', `no answer within ${timeoutMs ?? this.commandTimeoutMs} ms`, command))
      }, timeoutMs ?? this.commandTimeoutMs)
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer })
      const msg = args ? { execute: command, arguments: args, id } : { execute: command, id }
      this.socket.write(`${JSON.stringify(msg)}\n`)
    })
  }

  /** Resolves with the next event named `name` (matching `filter` if given), or rejects on timeout/close. */
  waitEvent(name: string, timeoutMs: number, filter?: (e: QmpEvent) => boolean): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const done = (fn: () => void) => {
        clearTimeout(timer)
        this.off('event', onEvent)
        this.off('close', onClose)
        fn()
      }
      const onEvent = (e: QmpEvent) => {
        if (e.event === name && (!filter || filter(e))) done(() => resolve(e))
      }
      const onClose = () => done(() => reject(new QmpError('Transport', `closed while waiting for ${name}`)))
      const timer = setTimeout(
        () => done(() => reject(new QmpError('Timeout', `no ${name} event within ${timeoutMs} ms`))),
        timeoutMs,
      )
      this.on('event', onEvent)
      this.once('close', onClose)
    })
  }

  close(): void {
    this.socket.destroy()
    this.shutdown(undefined)
  }

  private waitGreeting(timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('greeting', onGreeting)
        this.close()
        reject(new QmpError('Timeout', `no QMP greeting within ${timeoutMs} ms`))
      }, timeoutMs)
      const onGreeting = (g: Record<string, unknown>) => {
        clearTimeout(timer)
        resolve(g)
      }
      this.once('greeting', onGreeting)
      this.once('close', () => {
        clearTimeout(timer)
        reject(new QmpError('Transport', 'closed before the QMP greeting'))
      })
    })
  }

  private onData(chunk: string): void {
    this.buf += chunk
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl).trim()
      this.buf = this.buf.slice(nl + 1)
      if (line) this.onMessage(line)
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>
    try {
      msg = JSON.parse(line) as Record<string, unknown>
    } catch {
      this.emit('protocol-error', new QmpError('Protocol', `not JSON: ${line.slice(0, 200)}`))
      return
    }
    if ('QMP' in msg) {
      this.emit('greeting', msg.QMP as Record<string, unknown>)
    } else if ('event' in msg) {
      this.emit('event', msg as unknown as QmpEvent)
    } else if ('id' in msg) {
      const p = this.pending.get(String(msg.id))
      if (!p) return
      this.pending.delete(String(msg.id))
      clearTimeout(p.timer)
      if ('error' in msg) {
        const e = msg.error as { class?: string; desc?: string }
        p.reject(new QmpError(e.class ?? 'GenericError', e.desc ?? 'unknown error', p.command))
      } else {
        p.resolve(msg.return)
      }
    }
  }

  private shutdown(err: Error | undefined): void {
    if (this.closed) return
    this.closed = true
    for (const p of this.pending.values()) {
      clearTimeout(p.timer)
      p.reject(new QmpError('Transport', `connection closed${err ? `: ${err.message}` : ''}`, p.command))
    }
    this.pending.clear()
    this.emit('close', err)
  }
}

function openSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path)
    s.once('connect', () => {
      s.off('error', reject)
      resolve(s)
    })
    s.once('error', reject)
  })
}
