// The virtual switch with synthetic frames: forwarding from the location-fed MAC table, broadcast
// scoping, ARP proxy, isolation, anti-spoofing, MTU, malformed frames, migration detours.
import assert from 'node:assert/strict'
import { beforeEach, describe, it } from 'node:test'
import {
  ARP_REPLY,
  arpRequestFrame,
  buildArp,
  buildEthernet,
  ETHERTYPE_ARP,
  ETHERTYPE_RARP,
  gratuitousArpFrame,
  parseArp,
  parseEthernet,
} from '../../src/overlay/frame.js'
import { type RemoteNic, VirtualSwitch } from '../../src/overlay/switch.js'

const A = { vmId: 'vm-a', network: 'red', mac: '02:00:00:00:00:0a', ip: '10.0.0.10' }
const B = { vmId: 'vm-b', network: 'red', mac: '02:00:00:00:00:0b', ip: '10.0.0.11' }
const C: RemoteNic = {
  vmId: 'vm-c',
  network: 'red',
  mac: '02:00:00:00:00:0c',
  ip: '10.0.0.12',
  host: 'host-2',
}
const D: RemoteNic = {
  vmId: 'vm-d',
  network: 'red',
  mac: '02:00:00:00:00:0d',
  ip: '10.0.0.13',
  host: 'host-3',
}
const G: RemoteNic = {
  vmId: 'vm-g',
  network: 'green',
  mac: '02:00:00:00:00:99',
  ip: '10.0.0.12',
  host: 'host-4',
}
const X = { vmId: 'vm-x', network: 'green', mac: '02:00:00:00:00:98', ip: '10.0.0.20' }

interface Sent {
  host: string
  network: string
  frame: Uint8Array
  relayed: boolean
}

let sw: VirtualSwitch
let sent: Sent[]
let inbox: Record<string, Uint8Array[]>
let now: number
let reachable: boolean

const payload = (n = 46) => new Uint8Array(n).fill(7)
const frame = (dst: string, src: string, n = 46) => buildEthernet(dst, src, 0x0800, payload(n))

beforeEach(() => {
  sent = []
  now = 1000
  reachable = true
  inbox = { [A.vmId]: [], [B.vmId]: [], [X.vmId]: [] }
  sw = new VirtualSwitch({
    send: (host, network, f, relayed) => {
      if (reachable) sent.push({ host, network, frame: f, relayed })
      return reachable
    },
    now: () => now,
  })
  sw.addNetwork('red', { mtu: 1500 })
  sw.addNetwork('green', { mtu: 1500 })
  for (const p of [A, B, X]) sw.attach({ ...p, deliver: (f) => inbox[p.vmId]?.push(f) })
  sw.setRemote([C, D, G])
})

describe('overlay switch: forwarding', () => {
  it('delivers unicast to a local port', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', frame(B.mac, A.mac)), 'delivered')
    assert.equal(inbox[B.vmId]?.length, 1)
    assert.equal(sent.length, 0)
    assert.equal(sw.stats.forwarded.local.frames, 1)
  })

  it('sends unicast for a remote VM to the one host the location table names', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', frame(C.mac, A.mac)), 'sent')
    assert.deepEqual(
      sent.map((s) => [s.host, s.network, s.relayed]),
      [['host-2', 'red', false]],
    )
    assert.equal(inbox[B.vmId]?.length, 0, 'no flooding')
    assert.equal(sw.stats.forwarded['to-peer'].bytes, 60)
  })

  it('follows the location table when a VM moves (no learning from traffic)', () => {
    sw.setRemote([{ ...C, host: 'host-3' }, D, G])
    sw.fromPort(A.vmId, 'red', frame(C.mac, A.mac))
    assert.equal(sent[0]?.host, 'host-3')
  })

  it('drops unknown unicast instead of flooding it', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', frame('02:00:00:00:00:77', A.mac)), 'unknown-dst')
    assert.equal(sent.length + (inbox[B.vmId]?.length ?? 0), 0)
    assert.equal(sw.stats.dropped['unknown-dst'], 1)
  })

  it('counts a frame the transport cannot take as unreachable', () => {
    reachable = false
    assert.equal(sw.fromPort(A.vmId, 'red', frame(C.mac, A.mac)), 'unreachable')
    assert.equal(sw.stats.dropped.unreachable, 1)
  })

  it('delivers a frame from a peer to the local port', () => {
    assert.equal(sw.fromPeer('host-2', 'red', frame(A.mac, C.mac)), 'delivered')
    assert.equal(inbox[A.vmId]?.length, 1)
    assert.equal(sw.stats.forwarded['from-peer'].frames, 1)
  })
})

