// Overlay core: Ethernet/ARP/IPv4/ICMP codecs, MAC allocation, IPAM.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  ARP_REPLY,
  ARP_REQUEST,
  arpReplyFrame,
  buildArp,
  buildEthernet,
  buildIcmpEcho,
  buildIpv4,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  gratuitousArpFrame,
  ICMP_ECHO_REQUEST,
  inetChecksum,
  parseArp,
  parseEthernet,
  parseIcmpEcho,
  parseIpv4,
} from '../../src/overlay/frame.js'
import { allocateIp, parseSubnet, subnetContains } from '../../src/overlay/ipam.js'
import { allocateMac, isGroupMac, isMac, macFromBytes, macToBytes } from '../../src/overlay/mac.js'

describe('overlay frames', () => {
  it('builds and parses an Ethernet frame', () => {
    const f = buildEthernet('ff:ff:ff:ff:ff:ff', '02:00:00:00:00:01', 0x0800, Uint8Array.of(1, 2, 3))
    assert.equal(f.length, 17)
    const p = parseEthernet(f)
    assert.ok(p)
    assert.equal(p.dst, 'ff:ff:ff:ff:ff:ff')
    assert.equal(p.src, '02:00:00:00:00:01')
    assert.equal(p.ethertype, 0x0800)
    assert.deepEqual([...p.payload], [1, 2, 3])
  })

  it('refuses a frame shorter than its header', () => {
    assert.equal(parseEthernet(new Uint8Array(13)), undefined)
  })

  it('round-trips ARP and refuses malformed ARP', () => {
    const pkt = {
      op: ARP_REQUEST,
      senderMac: '02:aa:bb:cc:dd:ee',
      senderIp: '10.0.0.5',
      targetMac: '00:00:00:00:00:00',
      targetIp: '10.0.0.9',
    }
    assert.deepEqual(parseArp(buildArp(pkt)), pkt)
    assert.equal(parseArp(new Uint8Array(27)), undefined)
    const bad = buildArp(pkt)
    bad[7] = 9 // op 9
    assert.equal(parseArp(bad), undefined)
    const ipv6 = buildArp(pkt)
    ipv6[2] = 0x86 // protocol type not IPv4
    assert.equal(parseArp(ipv6), undefined)
  })

  it('builds ARP replies and gratuitous ARP', () => {
    const r = parseEthernet(
      arpReplyFrame(
        { mac: '02:00:00:00:00:01', ip: '10.0.0.2' },
        { mac: '02:00:00:00:00:02', ip: '10.0.0.3' },
      ),
    )
    assert.ok(r)
    assert.equal(r.dst, '02:00:00:00:00:01')
    assert.equal(r.ethertype, ETHERTYPE_ARP)
    const a = parseArp(r.payload)
    assert.equal(a?.op, ARP_REPLY)
    assert.equal(a?.senderIp, '10.0.0.3')
    assert.equal(a?.senderMac, '02:00:00:00:00:02')
    const g = parseEthernet(gratuitousArpFrame('02:00:00:00:00:07', '10.0.0.7'))
    assert.equal(g?.dst, 'ff:ff:ff:ff:ff:ff')
    const ga = parseArp(g?.payload ?? new Uint8Array())
    assert.equal(ga?.senderIp, '10.0.0.7')
    assert.equal(ga?.targetIp, '10.0.0.7')
  })

  it('round-trips IPv4 + ICMP echo with valid checksums', () => {
    const icmp = buildIcmpEcho({ type: ICMP_ECHO_REQUEST, id: 7, seq: 42, data: Uint8Array.of(9, 9, 9) })
    assert.equal(inetChecksum(icmp), 0)
    const ip = buildIpv4('10.0.0.2', '10.0.0.3', 1, icmp)
    assert.equal(inetChecksum(ip.subarray(0, 20)), 0)
    const p = parseIpv4(ip)
    assert.ok(p)
    assert.equal(p.src, '10.0.0.2')
    assert.equal(p.dst, '10.0.0.3')
    const e = parseIcmpEcho(p.payload)
    assert.equal(e?.seq, 42)
    assert.equal(e?.id, 7)
    icmp[9] = (icmp[9] ?? 0) ^ 1
    assert.equal(parseIcmpEcho(icmp), undefined, 'a corrupted echo fails its checksum')
    assert.equal(parseIpv4(Uint8Array.of(0x65, 0, 0, 20)), undefined, 'version 6 / short')
    const truncated = ip.subarray(0, 24)
    assert.equal(parseIpv4(truncated), undefined, 'total length beyond the buffer')
    assert.equal(ETHERTYPE_IPV4, 0x0800)
  })
})

describe('overlay MACs', () => {
  it('formats and parses', () => {
    assert.equal(macFromBytes(macToBytes('02:0a:ff:00:10:01')), '02:0a:ff:00:10:01')
    assert.ok(isMac('02:0a:ff:00:10:01'))
    assert.ok(!isMac('02:0a:ff:00:10'))
    assert.throws(() => macToBytes('zz:00:00:00:00:00'), /not a MAC/)
    assert.ok(isGroupMac('ff:ff:ff:ff:ff:ff'))
    assert.ok(isGroupMac('01:00:5e:00:00:01'))
    assert.ok(!isGroupMac('02:00:00:00:00:01'))
  })

  it('allocates a stable, locally administered unicast MAC and skips taken ones', () => {
    const a = allocateMac('net', 'vm-1', () => false)
    assert.equal(
      a,
      allocateMac('net', 'vm-1', () => false),
      'stable',
    )
    const first = Number.parseInt(a.slice(0, 2), 16)
    assert.equal(first & 0x02, 0x02, 'locally administered')
    assert.equal(first & 0x01, 0, 'unicast')
    assert.notEqual(
      allocateMac('other', 'vm-1', () => false),
      a,
      'per network',
    )
    const b = allocateMac('net', 'vm-1', (m) => m === a)
    assert.notEqual(b, a, 'a collision rehashes')
    assert.throws(() => allocateMac('net', 'vm-1', () => true), /no free MAC/)
  })
})

describe('overlay IPAM', () => {
  it('parses subnets and refuses bad ones', () => {
    assert.deepEqual(parseSubnet('10.10.0.0/24'), { cidr: '10.10.0.0/24', base: 0x0a0a0000, prefix: 24 })
    assert.throws(() => parseSubnet('10.10.0.1/24'), /host bits set.*10\.10\.0\.0\/24/)
    assert.throws(() => parseSubnet('10.10.0.0/31'), /prefix length/)
    assert.throws(() => parseSubnet('10.10.0.300/24'), /IPv4 CIDR/)
    assert.throws(() => parseSubnet('banana'), /IPv4 CIDR/)
  })

  it('allocates inside the subnet, never network/.1/broadcast, never a taken one, until full', () => {
    const s = parseSubnet('192.168.5.0/29') // usable: .2 .. .6
    const taken = new Set<string>()
    for (let i = 0; i < 5; i++) {
      const ip = allocateIp(s, `vm-${i}`, (x) => taken.has(x))
      assert.ok(subnetContains(s, ip))
      assert.ok(!['192.168.5.0', '192.168.5.1', '192.168.5.7'].includes(ip), ip)
      assert.ok(!taken.has(ip))
      taken.add(ip)
    }
    assert.throws(() => allocateIp(s, 'vm-9', (x) => taken.has(x)), /full/)
    assert.equal(
      allocateIp(s, 'vm-x', () => false),
      allocateIp(s, 'vm-x', () => false),
      'deterministic',
    )
  })
})
