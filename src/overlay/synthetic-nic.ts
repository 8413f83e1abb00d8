// The in-process NIC of a synthetic VM: what a guest's network stack would do, reduced to what
// tests and benchmarks need. It answers ARP for its address and ICMP echo requests, keeps an ARP
// cache, can ping another address and send raw frames, and counts what it receives.
import {
  ARP_REPLY,
  ARP_REQUEST,
  arpReplyFrame,
  arpRequestFrame,
  buildEthernet,
  buildIcmpEcho,
  buildIpv4,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  IP_PROTO_ICMP,
  parseArp,
  parseEthernet,
  parseIcmpEcho,
  parseIpv4,
} from './frame.js'
import { isGroupMac, type Mac } from './mac.js'

export interface SyntheticNicInit {
  mac: Mac
  ip: string
  /** Puts a frame on the virtual switch. */
  transmit: (frame: Uint8Array) => void
  /** A paused or stopped VM does not process frames (they are counted as missed). */
  running?: () => boolean
}

export interface NicStats {
  rxFrames: number
  rxBytes: number
  txFrames: number
  txBytes: number
  /** Frames that arrived while the VM was not running. */
  missed: number
  /** Frames for another MAC (a switch bug if ever non-zero). */
  misdelivered: number
  arpAnswered: number
  echoAnswered: number
  echoReplies: number
  gratuitousArps: number
}

export interface PingResult {
  ip: string
  seq: number
  rttMs: number
  bytes: number
}

const ECHO_ID = 0x5353

export class SyntheticNic {
  readonly mac: Mac
  readonly ip: string
  readonly stats: NicStats = {
    rxFrames: 0,
    rxBytes: 0,
    txFrames: 0,
    txBytes: 0,
    missed: 0,
    misdelivered: 0,
    arpAnswered: 0,
    echoAnswered: 0,
    echoReplies: 0,
    gratuitousArps: 0,
  }
  readonly arpCache = new Map<string, Mac>()
  /** Wall-clock ms of the first frame this NIC processed (after a migration: the first at the new host). */
  firstFrameAt?: number
  private seq = 0
  private readonly pendingEcho = new Map<number, (at: number) => void>()
  private readonly pendingArp = new Map<string, Array<(mac: Mac) => void>>()
  private readonly listeners = new Set<(frame: Uint8Array) => void>()

  constructor(private readonly init: SyntheticNicInit) {
    this.mac = init.mac
    this.ip = init.ip
  }

  /** Raw frames as the NIC receives them (tests, benchmarks). Returns an unsubscribe. */
  onFrame(fn: (frame: Uint8Array) => void): () => void {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }

  transmit(frame: Uint8Array): void {
    this.stats.txFrames++
    this.stats.txBytes += frame.length
    this.init.transmit(frame)
  }

  /** A frame from the switch. */
  receive(frame: Uint8Array): void {
    if (this.init.running && !this.init.running()) {
      this.stats.missed++
      return
    }
    const eth = parseEthernet(frame)
    if (!eth) return
    if (eth.dst !== this.mac && !isGroupMac(eth.dst)) {
      this.stats.misdelivered++
      return
    }
    this.stats.rxFrames++
    this.stats.rxBytes += frame.length
    this.firstFrameAt ??= Date.now()
    for (const fn of this.listeners) fn(frame)
    if (eth.ethertype === ETHERTYPE_ARP) {
      this.onArp(eth.payload)
      return
    }
    if (eth.ethertype !== ETHERTYPE_IPV4) return
    const ip = parseIpv4(eth.payload)
    if (!ip || ip.dst !== this.ip || ip.protocol !== IP_PROTO_ICMP) return
    const echo = parseIcmpEcho(ip.payload)
    if (!echo) return
    if (echo.type === ICMP_ECHO_REQUEST) {
      this.stats.echoAnswered++
      const reply = buildIcmpEcho({ ...echo, type: ICMP_ECHO_REPLY })
      this.transmit(
        buildEthernet(eth.src, this.mac, ETHERTYPE_IPV4, buildIpv4(this.ip, ip.src, IP_PROTO_ICMP, reply)),
      )
    } else if (echo.id === ECHO_ID) {
      this.stats.echoReplies++
      this.pendingEcho.get(echo.seq)?.(performance.now())
    }
  }

  /** Resolves `ip` through ARP (the switch's proxy answers), cached. */
  async resolve(ip: string, timeoutMs = 2000): Promise<Mac> {
    const known = this.arpCache.get(ip)
    if (known) return known
    return new Promise<Mac>((resolve, reject) => {
      const timer = setTimeout(() => {
        const list = this.pendingArp.get(ip)?.filter((f) => f !== done)
        if (list?.length) this.pendingArp.set(ip, list)
        else this.pendingArp.delete(ip)
        reject(new Error(`ARP: no answer for ${ip} within ${timeoutMs} ms`))
      }, timeoutMs)
      const done = (mac: Mac) => {
        clearTimeout(timer)
        resolve(mac)
      }
      const list = this.pendingArp.get(ip) ?? []
      list.push(done)
      this.pendingArp.set(ip, list)
      this.transmit(arpRequestFrame({ mac: this.mac, ip: this.ip }, ip))
    })
  }

  /** One ICMP echo to `ip`; rejects on timeout. */
  async ping(ip: string, opts: { timeoutMs?: number; size?: number } = {}): Promise<PingResult> {
    const timeoutMs = opts.timeoutMs ?? 2000
    const mac = await this.resolve(ip, timeoutMs)
    this.seq = (this.seq + 1) & 0xffff
    const seq = this.seq
    const data = new Uint8Array(opts.size ?? 56)
    const frame = buildEthernet(
      mac,
      this.mac,
      ETHERTYPE_IPV4,
      buildIpv4(
        this.ip,
        ip,
        IP_PROTO_ICMP,
        buildIcmpEcho({ type: ICMP_ECHO_REQUEST, id: ECHO_ID, seq, data }),
      ),
    )
    const start = performance.now()
    return new Promise<PingResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pendingEcho.delete(seq)
        reject(new Error(`ping ${ip}: no reply within ${timeoutMs} ms`))
      }, timeoutMs)
      this.pendingEcho.set(seq, (at) => {
        clearTimeout(timer)
        this.pendingEcho.delete(seq)
        resolve({ ip, seq, rttMs: at - start, bytes: frame.length })
      })
      this.transmit(frame)
    })
  }

  private onArp(payload: Uint8Array): void {
    const arp = parseArp(payload)
    if (!arp) return
    if (arp.op === ARP_REQUEST && arp.senderIp === arp.targetIp) {
      // Gratuitous: someone announces (or re-announces after a move) its address.
      this.stats.gratuitousArps++
      this.learn(arp.senderIp, arp.senderMac)
      return
    }
    if (arp.op === ARP_REQUEST && arp.targetIp === this.ip) {
      this.stats.arpAnswered++
      this.learn(arp.senderIp, arp.senderMac)
      this.transmit(arpReplyFrame({ mac: arp.senderMac, ip: arp.senderIp }, { mac: this.mac, ip: this.ip }))
      return
    }
    if (arp.op === ARP_REPLY && arp.targetMac === this.mac) this.learn(arp.senderIp, arp.senderMac)
  }

  private learn(ip: string, mac: Mac): void {
    this.arpCache.set(ip, mac)
    const waiting = this.pendingArp.get(ip)
    if (!waiting) return
    this.pendingArp.delete(ip)
    for (const fn of waiting) fn(mac)
  }
}