describe('overlay switch: broadcast scoping', () => {
  it('sends a broadcast once to each host with members of the network, and to local members', () => {
    sw.setRemote([C, D, { ...D, vmId: 'vm-e', mac: '02:00:00:00:00:0e', ip: '10.0.0.14' }, G])
    assert.equal(sw.fromPort(A.vmId, 'red', frame('ff:ff:ff:ff:ff:ff', A.mac)), 'flooded')
    assert.deepEqual(
      sent.map((s) => s.host).sort(),
      ['host-2', 'host-3'],
      'not host-4 (green only), host-3 once',
    )
    assert.equal(inbox[B.vmId]?.length, 1)
    assert.equal(inbox[A.vmId]?.length, 0, 'not back to the sender')
    assert.equal(inbox[X.vmId]?.length, 0, 'not to another network')
  })

  it('multicast is scoped like broadcast', () => {
    sw.fromPort(A.vmId, 'red', frame('01:00:5e:00:00:fb', A.mac))
    assert.deepEqual(sent.map((s) => s.host).sort(), ['host-2', 'host-3'])
  })

  it('a broadcast from a peer reaches local members only, never other peers (split horizon)', () => {
    assert.equal(sw.fromPeer('host-2', 'red', frame('ff:ff:ff:ff:ff:ff', C.mac)), 'flooded')
    assert.equal(inbox[A.vmId]?.length, 1)
    assert.equal(inbox[B.vmId]?.length, 1)
    assert.equal(inbox[X.vmId]?.length, 0)
    assert.equal(sent.length, 0)
  })
})

describe('overlay switch: ARP proxy', () => {
  const arpReplyTo = (f: Uint8Array | undefined) => {
    const eth = parseEthernet(f ?? new Uint8Array())
    assert.equal(eth?.ethertype, ETHERTYPE_ARP)
    return parseArp(eth?.payload ?? new Uint8Array())
  }

  it('answers an ARP request for a remote VM locally; nothing crosses hosts', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', arpRequestFrame(A, C.ip)), 'arp-proxied')
    assert.equal(sent.length, 0)
    assert.equal(inbox[B.vmId]?.length, 0, 'not flooded locally either')
    const reply = arpReplyTo(inbox[A.vmId]?.[0])
    assert.equal(reply?.op, ARP_REPLY)
    assert.equal(reply?.senderIp, C.ip)
    assert.equal(reply?.senderMac, C.mac)
    assert.equal(reply?.targetMac, A.mac)
    assert.equal(sw.stats.arpProxied, 1)
  })

  it('answers for local VMs too', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', arpRequestFrame(A, B.ip)), 'arp-proxied')
    assert.equal(arpReplyTo(inbox[A.vmId]?.[0])?.senderMac, B.mac)
  })

  it('answers within the asker’s network only (same IP in another network)', () => {
    // 10.0.0.12 is C in red and G in green
    sw.fromPort(X.vmId, 'green', arpRequestFrame(X, '10.0.0.12'))
    assert.equal(arpReplyTo(inbox[X.vmId]?.[0])?.senderMac, G.mac)
  })

  it('an unknown address is asked on this host only', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', arpRequestFrame(A, '10.0.0.200')), 'flooded')
    assert.equal(inbox[B.vmId]?.length, 1)
    assert.equal(sent.length, 0)
  })

  it('a VM’s own gratuitous ARP stays on this host', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', gratuitousArpFrame(A.mac, A.ip)), 'flooded')
    assert.equal(sent.length, 0)
  })

  it('announce() sends a gratuitous ARP and a RARP to local members and every host of the network', () => {
    assert.ok(sw.announce(A.vmId, 'red'))
    assert.deepEqual(sent.map((s) => s.host).sort(), ['host-2', 'host-2', 'host-3', 'host-3'])
    const a = arpReplyTo(sent[0]?.frame)
    assert.equal(a?.senderIp, A.ip)
    assert.equal(a?.targetIp, A.ip)
    const rarp = parseEthernet(sent.at(-1)?.frame ?? new Uint8Array())
    assert.equal(rarp?.ethertype, ETHERTYPE_RARP)
    assert.equal(rarp?.src, A.mac)
    assert.equal(rarp?.dst, 'ff:ff:ff:ff:ff:ff')
    assert.equal(((rarp?.payload[6] ?? 0) << 8) | (rarp?.payload[7] ?? 0), 3, 'op: request reverse')
    assert.equal(inbox[B.vmId]?.length, 2)
    assert.equal(sw.stats.announced, 1)
    assert.equal(sw.announce('vm-nope', 'red'), false)
  })
})

