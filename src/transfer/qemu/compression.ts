// multifd compression of QEMU migrations through the mesh: what the source asks for, what the
// destination accepts. Both QEMUs must use the same method (QEMU checks nothing: a mismatch breaks
// the stream), so it travels in the offer.
//
// QEMU 7.2's TLS channel writes one GnuTLS record (and one socket write) per iovec element, i.e.
// per 4 KiB page of an uncompressed multifd packet; a zstd-compressed packet is one buffer, sent in
// 16 KiB records, and smaller. Measured (bench:qemu, README): on loopback with 2 shared cores zstd
// level 1 cut the total time by 8-15 % but its downtime was higher (0.2-0.3 s against 0.15-0.2 s,
// once above a 300 ms limit: QEMU's estimate of the last pass is off while the CPUs compress), so
// `auto` keeps multifd plain; `on` takes zstd level 1 (links slower than the codec gain most).
import type { MultifdCompression } from '../../vm/qemu/index.js'

export interface QemuMultifdCompression {
  method: MultifdCompression
  /** 0 = QEMU's default (1). */
  level: number
}

const MAX_LEVEL: Record<MultifdCompression, number> = { none: 0, zlib: 9, zstd: 20 }

/** The source's choice for `compression: 'auto'` (the default) with multifd. */
export const DEFAULT_MULTIFD_COMPRESSION: QemuMultifdCompression = { method: 'none', level: 0 }
/** ... and for `compression: 'on'`. SKYMESH_QEMU_MULTIFD_COMPRESSION overrides both. */
export const ON_MULTIFD_COMPRESSION: QemuMultifdCompression = { method: 'zstd', level: 1 }

/**
 * `none`, `zstd`, `zstd:LEVEL`, `zlib`, `zlib:LEVEL` -> the compression; anything else is an error
 * that names the value (bad input changes nothing).
 */
export function parseMultifdCompression(text: string): QemuMultifdCompression {
  const m = /^(none|zlib|zstd)(?::(\d{1,2}))?$/.exec(text.trim())
  if (!m)
    throw new Error(`multifd compression ${JSON.stringify(text)}: expected none, zlib[:1-9] or zstd[:1-20]`)
  const method = m[1] as MultifdCompression
  const level = m[2] === undefined ? 0 : Number(m[2])
  const err = checkMultifdCompression(method, level)
  if (err) throw new Error(err)
  return { method, level }
}

/** Why (method, level) is not acceptable, or undefined when it is ('' is none). */
export function checkMultifdCompression(method: string, level: number): string | undefined {
  const max = MAX_LEVEL[(method || 'none') as MultifdCompression]
  if (max === undefined) return `multifd compression ${JSON.stringify(method)}: expected none, zlib or zstd`
  if (level !== 0 && (level < 1 || level > max))
    return `multifd ${method} level ${level}: expected ${max ? `1..${max}` : 'none'}`
  return undefined
}

/**
 * The source's choice for a multifd migration, from the migration's `compression` option (the same
 * option as synthetic migrations): 'off' -> none; 'on' and 'auto' -> SKYMESH_QEMU_MULTIFD_COMPRESSION
 * when set (e.g. `zstd:3`, `zlib`, `none`), else zstd level 1 ('on') or none ('auto').
 */
export function sourceMultifdCompression(
  choice: 'auto' | 'on' | 'off',
  env: NodeJS.ProcessEnv = process.env,
): QemuMultifdCompression {
  if (choice === 'off') return { method: 'none', level: 0 }
  const v = env.SKYMESH_QEMU_MULTIFD_COMPRESSION
  if (v) return parseMultifdCompression(v)
  return choice === 'on' ? ON_MULTIFD_COMPRESSION : DEFAULT_MULTIFD_COMPRESSION
}

/** QemuMigrateOptions fields for it (level only when set). */
export function multifdCompressionOptions(c: QemuMultifdCompression): {
  multifdCompression: MultifdCompression
  multifdLevel?: number
} {
  return { multifdCompression: c.method, ...(c.level ? { multifdLevel: c.level } : {}) }
}
