// A NIC attached as a real TAP device (socat as the helper): moved into a network namespace this test
// creates, the kernel's stack there talks to a synthetic NIC through the port (ARP and ping both ways);
// the helper is supervised (killed: port down, frames dropped and counted, restarted); close removes
// the device. Needs root, /dev/net/tun, socat and ip (.ci/run installs them); says why it skips.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { SyntheticNic } from '../../src/overlay/synthetic-nic.js'
import { type TapEvent, TapPort, tapSupport } from '../../src/overlay/tap-port.js'

const run = promisify(execFile)
const support = tapSupport()
const ns = `smtap${process.pid}`
const ifname = `smt${process.pid}`.slice(0, 15)
const TAP_MAC = '02:77:00:00:00:02'
const NIC = { mac: '02:77:00:00:00:09', ip: '10.77.0.9' }

async function until(what: string, pred: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

const linkShow = (where: string[] = []) =>
  run('ip', [...where, 'link', 'show', 'dev', ifname]).then(
    (r) => r.stdout,
    () => '',
  )

describe('TAP attachment', { skip: support.ok ? false : support.reason }, () => {
  let tap: TapPort
  let nic: SyntheticNic
  const events: TapEvent[] = []
  let drops = 0

  before(async () => {
    await run('ip', ['netns', 'add', ns])
    tap = new TapPort({
      ifname,
      mac: TAP_MAC,
      mtu: 1400,
      transmit: (f) => nic.receive(f),
      onEvent: (e) => events.push(e),
      onDrop: () => drops++,
    })
    nic = new SyntheticNic({ ...NIC, transmit: (f) => tap.deliver(f) })
  })

  after(async () => {
    tap?.close()
    await run('ip', ['netns', 'del', ns]).catch(() => {})
  })

  it('makes the device with the NIC’s MAC and the network’s MTU', async () => {
    await tap.start()
    assert.ok(tap.up, tap.lastError)
    assert.equal(events[0]?.type, 'up')
    const shown = await linkShow()
    assert.match(shown, new RegExp(`link/ether ${TAP_MAC}`))
    assert.match(shown, /mtu 1400/)
  })

  it('in a network namespace it is a host on the LAN: ARP and ping both ways', async () => {
    await run('ip', ['link', 'set', 'dev', ifname, 'netns', ns])
    await run('ip', ['-n', ns, 'addr', 'add', '10.77.0.2/24', 'dev', ifname])
    await run('ip', ['-n', ns, 'link', 'set', 'dev', ifname, 'up'])
    const ping = await run('ip', ['netns', 'exec', ns, 'busybox', 'ping', '-c', '3', '-W', '3', NIC.ip])
    assert.match(ping.stdout, /3 packets received/)
    assert.ok(nic.stats.echoAnswered >= 3)
    assert.ok(nic.stats.arpAnswered >= 1, 'the kernel asked ARP for the NIC')
    const back = await nic.ping('10.77.0.2', { timeoutMs: 3000 })
    assert.ok(back.rttMs >= 0)
    assert.ok(tap.stats.rxFrames >= 4 && tap.stats.txFrames >= 4)
    assert.equal(tap.stats.foreign, 0)
  })

  it('is supervised: the helper killed, the port is down and drops (counted), then a fresh device', async () => {
    const pid = tap.pid
    assert.ok(pid)
    process.kill(pid, 'SIGKILL')
    await until('the port to go down', () => !tap.up)
    tap.deliver(new Uint8Array(60))
    assert.equal(tap.stats.txDropped, 1)
    assert.equal(drops, 1)
    await until('the helper to come back', () => tap.up)
    const down = events.find((e) => e.type === 'down')
    assert.match(down?.type === 'down' ? down.reason : '', /socat exited \(SIGKILL\)/)
    assert.equal(tap.stats.exits, 1)
    assert.equal(tap.stats.starts, 2)
    assert.notEqual(tap.pid, pid)
    // the old device went with the old helper; the new one is in the host namespace, configured again
    assert.equal(await linkShow(['-n', ns]), '')
    assert.match(await linkShow(), new RegExp(`link/ether ${TAP_MAC}`))
  })

  it('close stops the helper and the device disappears', async () => {
    tap.close()
    assert.equal(tap.up, false)
    await until('the device to go', async () => (await linkShow()) === '')
    assert.equal(tap.stats.exits, 1, 'a close is not an exit to restart from')
  })

  it('refuses an interface name the kernel would refuse', () => {
    assert.throws(
      () => new TapPort({ ifname: 'this-name-is-far-too-long', mac: TAP_MAC, mtu: 1500, transmit: () => {} }),
      /not an interface name/,
    )
  })
})

describe('TAP support check', () => {
  it('names what is missing when TAP attachment is not possible', () => {
    if (support.ok) assert.equal(support.reason, undefined)
    else assert.match(support.reason ?? '', /^TAP attachment is not possible on this host: it needs /)
  })
})
