// The QMP client against a fake QEMU on a unix socket: greeting + qmp_capabilities, commands
// matched by id (answers out of order), errors, events, timeouts, and QEMU going away.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type Server, type Socket } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { QmpClient, QmpError } from '../../src/vm/qemu/qmp.js'

type Handler = (
  msg: { execute: string; arguments?: Record<string, unknown>; id?: string },
  sock: Socket,
) => void

function fakeQemu(path: string, handler: Handler): Promise<Server> {
  return new Promise((resolve) => {
    const srv = createServer((sock) => {
      sock.write(`${JSON.stringify({ QMP: { version: { qemu: { major: 7 } }, capabilities: [] } })}\n`)
      let buf = ''
      sock.on('data', (d) => {
        buf += d.toString()
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const msg = JSON.parse(buf.slice(0, nl))
          buf = buf.slice(nl + 1)
          if (msg.execute === 'qmp_capabilities')
            sock.write(`${JSON.stringify({ return: {}, id: msg.id })}\n`)
          else handler(msg, sock)
        }
      })
    })
    srv.listen(path, () => resolve(srv))
  })
}

describe('QMP client', () => {
  const dir = mkdtempSync('/tmp/skq-qmp-')
  const path = join(dir, 'qmp.sock')
  let srv: Server
  let held: Array<{ id?: string; sock: Socket }> = []

  before(async () => {
    srv = await fakeQemu(path, (msg, sock) => {
      const reply = (o: object) => sock.write(`${JSON.stringify({ ...o, id: msg.id })}\n`)
      switch (msg.execute) {
        case 'query-status':
          sock.write(`${JSON.stringify({ event: 'RESUME', timestamp: { seconds: 1, microseconds: 0 } })}\n`)
          reply({ return: { status: 'running', running: true } })
          break
        case 'hold':
          held.push({ id: msg.id, sock })
          break
        case 'release':
          // answers the held command after this one: replies arrive out of order
          reply({ return: 'second' })
          for (const h of held) h.sock.write(`${JSON.stringify({ return: 'first', id: h.id })}\n`)
          held = []
          break
        case 'bye':
          sock.destroy()
          break
        default:
          reply({
            error: { class: 'CommandNotFound', desc: `The command ${msg.execute} has not been found` },
          })
      }
    })
  })

  after(() => {
    srv.close()
    rmSync(dir, { recursive: true, force: true })
  })

  it('greets, enters command mode, runs commands and delivers events', async () => {
    const qmp = await QmpClient.connect(path)
    assert.ok(qmp.greeting)
    const events: string[] = []
    qmp.on('event', (e) => events.push(e.event))
    const st = await qmp.execute<{ status: string }>('query-status')
    assert.equal(st.status, 'running')
    assert.deepEqual(events, ['RESUME'])
    qmp.close()
  })

  it('matches answers to commands by id even out of order', async () => {
    const qmp = await QmpClient.connect(path)
    const first = qmp.execute('hold')
    const second = qmp.execute('release')
    assert.deepEqual(await Promise.all([first, second]), ['first', 'second'])
    qmp.close()
  })

  it('turns QMP errors into QmpError with the class and command', async () => {
    const qmp = await QmpClient.connect(path)
    await assert.rejects(qmp.execute('nonsense'), (e: unknown) => {
      assert.ok(e instanceof QmpError)
      assert.equal(e.errorClass, 'CommandNotFound')
      assert.match(e.message, /QMP nonsense: The command nonsense has not been found/)
      return true
    })
    qmp.close()
  })

  it('times out a command that gets no answer, and waitEvent too', async () => {
    const qmp = await QmpClient.connect(path)
    await assert.rejects(qmp.execute('hold', undefined, 100), /no answer within 100 ms/)
    await assert.rejects(qmp.waitEvent('STOP', 100), /no STOP event within 100 ms/)
    held = []
    qmp.close()
  })

  it('fails pending and later commands cleanly when QEMU goes away', async () => {
    const qmp = await QmpClient.connect(path)
    const closed = new Promise((r) => qmp.once('close', r))
    const pending = qmp.execute('hold')
    await assert.rejects(qmp.execute('bye'), /connection closed/)
    await assert.rejects(pending, /connection closed/)
    await closed
    assert.equal(qmp.isClosed, true)
    await assert.rejects(qmp.execute('query-status'), /connection closed/)
    held = []
  })

  it('gives a clear error when nothing listens', async () => {
    await assert.rejects(
      QmpClient.connect(join(dir, 'absent.sock'), { connectTimeoutMs: 200 }),
      /cannot connect to .*absent\.sock/,
    )
  })
})