describe('overlay switch: isolation', () => {
  it('a VM cannot reach a MAC of another network, local or remote', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', frame(X.mac, A.mac)), 'isolation')
    assert.equal(sw.fromPort(A.vmId, 'red', frame(G.mac, A.mac)), 'isolation')
    assert.equal(inbox[X.vmId]?.length, 0)
    assert.equal(sent.length, 0)
    assert.equal(sw.stats.dropped.isolation, 2)
  })

  it('a peer cannot push a frame into a network its VM is not on', () => {
    assert.equal(sw.fromPeer('host-4', 'red', frame(A.mac, G.mac)), 'isolation')
    assert.equal(sw.fromPeer('host-4', 'green', frame(A.mac, G.mac)), 'isolation')
    assert.equal(inbox[A.vmId]?.length, 0)
  })

  it('frames for a network this host does not have are dropped', () => {
    assert.equal(sw.fromPeer('host-2', 'blue', frame(A.mac, C.mac)), 'unknown-network')
  })
})

describe('overlay switch: anti-spoofing', () => {
  it('a VM cannot send with another source MAC', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', frame(C.mac, B.mac)), 'spoofed')
    assert.equal(sw.fromPort(A.vmId, 'red', frame(C.mac, '02:00:00:00:00:55')), 'spoofed')
    assert.equal(sent.length, 0)
    assert.equal(sw.stats.dropped.spoofed, 2)
  })

  it('a VM cannot claim another IP or MAC inside ARP', () => {
    const lie = buildArp({
      op: ARP_REPLY,
      senderMac: A.mac,
      senderIp: C.ip,
      targetMac: B.mac,
      targetIp: B.ip,
    })
    assert.equal(sw.fromPort(A.vmId, 'red', buildEthernet(B.mac, A.mac, ETHERTYPE_ARP, lie)), 'spoofed')
    const lie2 = buildArp({
      op: ARP_REPLY,
      senderMac: C.mac,
      senderIp: A.ip,
      targetMac: B.mac,
      targetIp: B.ip,
    })
    assert.equal(sw.fromPort(A.vmId, 'red', buildEthernet(B.mac, A.mac, ETHERTYPE_ARP, lie2)), 'spoofed')
    assert.equal(inbox[B.vmId]?.length, 0)
  })

  it('a peer may only send from MACs the location table places on it', () => {
    assert.equal(sw.fromPeer('host-3', 'red', frame(A.mac, C.mac)), 'peer-spoofed', 'C is on host-2')
    assert.equal(sw.fromPeer('host-2', 'red', frame(A.mac, B.mac)), 'peer-spoofed', 'B is local')
    assert.equal(sw.fromPeer('host-9', 'red', frame(A.mac, '02:00:00:00:00:55')), 'peer-spoofed')
    assert.equal(inbox[A.vmId]?.length, 0)
  })

  it('an unplugged port sends nothing', () => {
    sw.detach(B.vmId, 'red')
    assert.equal(sw.fromPort(B.vmId, 'red', frame(A.mac, B.mac)), 'no-port')
    assert.equal(sw.fromPort(A.vmId, 'red', frame(B.mac, A.mac)), 'unknown-dst')
  })

  it('two VMs cannot plug the same MAC', () => {
    assert.throws(() => sw.attach({ ...B, vmId: 'vm-z', deliver: () => {} }), /already plugged/)
  })
})

