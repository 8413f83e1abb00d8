// The metadata service each agent serves on its virtual networks at 169.254.169.254:80, as EC2 and
// Nimbus do: a guest asks `GET /latest/meta-data/...` (or the whole JSON at `/latest/context.json`)
// and learns its name, role, cluster peers and user data without any configuration.
//
// The switch answers ARP for the address with METADATA_MAC and hands frames sent to that MAC here,
// with the port they came from: the asking VM is identified by its port (its NIC), never by what the
// packet claims. There is no socket behind it: a minimal TCP responder (passive open, in-order data,
// one request per connection, retransmission with back-off, FIN/RST) speaks HTTP/1.0 and closes.
// No npm package offers a user-space TCP endpoint over raw frames short of a whole TCP/IP stack
// (lwIP in WebAssembly and the like), which is far more than one request and one answer need.
import {
  buildEthernet,
  buildIcmpEcho,
  buildIpv4,
  ETHERTYPE_IPV4,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  IP_PROTO_ICMP,
  parseEthernet,
  parseIcmpEcho,
  parseIpv4,
} from './frame.js'
import type { Mac } from './mac.js'
import {
  buildTcp,
  IP_PROTO_TCP,
  parseTcp,
  seqAdd,
  seqDiff,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  type TcpSegment,
} from './tcp.js'

export const METADATA_IP = '169.254.169.254'
/** The service's MAC on every network (locally administered; it never leaves the agent). */
export const METADATA_MAC: Mac = '02:a9:fe:a9:fe:fe'
export const METADATA_PORT = 80

/** The port a request came in on: who is asking. */
export interface MetadataCaller {
  vmId: string
  network: string
  mac: Mac
  ip: string
}

/** What a VM learns about itself. */
export interface VmMetadata {
  vmId: string
  name: string
  network: string
  mac: Mac
  ip: string
  role?: string
  cluster?: string
  peers?: Array<{ name: string; ip?: string; role?: string }>
  userData?: string
}

/** The agent's source of a VM's context (the virtual cluster's, else the VM's own name and address). */
export type MetadataProvider = (
  vm: MetadataCaller,
) => VmMetadata | undefined | Promise<VmMetadata | undefined>

export interface MetadataStats {
  connections: number
  requests: number
  /** Answers by HTTP status. */
  responses: Record<string, number>
  retransmits: number
  /** Resets sent (a segment for no connection, a closed port) and received. */
  resetsSent: number
  resetsReceived: number
  /** Connections given up after the last retransmission went unanswered, or idle too long. */
  timeouts: number
  echoAnswered: number
  /** Frames not served: malformed (or bad checksum), not for the service, too many connections. */
  dropped: { malformed: number; 'not-served': number; 'too-many': number }
}

export interface MetadataServerInit {
  provider: MetadataProvider
  /** First retransmission timeout; doubles on each retry. */
  rtoMs?: number
  maxRetries?: number
  /** A connection with nothing in flight is dropped after this long. */
  idleMs?: number
  maxConnections?: number
  /** How long the provider may take. */
  providerTimeoutMs?: number
}

const MAX_REQUEST = 8192
const OUR_WINDOW = 65_535

interface Conn {
  key: string
  caller: MetadataCaller
  reply: (frame: Uint8Array) => boolean
  clientIp: string
  clientPort: number
  established: boolean
  iss: number
  sndUna: number
  sndNxt: number
  /** The highest sequence number sent (sndNxt goes back on a retransmission). */
  sndMax: number
  rcvNxt: number
  mss: number
  window: number
  request: Uint8Array[]
  requestBytes: number
  /** The response, once known: sent as data then FIN. */
  out?: Uint8Array
  answering: boolean
  peerFin: boolean
  retries: number
  rto: number
  timer?: NodeJS.Timeout
}

export class MetadataServer {
  readonly stats: MetadataStats = {
    connections: 0,
    requests: 0,
    responses: {},
    retransmits: 0,
    resetsSent: 0,
    resetsReceived: 0,
    timeouts: 0,
    echoAnswered: 0,
    dropped: { malformed: 0, 'not-served': 0, 'too-many': 0 },
  }
  private readonly conns = new Map<string, Conn>()
  private readonly rtoMs: number
  private readonly maxRetries: number
  private readonly idleMs: number
  private readonly maxConnections: number
  private closed = false

