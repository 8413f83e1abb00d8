// The metadata service (169.254.169.254) with synthetic frames through the virtual switch: ARP, the
// TCP handshake, a request and its answer, the close, retransmission, and bad input. The asking VM is
// known by its port, whatever its packets claim.
import assert from 'node:assert/strict'
import { beforeEach, describe, it } from 'node:test'
import {
  arpRequestFrame,
  buildEthernet,
  buildIcmpEcho,
  buildIpv4,
  ETHERTYPE_IPV4,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  IP_PROTO_ICMP,
  parseArp,
  parseEthernet,
  parseIcmpEcho,
  parseIpv4,
} from '../../src/overlay/frame.js'
import {
  METADATA_IP,
  METADATA_MAC,
  MetadataServer,
  metadataFromContext,
  type VmMetadata,
} from '../../src/overlay/metadata.js'
import { VirtualSwitch } from '../../src/overlay/switch.js'
import {
  buildTcp,
  IP_PROTO_TCP,
  parseTcp,
  seqAdd,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  type TcpSegment,
} from '../../src/overlay/tcp.js'

const A = { vmId: 'vm-a', network: 'red', mac: '02:00:00:00:00:0a', ip: '10.0.0.10' }
const B = { vmId: 'vm-b', network: 'red', mac: '02:00:00:00:00:0b', ip: '10.0.0.11' }
const META: Record<string, VmMetadata> = {
  [A.vmId]: {
    ...A,
    name: 'web-0',
    role: 'head',
    cluster: 'web',
    peers: [{ name: 'web-1', ip: '10.0.0.11', role: 'worker' }],
    userData: '#!/bin/sh\necho hi\n',
  },
  [B.vmId]: { ...B, name: 'web-1' },
}

let sw: VirtualSwitch
let md: MetadataServer
let inbox: Record<string, Uint8Array[]>

beforeEach(() => {
  md?.close()
  inbox = { [A.vmId]: [], [B.vmId]: [] }
  md = new MetadataServer({ provider: (vm) => META[vm.vmId], rtoMs: 40, maxRetries: 3, idleMs: 2000 })
  sw = new VirtualSwitch({
    send: () => true,
    metadata: (port, frame, reply) => md.handle(port, frame, reply),
  })
  sw.addNetwork('red', { mtu: 1500 })
  for (const p of [A, B]) sw.attach({ ...p, deliver: (f) => inbox[p.vmId]?.push(f) })
})

/** A TCP segment from a VM to the metadata service, as a frame. */
function seg(from: typeof A, s: Partial<TcpSegment> & { flags: number }, srcIp = from.ip): Uint8Array {
  const tcp = buildTcp(srcIp, METADATA_IP, {
    srcPort: 40000,
    dstPort: 80,
    seq: 1000,
    ack: 0,
    window: 65535,
    payload: new Uint8Array(0),
    ...s,
  })
  return buildEthernet(
    METADATA_MAC,
    from.mac,
    ETHERTYPE_IPV4,
    buildIpv4(srcIp, METADATA_IP, IP_PROTO_TCP, tcp),
  )
}

/** The TCP segments a VM received from the service (taken out of its inbox). */
function received(vm: typeof A): TcpSegment[] {
  const out: TcpSegment[] = []
  for (const f of inbox[vm.vmId]?.splice(0) ?? []) {
    const eth = parseEthernet(f)
    assert.equal(eth?.src, METADATA_MAC)
    assert.equal(eth?.dst, vm.mac)
    const ip = parseIpv4(eth?.payload ?? new Uint8Array())
    assert.ok(ip && ip.src === METADATA_IP && ip.protocol === IP_PROTO_TCP)
    const t = parseTcp(ip.src, ip.dst, ip.payload)
    assert.ok(t, 'a valid checksum')
    out.push(t)
  }
  return out
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms))

/** Handshake from `vm`; returns the service's initial sequence number. */
async function connect(vm: typeof A, port = 40000, srcIp = vm.ip): Promise<number> {
  assert.equal(
    sw.fromPort(vm.vmId, 'red', seg(vm, { flags: TCP_SYN, srcPort: port, mss: 1000 }, srcIp)),
    'metadata',
  )
  const [synAck] = received(vm)
  assert.equal(synAck?.flags, TCP_SYN | TCP_ACK)
  assert.equal(synAck?.ack, 1001)
  assert.equal(synAck?.mss, 1000)
  sw.fromPort(
    vm.vmId,
    'red',
    seg(vm, { flags: TCP_ACK, srcPort: port, seq: 1001, ack: seqAdd(synAck?.seq ?? 0, 1) }, srcIp),
  )
  return synAck?.seq ?? 0
}

