// Loads skymesh's optional native AES-GCM addon (native/gcm.c, built by scripts/build-native.mjs).
//
// The addon seals and opens the data channel's records with the OpenSSL node itself links, writing
// into buffers the caller owns, where node's Cipher.update allocates, zero-fills and copies every
// output. Without it (no compiler where skymesh was built, or SKYMESH_NATIVE_GCM=off) the channel
// uses node:crypto: the same cipher and the same bytes on the wire, so either end may have it or not.
import { createCipheriv } from 'node:crypto'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

/** The addon's functions (a context per key and direction; one record at a time per context). */
export interface NativeGcm {
  create(key: Uint8Array, encrypt: boolean): NativeGcmContext
  /** Starts a record: its 12-byte IV and its additional authenticated data. */
  begin(ctx: NativeGcmContext, iv: Uint8Array, aad: Uint8Array): void
  /** Encrypts or decrypts `input` into `output` (at least as long; it may be `input` itself). */
  update(ctx: NativeGcmContext, input: Uint8Array, output: Uint8Array): void
  /** Ends an encrypted record: its 16-byte tag is written into `tag`. */
  seal(ctx: NativeGcmContext, tag: Uint8Array): void
  /** Ends a decrypted record: whether `tag` authenticates it. */
  open(ctx: NativeGcmContext, tag: Uint8Array): boolean
}

/** An OpenSSL cipher context, freed when garbage collected. */
export type NativeGcmContext = { readonly __nativeGcm: unique symbol }

/** Where the build puts the addon (dist/src/transfer -> the package's root). */
export const NATIVE_GCM_PATH = fileURLToPath(
  new URL('../../../native/build/Release/gcm.node', import.meta.url),
)

export type NativeGcmState = { loaded: true; gcm: NativeGcm } | { loaded: false; reason: string }

let state: NativeGcmState | undefined

/** The addon, or why it is not used (loaded once per process; `SKYMESH_NATIVE_GCM=off` turns it off). */
export function nativeGcmState(env: NodeJS.ProcessEnv = process.env): NativeGcmState {
  if (state) return state
  state = loadNativeGcm(env)
  return state
}

/** The addon if this process uses it, else null. */
export function nativeGcm(): NativeGcm | null {
  const s = nativeGcmState()
  return s.loaded ? s.gcm : null
}

/** Loads the addon at `path` (tests pass another), checked against node:crypto before it is used. */
export function loadNativeGcm(env: NodeJS.ProcessEnv, path = NATIVE_GCM_PATH): NativeGcmState {
  if (env.SKYMESH_NATIVE_GCM === 'off') return { loaded: false, reason: 'SKYMESH_NATIVE_GCM=off' }
  if (!existsSync(path))
    return { loaded: false, reason: `not built (${path} is missing: npm run build:native)` }
  try {
    const gcm = createRequire(import.meta.url)(path) as NativeGcm
    if (typeof gcm.create !== 'function' || typeof gcm.open !== 'function')
      return { loaded: false, reason: `${path} is not skymesh's gcm addon` }
    if (!agreesWithNode(gcm))
      return { loaded: false, reason: `${path} seals differently from node:crypto (a broken build?)` }
    return { loaded: true, gcm }
  } catch (err) {
    return { loaded: false, reason: `could not load ${path}: ${(err as Error).message}` }
  }
}

/** A known-answer check at load: one record sealed and opened by the addon, against node:crypto. */
function agreesWithNode(gcm: NativeGcm): boolean {
  const key = Buffer.alloc(16, 7)
  const iv = Buffer.alloc(12, 3)
  const aad = Buffer.from([0, 0, 0, 77])
  const plain = Buffer.alloc(77)
  for (let i = 0; i < plain.length; i++) plain[i] = i * 13
  const c = createCipheriv('aes-128-gcm', key, iv)
  c.setAAD(aad)
  const expected = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()])
  const ctx = gcm.create(key, true)
  const sealed = Buffer.alloc(77 + 16)
  gcm.begin(ctx, iv, aad)
  gcm.update(ctx, plain, sealed.subarray(0, 77))
  gcm.seal(ctx, sealed.subarray(77))
  if (!sealed.equals(expected)) return false
  const opener = gcm.create(key, false)
  const opened = Buffer.alloc(77)
  gcm.begin(opener, iv, aad)
  gcm.update(opener, sealed.subarray(0, 77), opened)
  return gcm.open(opener, sealed.subarray(77)) && opened.equals(plain)
}