  constructor(private readonly init: MetadataServerInit) {
    this.rtoMs = init.rtoMs ?? 200
    this.maxRetries = init.maxRetries ?? 6
    this.idleMs = init.idleMs ?? 30_000
    this.maxConnections = init.maxConnections ?? 1024
  }

  /** Open connections (tests). */
  get connectionCount(): number {
    return this.conns.size
  }

  /** A frame a local port sent to METADATA_MAC; `reply` puts a frame back on that port (false: it is gone). */
  handle(caller: MetadataCaller, frame: Uint8Array, reply: (frame: Uint8Array) => boolean): void {
    if (this.closed) return
    const eth = parseEthernet(frame)
    if (!eth || eth.ethertype !== ETHERTYPE_IPV4) {
      this.drop('not-served')
      return
    }
    const ip = parseIpv4(eth.payload)
    if (!ip) {
      this.drop('malformed')
      return
    }
    if (ip.dst !== METADATA_IP) {
      this.drop('not-served')
      return
    }
    if (ip.protocol === IP_PROTO_ICMP) {
      const echo = parseIcmpEcho(ip.payload)
      if (!echo || echo.type !== ICMP_ECHO_REQUEST) {
        this.drop('not-served')
        return
      }
      this.stats.echoAnswered++
      const pong = buildIcmpEcho({ ...echo, type: ICMP_ECHO_REPLY })
      reply(
        buildEthernet(
          eth.src,
          METADATA_MAC,
          ETHERTYPE_IPV4,
          buildIpv4(METADATA_IP, ip.src, IP_PROTO_ICMP, pong),
        ),
      )
      return
    }
    if (ip.protocol !== IP_PROTO_TCP) {
      this.drop('not-served')
      return
    }
    const seg = parseTcp(ip.src, ip.dst, ip.payload)
    if (!seg) {
      this.drop('malformed')
      return
    }
    const key = `${caller.vmId}\0${caller.network}\0${ip.src}:${seg.srcPort}`
    const conn = this.conns.get(key)
    if (seg.flags & TCP_RST) {
      if (conn) {
        this.stats.resetsReceived++
        this.forget(conn)
      }
      return
    }
    if (!conn || (seg.flags & TCP_SYN && (conn.established || seqAdd(seg.seq, 1) !== conn.rcvNxt))) {
      if (conn) this.forget(conn) // a new connection reusing the port
      if (!(seg.flags & TCP_SYN) || seg.flags & TCP_ACK || seg.dstPort !== METADATA_PORT) {
        this.reset(caller, reply, ip.src, seg)
        return
      }
      if (this.conns.size >= this.maxConnections) {
        this.drop('too-many')
        return
      }
      this.open(key, caller, reply, ip.src, seg)
      return
    }
    conn.reply = reply
    if (seg.flags & TCP_SYN) {
      // the client did not get our SYN-ACK: send it again
      this.sendSynAck(conn)
      return
    }
    this.segment(conn, seg)
  }

  /** Stops every timer and forgets every connection. */
  close(): void {
    this.closed = true
    for (const c of this.conns.values()) clearTimeout(c.timer)
    this.conns.clear()
  }

  // ---------------------------------------------------------------- TCP

  private open(
    key: string,
    caller: MetadataCaller,
    reply: (f: Uint8Array) => boolean,
    clientIp: string,
    syn: TcpSegment,
  ): void {
    const iss = (Math.random() * 0x1_0000_0000) >>> 0
    const conn: Conn = {
      key,
      caller,
      reply,
      clientIp,
      clientPort: syn.srcPort,
      established: false,
      iss,
      sndUna: iss,
      sndNxt: seqAdd(iss, 1),
      sndMax: seqAdd(iss, 1),
      rcvNxt: seqAdd(syn.seq, 1),
      mss: Math.max(64, Math.min(syn.mss ?? 536, 1460)),
      window: syn.window,
      request: [],
      requestBytes: 0,
      answering: false,
      peerFin: false,
      retries: 0,
      rto: this.rtoMs,
    }
    this.conns.set(key, conn)
    this.stats.connections++
    this.sendSynAck(conn)
  }

