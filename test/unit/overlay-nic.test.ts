// Two switches wired back to back (the transport replaced by a direct call) with synthetic NICs:
// ARP through the proxy, ICMP echo across "hosts", a paused VM misses frames.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { VirtualSwitch } from '../../src/overlay/switch.js'
import { SyntheticNic } from '../../src/overlay/synthetic-nic.js'

function pair() {
  const switches = new Map<string, VirtualSwitch>()
  const mk = (self: string) =>
    new VirtualSwitch({
      send: (host, network, frame, relayed) => {
        const target = switches.get(host)
        if (!target) return false
        queueMicrotask(() => target.fromPeer(self, network, frame, relayed))
        return true
      },
    })
  const h1 = mk('h1')
  const h2 = mk('h2')
  switches.set('h1', h1).set('h2', h2)
  for (const s of [h1, h2]) s.addNetwork('net')
  let running = true
  const a = new SyntheticNic({
    mac: '02:00:00:00:00:01',
    ip: '10.9.0.2',
    transmit: (f) => h1.fromPort('a', 'net', f),
  })
  const b = new SyntheticNic({
    mac: '02:00:00:00:00:02',
    ip: '10.9.0.3',
    transmit: (f) => h2.fromPort('b', 'net', f),
    running: () => running,
  })
  h1.attach({ vmId: 'a', network: 'net', mac: a.mac, ip: a.ip, deliver: (f) => a.receive(f) })
  h2.attach({ vmId: 'b', network: 'net', mac: b.mac, ip: b.ip, deliver: (f) => b.receive(f) })
  h1.setRemote([{ vmId: 'b', network: 'net', mac: b.mac, ip: b.ip, host: 'h2' }])
  h2.setRemote([{ vmId: 'a', network: 'net', mac: a.mac, ip: a.ip, host: 'h1' }])
  return { h1, h2, a, b, pause: (p: boolean) => (running = !p) }
}

describe('overlay synthetic NIC', () => {
  it('pings a VM on another host: ARP answered by the local proxy, echo answered by the NIC', async () => {
    const { h1, h2, a, b } = pair()
    const r = await a.ping(b.ip)
    assert.equal(r.ip, b.ip)
    assert.ok(r.rttMs >= 0)
    assert.equal(a.arpCache.get(b.ip), b.mac)
    assert.equal(h1.stats.arpProxied, 1)
    assert.equal(b.stats.arpAnswered, 0, 'the ARP request never reached b')
    assert.equal(b.stats.echoAnswered, 1)
    assert.equal(a.stats.echoReplies, 1)
    assert.equal(h2.stats.forwarded['from-peer'].frames, 1)
    await a.ping(b.ip)
    assert.equal(h1.stats.arpProxied, 1, 'cached')
  })

  it('a paused VM misses frames and the ping times out', async () => {
    const { a, b, pause } = pair()
    pause(true)
    await assert.rejects(a.ping(b.ip, { timeoutMs: 100 }), /no reply/)
    assert.equal(b.stats.missed, 1)
    pause(false)
    await a.ping(b.ip)
  })

  it('ARP for an address nobody has times out', async () => {
    const { a } = pair()
    await assert.rejects(a.resolve('10.9.0.99', 50), /no answer/)
  })
})
