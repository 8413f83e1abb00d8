// A self-signed X.509 certificate made in-process (no openssl): an ECDSA P-256 key from node:crypto,
// a minimal DER TBSCertificate (v3, CN=localhost, SAN localhost + 127.0.0.1), signed with SHA-256.
import { generateKeyPairSync, randomBytes, sign, X509Certificate } from 'node:crypto'

function len(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n])
  const bytes: number[] = []
  while (n > 0) {
    bytes.unshift(n & 0xff)
    n >>>= 8
  }
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

function tlv(tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts)
  return Buffer.concat([Buffer.from([tag]), len(body.length), body])
}

const seq = (...p: Buffer[]) => tlv(0x30, ...p)
const set = (...p: Buffer[]) => tlv(0x31, ...p)
const oid = (hex: string) => tlv(0x06, Buffer.from(hex, 'hex'))
const utf8 = (s: string) => tlv(0x0c, Buffer.from(s, 'utf8'))

function utcTime(d: Date): Buffer {
  const p = (n: number) => String(n).padStart(2, '0')
  const s =
    p(d.getUTCFullYear() % 100) +
    p(d.getUTCMonth() + 1) +
    p(d.getUTCDate()) +
    p(d.getUTCHours()) +
    p(d.getUTCMinutes()) +
    p(d.getUTCSeconds()) +
    'Z'
  return tlv(0x17, Buffer.from(s, 'ascii'))
}

const ECDSA_SHA256 = '2a8648ce3d040302' // 1.2.840.10045.4.3.2
const COMMON_NAME = '550403' // 2.5.4.3
const SUBJECT_ALT_NAME = '551d11' // 2.5.29.17

export interface SelfSigned {
  key: string
  cert: string
}

export function selfSignedCert(commonName = 'localhost'): SelfSigned {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const spki = publicKey.export({ type: 'spki', format: 'der' })
  const serial = randomBytes(8)
  serial[0] = (serial[0]! & 0x7f) | 0x01 // positive, no leading zero byte needed
  const name = seq(set(seq(oid(COMMON_NAME), utf8(commonName))))
  const now = Date.now()
  const san = seq(tlv(0x82, Buffer.from(commonName, 'ascii')), tlv(0x87, Buffer.from([127, 0, 0, 1])))
  const tbs = seq(
    tlv(0xa0, tlv(0x02, Buffer.from([2]))), // version v3
    tlv(0x02, serial),
    seq(oid(ECDSA_SHA256)),
    name,
    seq(utcTime(new Date(now - 3600_000)), utcTime(new Date(now + 7 * 86400_000))),
    name,
    spki,
    tlv(0xa3, seq(seq(oid(SUBJECT_ALT_NAME), tlv(0x04, san)))),
  )
  const signature = sign('sha256', tbs, privateKey) // DER ECDSA-Sig-Value
  const der = seq(tbs, seq(oid(ECDSA_SHA256)), tlv(0x03, Buffer.from([0]), signature))
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n')
  const cert = `-----BEGIN CERTIFICATE-----\n${b64.trimEnd()}\n-----END CERTIFICATE-----\n`
  // Parse it back and check the signature: a malformed certificate fails here, not in the handshake
  if (!new X509Certificate(cert).verify(publicKey)) throw new Error('self-signed certificate does not verify')
  return { key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), cert }
}