  private sendSynAck(conn: Conn): void {
    this.emit(conn, TCP_SYN | TCP_ACK, conn.iss, new Uint8Array(0), conn.mss)
    this.arm(conn)
  }

  private segment(conn: Conn, seg: TcpSegment): void {
    if (!(seg.flags & TCP_ACK)) return
    // Our SYN (the first sequence number) and any data and FIN the ACK covers.
    if (seqDiff(seg.ack, conn.sndUna) > 0 && seqDiff(seg.ack, conn.sndMax) <= 0) {
      conn.sndUna = seg.ack
      if (seqDiff(seg.ack, conn.sndNxt) > 0) conn.sndNxt = seg.ack
      conn.retries = 0
      conn.rto = this.rtoMs
      conn.established = true
    }
    if (!conn.established) return
    conn.window = seg.window
    let ack = false
    if (seg.payload.length > 0 || seg.flags & TCP_FIN) {
      if (seg.seq !== conn.rcvNxt) {
        ack = true // out of order or a duplicate: say what we expect
      } else {
        if (seg.payload.length) {
          conn.rcvNxt = seqAdd(conn.rcvNxt, seg.payload.length)
          if (!conn.answering && conn.requestBytes < MAX_REQUEST + 1) {
            conn.request.push(seg.payload.slice())
            conn.requestBytes += seg.payload.length
          }
        }
        if (seg.flags & TCP_FIN) {
          conn.rcvNxt = seqAdd(conn.rcvNxt, 1)
          conn.peerFin = true
        }
        ack = true
      }
    }
    if (!conn.answering) this.maybeAnswer(conn)
    const sent = this.flush(conn)
    if (ack && !sent) this.emit(conn, TCP_ACK, conn.sndNxt, new Uint8Array(0))
    if (this.finished(conn)) this.forget(conn)
    else this.arm(conn)
  }

  /** Sends what the window allows of the response (and the FIN after it); true if anything left. */
  private flush(conn: Conn): boolean {
    const out = conn.out
    if (!out) return false
    const base = seqAdd(conn.iss, 1)
    const total = out.length // the FIN takes sequence number base + total
    let off = seqDiff(conn.sndNxt, base)
    const limit = Math.min(total, Math.max(0, seqDiff(conn.sndUna, base)) + conn.window)
    let sent = false
    while (off <= total) {
      const n = Math.min(conn.mss, limit - off)
      if (off < total && n <= 0) break // the window is full
      const last = off + Math.max(n, 0) === total
      const len = Math.max(n, 0)
      this.emit(
        conn,
        TCP_ACK | (len ? TCP_PSH : 0) | (last ? TCP_FIN : 0),
        seqAdd(base, off),
        out.subarray(off, off + len),
      )
      sent = true
      off += len + (last ? 1 : 0)
    }
    conn.sndNxt = seqAdd(base, off)
    if (seqDiff(conn.sndNxt, conn.sndMax) > 0) conn.sndMax = conn.sndNxt
    return sent
  }

  /** Both sides have closed and our FIN is acknowledged. */
  private finished(conn: Conn): boolean {
    return (
      conn.out !== undefined &&
      conn.peerFin &&
      seqDiff(conn.sndUna, seqAdd(conn.iss, conn.out.length + 2)) === 0
    )
  }

  /** Retransmission timer while anything is unacknowledged, else an idle timer. */
  private arm(conn: Conn): void {
    clearTimeout(conn.timer)
    // unacknowledged bytes, or response bytes (or the FIN) a full window holds back
    const inFlight =
      !conn.established ||
      seqDiff(conn.sndMax, conn.sndUna) > 0 ||
      (conn.out !== undefined && seqDiff(conn.sndNxt, seqAdd(conn.iss, 1)) <= conn.out.length)
    conn.timer = setTimeout(
      () => (inFlight ? this.retransmit(conn) : this.expire(conn)),
      inFlight ? conn.rto : this.idleMs,
    )
    conn.timer.unref?.()
  }

  private retransmit(conn: Conn): void {
    if (this.conns.get(conn.key) !== conn) return
    if (++conn.retries > this.maxRetries) {
      this.expire(conn)
      return
    }
    this.stats.retransmits++
    conn.rto *= 2
    if (!conn.established) {
      this.sendSynAck(conn)
      return
    }
    conn.sndNxt = conn.sndUna
    // a zero window: probe with what is next anyway (one segment), as a persist timer would
    if (conn.window === 0) conn.window = 1
    this.flush(conn)
    this.arm(conn)
  }

