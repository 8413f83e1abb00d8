// Dashboard sign-in: one-time codes (what `skymesh dashboard` prints in its URL) and browser sessions
// (an HttpOnly cookie). Both live in memory, bounded, and expire; a restart of the agent signs every
// browser out, which is fine for a page that signs in again from the token.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'

export interface SessionsInit {
  /** The API token; a session is worth as much as it is. */
  token: string
  /** How long a one-time code may wait to be used (default 2 min). */
  codeTtlMs?: number
  /** How long a session lives without use (default 12 h). */
  sessionTtlMs?: number
  /** Sessions kept at most; the least recently used goes first (default 64). */
  maxSessions?: number
  /** Unused codes kept at most; the oldest goes first (default 32). */
  maxCodes?: number
  now?: () => number
}

const sha = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest()

export class Sessions {
  /** Cookie name: one per agent (cookies ignore ports, and several agents may share 127.0.0.1). */
  readonly cookieName: string
  private readonly tokenDigest: Buffer
  private readonly codes = new Map<string, number>()
  /** Session digest -> expiry; Map order is use order (oldest first). */
  private readonly sessions = new Map<string, number>()
  private readonly codeTtlMs: number
  private readonly sessionTtlMs: number
  private readonly maxSessions: number
  private readonly maxCodes: number
  private readonly now: () => number

  constructor(init: SessionsInit) {
    this.tokenDigest = sha(init.token)
    this.cookieName = `skymesh_${this.tokenDigest.subarray(0, 4).toString('hex')}`
    this.codeTtlMs = init.codeTtlMs ?? 120_000
    this.sessionTtlMs = init.sessionTtlMs ?? 12 * 3600_000
    this.maxSessions = init.maxSessions ?? 64
    this.maxCodes = init.maxCodes ?? 32
    this.now = init.now ?? Date.now
  }

  get sessionTtlSec(): number {
    return Math.floor(this.sessionTtlMs / 1000)
  }

  tokenMatches(given: unknown): boolean {
    return typeof given === 'string' && given.length > 0 && timingSafeEqual(this.tokenDigest, sha(given))
  }

  /** A fresh one-time code, valid once within the code lifetime. */
  issueCode(): { code: string; expiresAt: number } {
    this.prune()
    const code = randomBytes(24).toString('base64url')
    const expiresAt = this.now() + this.codeTtlMs
    this.codes.set(sha(code).toString('hex'), expiresAt)
    while (this.codes.size > this.maxCodes) this.codes.delete(this.codes.keys().next().value as string)
    return { code, expiresAt }
  }

  /** Uses up `code`: a new session id if it was valid and unused, else undefined. */
  redeemCode(code: unknown): string | undefined {
    if (typeof code !== 'string' || code.length === 0 || code.length > 128) return undefined
    const key = sha(code).toString('hex')
    const expiresAt = this.codes.get(key)
    this.codes.delete(key)
    if (expiresAt === undefined || expiresAt < this.now()) return undefined
    return this.open()
  }

  /** A new session for a browser that showed the token (or a code). */
  open(): string {
    this.prune()
    const id = randomBytes(32).toString('base64url')
    this.sessions.set(sha(id).toString('hex'), this.now() + this.sessionTtlMs)
    while (this.sessions.size > this.maxSessions)
      this.sessions.delete(this.sessions.keys().next().value as string)
    return id
  }

  /** True for a live session; each use extends it and makes it the most recent. */
  check(id: string | undefined): boolean {
    if (!id || id.length > 128) return false
    const key = sha(id).toString('hex')
    const expiresAt = this.sessions.get(key)
    if (expiresAt === undefined) return false
    this.sessions.delete(key)
    if (expiresAt < this.now()) return false
    this.sessions.set(key, this.now() + this.sessionTtlMs)
    return true
  }

  close(id: string | undefined): void {
    if (id) this.sessions.delete(sha(id).toString('hex'))
  }

  /** The session id from a Cookie header, if it carries ours. */
  fromCookieHeader(header: string | undefined): string | undefined {
    if (!header) return undefined
    for (const part of header.split(';')) {
      const eq = part.indexOf('=')
      if (eq < 0) continue
      if (part.slice(0, eq).trim() === this.cookieName) return part.slice(eq + 1).trim()
    }
    return undefined
  }

  setCookie(id: string): string {
    return `${this.cookieName}=${id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${this.sessionTtlSec}`
  }

  clearCookie(): string {
    return `${this.cookieName}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`
  }

  counts(): { sessions: number; codes: number } {
    return { sessions: this.sessions.size, codes: this.codes.size }
  }

  private prune(): void {
    const now = this.now()
    for (const [k, exp] of this.codes) if (exp < now) this.codes.delete(k)
    for (const [k, exp] of this.sessions) if (exp < now) this.sessions.delete(k)
  }
}
