// QEMU's own TLS (GnuTLS) with a pre-shared key, so two QEMUs can move a migration stream straight
// to each other with no agent in the data path. A per-migration key lives in a private dir (0700,
// in the VM's directory, so an agent killed mid-migration leaves it only where the VM's own files
// are; keys.psk 0600, `identity:hexkey` as QEMU's tls-creds-psk reads it) only while the creds
// need it; the server side also gets fixed Diffie-Hellman parameters (RFC 7919 ffdhe2048, public
// constants), else QEMU would generate 2048-bit ones at creds creation (seconds of CPU).
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { QemuVm } from './qemu-vm.js'

const FFDHE2048 = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`

/** A usable identity: QEMU's keys.psk is `identity:hexkey` per line. */
const IDENTITY = /^[A-Za-z0-9_-]{1,64}$/

export interface QemuPskCreds {
  /** The QOM id of the tls-creds-psk object (for `tls-creds` parameters). */
  readonly id: string
  /** Removes the object (errors ignored) and deletes the key directory. */
  remove(): Promise<void>
}

/**
 * Adds a `tls-creds-psk` object to `vm` for `endpoint` with `key` under `identity`. The key file is
 * deleted at once on the client (QEMU reads it at creation) and by `remove()` on the server (GnuTLS
 * reads it at each handshake).
 */
export async function addPskCreds(
  vm: QemuVm,
  id: string,
  endpoint: 'client' | 'server',
  identity: string,
  key: Uint8Array,
): Promise<QemuPskCreds> {
  if (!IDENTITY.test(identity)) throw new Error(`bad PSK identity: ${JSON.stringify(identity)}`)
  if (key.length < 16) throw new Error('PSK shorter than 16 bytes')
  const dir = await mkdtemp(join(vm.paths.dir, 'psk-'))
  const drop = () => rm(dir, { recursive: true, force: true })
  try {
    await writeFile(join(dir, 'keys.psk'), `${identity}:${Buffer.from(key).toString('hex')}\n`, {
      mode: 0o600,
    })
    if (endpoint === 'server') await writeFile(join(dir, 'dh-params.pem'), FFDHE2048, { mode: 0o600 })
    // one left by a migration that failed (its removal refused): this one replaces it
    await vm.qmp.execute('object-del', { id }).catch(() => undefined)
    await vm.qmp.execute('object-add', {
      'qom-type': 'tls-creds-psk',
      id,
      endpoint,
      dir,
      ...(endpoint === 'client' ? { username: identity } : {}),
    })
  } catch (err) {
    await drop()
    throw err
  }
  if (endpoint === 'client') await drop()
  let removed = false
  return {
    id,
    async remove() {
      if (removed) return
      removed = true
      await drop()
      if (!vm.qmp.isClosed) await vm.qmp.execute('object-del', { id }).catch(() => undefined)
    },
  }
}