  private expire(conn: Conn): void {
    if (this.conns.get(conn.key) !== conn) return
    this.stats.timeouts++
    this.forget(conn)
  }

  private forget(conn: Conn): void {
    clearTimeout(conn.timer)
    if (this.conns.get(conn.key) === conn) this.conns.delete(conn.key)
  }

  private emit(conn: Conn, flags: number, seq: number, payload: Uint8Array, mss?: number): void {
    const tcp = buildTcp(METADATA_IP, conn.clientIp, {
      srcPort: METADATA_PORT,
      dstPort: conn.clientPort,
      seq,
      ack: conn.rcvNxt,
      flags,
      window: OUR_WINDOW,
      ...(mss !== undefined ? { mss } : {}),
      payload,
    })
    const frame = buildEthernet(
      conn.caller.mac,
      METADATA_MAC,
      ETHERTYPE_IPV4,
      buildIpv4(METADATA_IP, conn.clientIp, IP_PROTO_TCP, tcp),
    )
    if (!conn.reply(frame)) this.forget(conn) // the VM's port is gone
  }

  private reset(
    caller: MetadataCaller,
    reply: (f: Uint8Array) => boolean,
    clientIp: string,
    seg: TcpSegment,
  ): void {
    this.stats.resetsSent++
    const len = seg.payload.length + (seg.flags & TCP_SYN ? 1 : 0) + (seg.flags & TCP_FIN ? 1 : 0)
    const tcp = buildTcp(METADATA_IP, clientIp, {
      srcPort: seg.dstPort,
      dstPort: seg.srcPort,
      seq: seg.flags & TCP_ACK ? seg.ack : 0,
      ack: seqAdd(seg.seq, len),
      flags: seg.flags & TCP_ACK ? TCP_RST : TCP_RST | TCP_ACK,
      window: 0,
      payload: new Uint8Array(0),
    })
    reply(
      buildEthernet(
        caller.mac,
        METADATA_MAC,
        ETHERTYPE_IPV4,
        buildIpv4(METADATA_IP, clientIp, IP_PROTO_TCP, tcp),
      ),
    )
  }

  // ---------------------------------------------------------------- HTTP

  private maybeAnswer(conn: Conn): void {
    const req = Buffer.concat(conn.request)
    const end = req.indexOf('\r\n\r\n')
    let head: string | undefined
    if (end >= 0) head = req.subarray(0, end).toString('latin1')
    else if (req.length > MAX_REQUEST) head = ''
    else if (conn.peerFin) head = req.toString('latin1') // the client closed before a full request
    if (head === undefined) return
    conn.answering = true
    conn.request = []
    this.stats.requests++
    const tooLong = end < 0 && req.length > MAX_REQUEST
    void this.respond(conn.caller, head, tooLong).then((res) => {
      if (this.conns.get(conn.key) !== conn) return
      this.stats.responses[String(res.status)] = (this.stats.responses[String(res.status)] ?? 0) + 1
      conn.out = res.bytes
      this.flush(conn)
      if (this.finished(conn)) this.forget(conn)
      else this.arm(conn)
    })
  }

  private async respond(
    caller: MetadataCaller,
    head: string,
    tooLong: boolean,
  ): Promise<{ status: number; bytes: Uint8Array }> {
    if (tooLong) return httpResponse(431, 'request too large\n')
    const m = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(head.split('\r\n')[0] ?? '')
    if (!m) return httpResponse(400, 'bad request\n')
    const method = m[1] ?? ''
    if (method !== 'GET' && method !== 'HEAD') return httpResponse(405, 'only GET and HEAD\n')
    let md: VmMetadata | undefined
    try {
      md = await withTimeout(Promise.resolve(this.init.provider(caller)), this.init.providerTimeoutMs ?? 2000)
    } catch {
      return httpResponse(503, 'metadata unavailable\n', method === 'HEAD')
    }
    if (!md) return httpResponse(404, 'no metadata for this VM\n', method === 'HEAD')
    const path = (m[2] ?? '').split('?')[0] ?? ''
    const body = metadataPath(md, path)
    if (body === undefined) return httpResponse(404, 'not found\n', method === 'HEAD')
    return httpResponse(200, body.text, method === 'HEAD', body.json ? 'application/json' : 'text/plain')
  }

