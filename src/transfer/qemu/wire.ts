// Protocol ids and messages of QEMU migration through the mesh (proto/qemu-migrate.proto).
import type { Stream } from '@libp2p/interface'
import { pb } from '../../proto/index.js'
import { LinkError, ProtocolError } from '../errors.js'
import { Framed } from '../wire.js'

export const QEMU_CONTROL_PROTOCOL = '/skymesh/qemu-migrate/1.0.0'
export const QEMU_TUNNEL_PROTOCOL = '/skymesh/qemu-migrate/tunnel/1.0.0'
export const MAX_QEMU_CONTROL_BYTES = 64 * 1024
/** Tunnel streams per migration: the migration channel, up to 16 multifd channels, NBD connections. */
export const MAX_TUNNELS = 32

export type QemuControl = InstanceType<typeof pb.QemuMigrateControl>
export type QemuControlKind = NonNullable<QemuControl['msg']>
type QemuControlInit = Parameters<typeof pb.QemuMigrateControl.encode>[0]

/** The control stream: QemuMigrateControl messages. */
export class QemuControlChannel {
  readonly framed: Framed
  constructor(stream: Stream) {
    this.framed = new Framed(stream, MAX_QEMU_CONTROL_BYTES)
  }

  async send(msg: QemuControlInit, signal?: AbortSignal): Promise<void> {
    await this.framed.write(pb.QemuMigrateControl.encode(msg).finish(), signal)
  }

  /** The next message, which must be one of `kinds` (an abort from the peer is a LinkError). */
  async expect<K extends QemuControlKind>(
    kinds: readonly K[],
    signal?: AbortSignal,
  ): Promise<QemuControl & { msg: K }> {
    const bytes = await this.framed.read(signal)
    if (bytes === null) throw new LinkError('the control stream ended')
    let m: QemuControl
    try {
      m = pb.QemuMigrateControl.decode(bytes)
    } catch (err) {
      throw new ProtocolError(`undecodable control message: ${(err as Error).message}`)
    }
    if (m.msg === 'abort') {
      throw new LinkError(`the peer aborted: ${m.abort?.code ?? ''} ${m.abort?.message ?? ''}`.trim())
    }
    if (!m.msg || !(kinds as readonly string[]).includes(m.msg)) {
      throw new ProtocolError(`expected ${kinds.join('|')}, got ${m.msg ?? 'an empty message'}`)
    }
    return m as QemuControl & { msg: K }
  }
}