/** Sends a request, ACKs everything, closes; returns the HTTP response text. */
async function get(vm: typeof A, request: string, port = 40000, srcIp = vm.ip): Promise<string> {
  const iss = await connect(vm, port, srcIp)
  const body = new TextEncoder().encode(request)
  sw.fromPort(
    vm.vmId,
    'red',
    seg(
      vm,
      { flags: TCP_ACK | TCP_PSH, srcPort: port, seq: 1001, ack: seqAdd(iss, 1), payload: body },
      srcIp,
    ),
  )
  await tick()
  const segs = received(vm).filter((s) => s.payload.length || s.flags & TCP_FIN)
  const text = Buffer.concat(segs.map((s) => s.payload)).toString()
  const fin = segs.at(-1)
  assert.ok(fin && fin.flags & TCP_FIN, 'the service closes after its answer')
  const end = seqAdd(fin.seq, fin.payload.length + 1)
  sw.fromPort(
    vm.vmId,
    'red',
    seg(vm, { flags: TCP_ACK | TCP_FIN, srcPort: port, seq: 1001 + body.length, ack: end }, srcIp),
  )
  const last = received(vm)
  assert.equal(last.length, 1, 'our FIN is acknowledged')
  assert.equal(last[0]?.ack, 1001 + body.length + 1)
  return text
}

describe('metadata service: ARP and ICMP', () => {
  it('the switch answers ARP for 169.254.169.254 with the service MAC on every port', () => {
    for (const vm of [A, B]) {
      assert.equal(sw.fromPort(vm.vmId, 'red', arpRequestFrame(vm, METADATA_IP)), 'arp-proxied')
      const arp = parseArp(
        parseEthernet(inbox[vm.vmId]?.[0] ?? new Uint8Array())?.payload ?? new Uint8Array(),
      )
      assert.equal(arp?.senderMac, METADATA_MAC)
      assert.equal(arp?.senderIp, METADATA_IP)
      assert.equal(arp?.targetMac, vm.mac)
    }
  })

  it('answers a ping', () => {
    const echo = buildIcmpEcho({ type: ICMP_ECHO_REQUEST, id: 7, seq: 1, data: new Uint8Array(8) })
    const f = buildEthernet(
      METADATA_MAC,
      A.mac,
      ETHERTYPE_IPV4,
      buildIpv4(A.ip, METADATA_IP, IP_PROTO_ICMP, echo),
    )
    sw.fromPort(A.vmId, 'red', f)
    const ip = parseIpv4(parseEthernet(inbox[A.vmId]?.[0] ?? new Uint8Array())?.payload ?? new Uint8Array())
    assert.equal(parseIcmpEcho(ip?.payload ?? new Uint8Array())?.type, ICMP_ECHO_REPLY)
  })

  it('without a metadata service the address is unknown', () => {
    const plain = new VirtualSwitch({ send: () => true })
    plain.addNetwork('red')
    const got: Uint8Array[] = []
    plain.attach({ ...A, deliver: (f) => got.push(f) })
    plain.fromPort(A.vmId, 'red', arpRequestFrame(A, METADATA_IP))
    assert.equal(got.length, 0)
    assert.equal(plain.fromPort(A.vmId, 'red', seg(A, { flags: TCP_SYN })), 'unknown-dst')
  })
})