  private drop(reason: keyof MetadataStats['dropped']): void {
    this.stats.dropped[reason]++
  }
}

/** EC2-style paths over a VM's metadata; undefined for a path that does not exist. */
export function metadataPath(md: VmMetadata, path: string): { text: string; json?: boolean } | undefined {
  const p = path.replace(/\/+$/, '') || '/'
  const leaf: Record<string, string | undefined> = {
    'instance-id': md.vmId,
    hostname: md.name,
    'local-hostname': md.name,
    name: md.name,
    'local-ipv4': md.ip,
    mac: md.mac,
    network: md.network,
    role: md.role,
    cluster: md.cluster,
    peers: md.peers?.map((x) => [x.name, x.ip ?? '', x.role ?? ''].join(' ').trim()).join('\n'),
  }
  const line = (s: string) => (s.endsWith('\n') || s === '' ? s : `${s}\n`)
  if (p === '/') return { text: 'latest\n' }
  if (p === '/latest')
    return { text: `meta-data/\n${md.userData !== undefined ? 'user-data\n' : ''}context.json\n` }
  if (p === '/latest/meta-data') {
    return {
      text: line(
        Object.keys(leaf)
          .filter((k) => leaf[k] !== undefined)
          .join('\n'),
      ),
    }
  }
  if (p === '/latest/user-data') return md.userData === undefined ? undefined : { text: md.userData }
  if (p === '/latest/context.json') return { text: `${JSON.stringify(md)}\n`, json: true }
  const m = /^\/latest\/meta-data\/([a-z0-9-]+)$/.exec(p)
  const v = m ? leaf[m[1] ?? ''] : undefined
  return v === undefined ? undefined : { text: line(v) }
}

const REASONS: Record<number, string> = {
  200: 'OK',
  400: 'Bad Request',
  404: 'Not Found',
  405: 'Method Not Allowed',
  431: 'Request Header Fields Too Large',
  503: 'Service Unavailable',
}

function httpResponse(
  status: number,
  body: string,
  head = false,
  type = 'text/plain',
): { status: number; bytes: Uint8Array } {
  const b = Buffer.from(body, 'utf8')
  const h = Buffer.from(
    `HTTP/1.0 ${status} ${REASONS[status] ?? ''}\r\nServer: skymesh\r\nContent-Type: ${type}; charset=utf-8\r\nContent-Length: ${b.length}\r\nConnection: close\r\n\r\n`,
    'latin1',
  )
  return { status, bytes: new Uint8Array(head ? h : Buffer.concat([h, b])) }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timeout')), ms)
    t.unref?.()
    p.then(
      (v) => {
        clearTimeout(t)
        resolve(v)
      },
      (e: unknown) => {
        clearTimeout(t)
        reject(e)
      },
    )
  })
}

/**
 * A VM's metadata from a virtual cluster's context document (`{cluster, vm: {role}, peers: [{name,
 * ip, role}], userData?}`, as the context broker writes it), over `base`; fields of the wrong shape
 * are left out.
 */
export function metadataFromContext(base: VmMetadata, ctx: unknown): VmMetadata {
  if (!ctx || typeof ctx !== 'object') return base
  const c = ctx as Record<string, unknown>
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined)
  const vm = (c.vm && typeof c.vm === 'object' ? c.vm : {}) as Record<string, unknown>
  const peers = Array.isArray(c.peers)
    ? c.peers.flatMap((p: unknown) => {
        const q = (p && typeof p === 'object' ? p : {}) as Record<string, unknown>
        const name = str(q.name)
        return name
          ? [{ name, ...(str(q.ip) ? { ip: str(q.ip) } : {}), ...(str(q.role) ? { role: str(q.role) } : {}) }]
          : []
      })
    : undefined
  const out: VmMetadata = { ...base }
  const role = str(vm.role)
  const cluster = str(c.cluster)
  const userData = str(c.userData)
  if (role) out.role = role
  if (cluster) out.cluster = cluster
  if (peers) out.peers = peers
  if (userData !== undefined) out.userData = userData
  return out
}