describe('overlay switch: MTU and malformed frames', () => {
  it('drops and counts frames above the MTU, from ports and peers', () => {
    sw.addNetwork('small', { mtu: 100 })
    sw.attach({ vmId: 'vm-s', network: 'small', mac: '02:00:00:00:01:01', ip: '10.1.0.2', deliver: () => {} })
    sw.setRemote([
      C,
      D,
      G,
      { vmId: 'vm-t', network: 'small', mac: '02:00:00:00:01:02', ip: '10.1.0.3', host: 'host-2' },
    ])
    assert.equal(sw.fromPort('vm-s', 'small', frame('02:00:00:00:01:02', '02:00:00:00:01:01', 100)), 'sent')
    assert.equal(sw.fromPort('vm-s', 'small', frame('02:00:00:00:01:02', '02:00:00:00:01:01', 101)), 'mtu')
    assert.equal(sw.fromPeer('host-2', 'small', frame('02:00:00:00:01:01', '02:00:00:00:01:02', 101)), 'mtu')
    assert.equal(sw.fromPort(A.vmId, 'red', frame(C.mac, A.mac, 1501)), 'mtu')
    assert.equal(sw.stats.dropped.mtu, 3)
  })

  it('drops and counts malformed frames and ARP', () => {
    assert.equal(sw.fromPort(A.vmId, 'red', new Uint8Array(10)), 'malformed')
    assert.equal(sw.fromPeer('host-2', 'red', new Uint8Array(3)), 'malformed')
    const shortArp = buildEthernet('ff:ff:ff:ff:ff:ff', A.mac, ETHERTYPE_ARP, new Uint8Array(12))
    assert.equal(sw.fromPort(A.vmId, 'red', shortArp), 'malformed')
    assert.equal(sw.stats.dropped.malformed, 3)
    assert.equal(sent.length, 0)
  })
})

describe('overlay switch: migration detours', () => {
  it('the source forwards frames still arriving for a VM that left, for the grace period only', () => {
    // B left this host for host-3; the peers' tables still say it is here.
    sw.detach(B.vmId, 'red')
    sw.forwardMoved('red', B.mac, 'host-3', now + 500)
    assert.equal(sw.fromPeer('host-2', 'red', frame(B.mac, C.mac)), 'relayed')
    assert.deepEqual(
      sent.map((s) => [s.host, s.relayed]),
      [['host-3', true]],
    )
    assert.equal(sw.fromPort(A.vmId, 'red', frame(B.mac, A.mac)), 'sent', 'a local sender follows too')
    assert.equal(sent[1]?.host, 'host-3')
    now += 501
    assert.equal(sw.fromPeer('host-2', 'red', frame(B.mac, C.mac)), 'unknown-dst')
  })

  it('a relayed frame is never relayed again (no loops)', () => {
    sw.detach(B.vmId, 'red')
    sw.forwardMoved('red', B.mac, 'host-3', now + 500)
    sw.acceptRelayed('red', B.mac, 'host-3', now + 500)
    assert.equal(sw.fromPeer('host-3', 'red', frame(B.mac, C.mac), true), 'unknown-dst')
    assert.equal(sent.length, 0)
  })

  it('the destination accepts relayed frames only from the VM’s previous host, while expected', () => {
    // A arrived from host-3; C (on host-2) still sends to host-3, which relays.
    assert.equal(sw.fromPeer('host-3', 'red', frame(A.mac, C.mac), true), 'peer-spoofed', 'not expected yet')
    sw.acceptRelayed('red', A.mac, 'host-3', now + 500)
    assert.equal(
      sw.fromPeer('host-2', 'red', frame(A.mac, C.mac), true),
      'peer-spoofed',
      'not the previous host',
    )
    assert.equal(sw.fromPeer('host-3', 'red', frame(A.mac, C.mac), true), 'delivered')
    assert.equal(
      sw.fromPeer('host-3', 'red', frame(A.mac, '02:00:00:00:00:55'), true),
      'peer-spoofed',
      'unknown source',
    )
    now += 501
    assert.equal(sw.fromPeer('host-3', 'red', frame(A.mac, C.mac), true), 'peer-spoofed', 'expired')
  })
})