describe('metadata service: HTTP over the user-space TCP responder', () => {
  it('serves EC2-style paths and the JSON document of the asking VM', async () => {
    const name = await get(A, 'GET /latest/meta-data/hostname HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n')
    assert.match(name, /^HTTP\/1\.0 200 OK\r\n/)
    assert.match(name, /\r\n\r\nweb-0\n$/)
    const doc = await get(A, 'GET /latest/context.json HTTP/1.0\r\n\r\n', 40001)
    const json = JSON.parse(doc.split('\r\n\r\n')[1] ?? '')
    assert.equal(json.name, 'web-0')
    assert.equal(json.role, 'head')
    assert.deepEqual(json.peers, [{ name: 'web-1', ip: '10.0.0.11', role: 'worker' }])
    assert.equal(json.userData, '#!/bin/sh\necho hi\n')
    const index = await get(A, 'GET /latest/meta-data/ HTTP/1.0\r\n\r\n', 40002)
    assert.match(index, /\r\n\r\ninstance-id\nhostname\n/)
    assert.match(index, /\nlocal-ipv4\n/)
    assert.match(index, /\npeers\n$/)
    assert.match(await get(A, 'GET /latest/user-data HTTP/1.0\r\n\r\n', 40003), /echo hi\n$/)
    assert.match(await get(B, 'GET /latest/user-data HTTP/1.0\r\n\r\n'), /^HTTP\/1\.0 404/)
    assert.equal(md.connectionCount, 0, 'closed connections are forgotten')
    assert.equal(md.stats.responses['200'], 4)
  })

  it('knows the VM by its port, not by the address its packets claim', async () => {
    const text = await get(B, 'GET /latest/meta-data/local-ipv4 HTTP/1.0\r\n\r\n', 40000, A.ip)
    assert.match(text, /\r\n\r\n10\.0\.0\.11\n$/)
    assert.match(await get(B, 'GET /latest/meta-data/name HTTP/1.0\r\n\r\n', 40001, A.ip), /web-1\n$/)
  })

  it('a request split over segments is answered once complete; a duplicate segment is re-acknowledged', async () => {
    const iss = await connect(A)
    const p1 = new TextEncoder().encode('GET /latest/meta-data/role HTTP/1.0\r\n')
    const p2 = new TextEncoder().encode('\r\n')
    sw.fromPort(A.vmId, 'red', seg(A, { flags: TCP_ACK, seq: 1001, ack: seqAdd(iss, 1), payload: p1 }))
    const ack1 = received(A)
    assert.equal(ack1.length, 1)
    assert.equal(ack1[0]?.ack, 1001 + p1.length)
    // the same segment again: the expected number again, no data
    sw.fromPort(A.vmId, 'red', seg(A, { flags: TCP_ACK, seq: 1001, ack: seqAdd(iss, 1), payload: p1 }))
    assert.equal(received(A)[0]?.ack, 1001 + p1.length)
    sw.fromPort(
      A.vmId,
      'red',
      seg(A, { flags: TCP_ACK, seq: 1001 + p1.length, ack: seqAdd(iss, 1), payload: p2 }),
    )
    await tick()
    const text = Buffer.concat(received(A).map((s) => s.payload)).toString()
    assert.match(text, /\r\n\r\nhead\n$/)
  })

  it('retransmits the SYN-ACK and the answer until acknowledged, then gives up', async () => {
    sw.fromPort(A.vmId, 'red', seg(A, { flags: TCP_SYN }))
    const first = received(A)
    await tick(60)
    const again = received(A)
    assert.equal(again[0]?.flags, TCP_SYN | TCP_ACK, 'SYN-ACK sent again')
    assert.equal(again[0]?.seq, first[0]?.seq)
    const iss = first[0]?.seq ?? 0
    sw.fromPort(A.vmId, 'red', seg(A, { flags: TCP_ACK, seq: 1001, ack: seqAdd(iss, 1) }))
    const req = new TextEncoder().encode('GET /latest/meta-data/name HTTP/1.0\r\n\r\n')
    sw.fromPort(A.vmId, 'red', seg(A, { flags: TCP_ACK, seq: 1001, ack: seqAdd(iss, 1), payload: req }))
    await tick()
    const answer = received(A).filter((s) => s.payload.length)
    assert.equal(answer.length, 1)
    await tick(60)
    const resent = received(A).filter((s) => s.payload.length)
    assert.equal(resent.length, 1, 'the unacknowledged answer is sent again')
    assert.deepEqual(resent[0]?.payload, answer[0]?.payload)
    assert.ok(md.stats.retransmits >= 2)
    // nobody acknowledges: 40 + 80 + 160 + 320 ms, then the connection is dropped
    await tick(800)
    assert.equal(md.connectionCount, 0)
    assert.equal(md.stats.timeouts, 1)
  })

  it('sends no more than the client’s window, the rest as it opens', async () => {
    const iss = await connect(A)
    const req = new TextEncoder().encode('GET /latest/context.json HTTP/1.0\r\n\r\n')
    sw.fromPort(
      A.vmId,
      'red',
      seg(A, { flags: TCP_ACK, seq: 1001, ack: seqAdd(iss, 1), window: 50, payload: req }),
    )
    await tick()
    const part = received(A).filter((s) => s.payload.length)
    assert.equal(
      part.reduce((n, s) => n + s.payload.length, 0),
      50,
    )
    sw.fromPort(
      A.vmId,
      'red',
      seg(A, { flags: TCP_ACK, seq: 1001 + req.length, ack: seqAdd(iss, 51), window: 65535 }),
    )
    const rest = received(A)
    assert.ok(rest.at(-1) && (rest.at(-1)?.flags ?? 0) & TCP_FIN)
    const text = Buffer.concat([...part, ...rest].map((s) => s.payload)).toString()
    assert.equal(JSON.parse(text.split('\r\n\r\n')[1] ?? '').name, 'web-0')
  })
})

