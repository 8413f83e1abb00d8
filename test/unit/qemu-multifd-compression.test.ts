// multifd compression of QEMU migrations through the mesh (src/transfer/qemu/compression.ts): what
// the source asks for from the migration's `compression` option and SKYMESH_QEMU_MULTIFD_COMPRESSION,
// and what the destination accepts in an offer.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  checkMultifdCompression,
  DEFAULT_MULTIFD_COMPRESSION,
  ON_MULTIFD_COMPRESSION,
  parseMultifdCompression,
  sourceMultifdCompression,
} from '../../src/transfer/qemu/index.js'

describe('qemu multifd compression', () => {
  it('parses a method with an optional level', () => {
    assert.deepEqual(parseMultifdCompression('zstd'), { method: 'zstd', level: 0 })
    assert.deepEqual(parseMultifdCompression('zstd:3'), { method: 'zstd', level: 3 })
    assert.deepEqual(parseMultifdCompression('zlib:9'), { method: 'zlib', level: 9 })
    assert.deepEqual(parseMultifdCompression('none'), { method: 'none', level: 0 })
  })

  it('rejects unknown methods and levels out of range, naming the value', () => {
    assert.throws(() => parseMultifdCompression('lz4'), /"lz4"/)
    assert.throws(() => parseMultifdCompression('zstd:21'), /zstd level 21/)
    assert.throws(() => parseMultifdCompression('zlib:10'), /zlib level 10/)
    assert.throws(() => parseMultifdCompression('none:1'), /none level 1/)
    assert.throws(() => parseMultifdCompression('zstd:'), /zstd:/)
  })

  it("the destination's check: '' is none, bad method or level is refused", () => {
    assert.equal(checkMultifdCompression('', 0), undefined)
    assert.equal(checkMultifdCompression('zstd', 1), undefined)
    assert.equal(checkMultifdCompression('zlib', 0), undefined)
    assert.match(checkMultifdCompression('brotli', 0) ?? '', /brotli/)
    assert.match(checkMultifdCompression('zstd', 25) ?? '', /1\.\.20/)
  })

  it("the source: 'off' is none; 'on'/'auto' take the env override, else zstd level 1 / none", () => {
    assert.deepEqual(sourceMultifdCompression('auto', {}), { method: 'none', level: 0 })
    assert.deepEqual(DEFAULT_MULTIFD_COMPRESSION, { method: 'none', level: 0 })
    assert.deepEqual(sourceMultifdCompression('on', {}), { method: 'zstd', level: 1 })
    assert.deepEqual(ON_MULTIFD_COMPRESSION, { method: 'zstd', level: 1 })
    assert.deepEqual(sourceMultifdCompression('off', { SKYMESH_QEMU_MULTIFD_COMPRESSION: 'zstd:5' }), {
      method: 'none',
      level: 0,
    })
    assert.deepEqual(sourceMultifdCompression('auto', { SKYMESH_QEMU_MULTIFD_COMPRESSION: 'zlib:2' }), {
      method: 'zlib',
      level: 2,
    })
    assert.throws(
      () => sourceMultifdCompression('auto', { SKYMESH_QEMU_MULTIFD_COMPRESSION: 'fast' }),
      /"fast"/,
    )
  })
})