describe('metadata service: bad input changes nothing', () => {
  it('a segment with a bad checksum is dropped and counted', () => {
    const f = seg(A, { flags: TCP_SYN })
    const at = 14 + 20 + 16 // Ethernet, IPv4, then the TCP checksum field
    f[at] = (f[at] ?? 0) ^ 0xff
    sw.fromPort(A.vmId, 'red', f)
    assert.equal(received(A).length, 0)
    assert.equal(md.stats.dropped.malformed, 1)
    assert.equal(md.connectionCount, 0)
  })

  it('a segment of no connection, or a SYN to another port, gets a reset', () => {
    sw.fromPort(A.vmId, 'red', seg(A, { flags: TCP_ACK, seq: 5, ack: 77 }))
    const r1 = received(A)
    assert.equal(r1[0]?.flags, TCP_RST)
    assert.equal(r1[0]?.seq, 77)
    sw.fromPort(A.vmId, 'red', seg(A, { flags: TCP_SYN, dstPort: 22 }))
    const r2 = received(A)
    assert.equal(r2[0]?.flags, TCP_RST | TCP_ACK)
    assert.equal(r2[0]?.ack, 1001)
    assert.equal(md.connectionCount, 0)
  })

  it('a reset from the client forgets the connection', async () => {
    const iss = await connect(A)
    assert.equal(md.connectionCount, 1)
    sw.fromPort(A.vmId, 'red', seg(A, { flags: TCP_RST, seq: 1001, ack: seqAdd(iss, 1) }))
    assert.equal(md.connectionCount, 0)
  })

  it('malformed requests, other methods, unknown paths and huge requests get 4xx', async () => {
    assert.match(await get(A, 'HELLO\r\n\r\n', 41000), /^HTTP\/1\.0 400/)
    assert.match(await get(A, 'POST /latest/meta-data/name HTTP/1.0\r\n\r\n', 41001), /^HTTP\/1\.0 405/)
    assert.match(await get(A, 'GET /latest/meta-data/nope HTTP/1.0\r\n\r\n', 41002), /^HTTP\/1\.0 404/)
    const iss = await connect(A, 41003)
    let seq = 1001
    for (let i = 0; i < 9; i++) {
      const chunk = new Uint8Array(1000).fill(0x41)
      sw.fromPort(
        A.vmId,
        'red',
        seg(A, { flags: TCP_ACK, srcPort: 41003, seq, ack: seqAdd(iss, 1), payload: chunk }),
      )
      seq += 1000
    }
    await tick()
    const text = Buffer.concat(received(A).map((s) => s.payload)).toString()
    assert.match(text, /^HTTP\/1\.0 431/)
  })

  it('a spoofed source MAC never reaches the service', () => {
    const f = seg({ ...A, mac: B.mac }, { flags: TCP_SYN })
    assert.equal(sw.fromPort(A.vmId, 'red', f), 'spoofed')
    assert.equal(md.stats.connections, 0)
  })
})

describe('metadata from a virtual cluster context', () => {
  it('takes role, cluster, peers and user data; ignores fields of the wrong shape', () => {
    const base = { ...A, name: 'x' }
    const md1 = metadataFromContext(base, {
      cluster: 'c1',
      vm: { role: 'worker' },
      peers: [{ name: 'c1-0', ip: '10.0.0.5', role: 'head' }, { nope: 1 }, 'junk'],
      userData: 'u',
    })
    assert.deepEqual(md1, {
      ...base,
      cluster: 'c1',
      role: 'worker',
      peers: [{ name: 'c1-0', ip: '10.0.0.5', role: 'head' }],
      userData: 'u',
    })
    assert.deepEqual(metadataFromContext(base, 'nonsense'), base)
    assert.deepEqual(metadataFromContext(base, { vm: 3, peers: 'x', cluster: 5 }), base)
  })
})
