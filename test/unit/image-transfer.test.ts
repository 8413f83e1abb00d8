// A pull's lanes over fake sources (the real store, Pull and client loop; a fake channel per source):
// several holders serve one pull in parallel, a chunk with a bad hash is refused and fetched from
// another holder, a pipeline pull keeps to its first source, and a cut pull resumes with what it has.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import pino from 'pino'
import { fetchLane } from '../../src/images/fetch.js'
import { ImageStore } from '../../src/images/index.js'
import { type ChunkQueue, Pull } from '../../src/images/pull.js'
import type { ImageChannel, ImageRequestProps, ImageResponseProps } from '../../src/images/wire.js'

const CHUNK = 64 * 1024
const CHUNKS = 24
let dir: string
let image: Buffer
let source: ImageStore
let id: string
const logger = pino({ level: 'silent' })

before(async () => {
  dir = await mkdtemp(join(os.tmpdir(), 'skymesh-image-transfer-'))
  image = randomBytes(CHUNK * CHUNKS - 1000)
  const path = join(dir, 'image.img')
  await writeFile(path, image)
  source = await ImageStore.open(join(dir, 'source'))
  id = (await source.addFile(path, { name: 'img', chunkSize: CHUNK })).id
})
after(async () => {
  await rm(dir, { recursive: true, force: true })
})

interface FakePeer {
  served: number
  /** Chunk indices this peer sends corrupted. */
  corrupt?: Set<number>
  /** The peer's link breaks after this many chunks. */
  breakAfter?: number
}

/** A channel to a fake server that serves chunks from the source store, in request order. */
function fakeChannel(peer: FakePeer): ImageChannel {
  const out: (ImageResponseProps | Error)[] = []
  let wake: (() => void) | undefined
  const push = (r: ImageResponseProps | Error) => {
    out.push(r)
    wake?.()
  }
  const serve = async (indices: number[]) => {
    // A little later, as over a link: lanes on other peers interleave.
    await new Promise((r) => setTimeout(r, 2))
    for (const i of indices) {
      if (peer.breakAfter !== undefined && peer.served >= peer.breakAfter) {
        push(new Error('link broken'))
        return
      }
      const data = Buffer.from(await source.readChunk(id, i))
      if (peer.corrupt?.has(i)) data[0] = data[0]! ^ 0xff
      peer.served++
      push({ chunk: { index: i, data } })
    }
    push({ done: true })
  }
  // Requests are served one after the other, in order, as a real server does.
  let serving = Promise.resolve()
  const ch = {
    direct: false,
    async sendRequest(req: ImageRequestProps) {
      const indices = req.chunks?.indices ?? []
      serving = serving.then(() => serve(indices))
    },
    async readResponse() {
      while (out.length === 0) await new Promise<void>((r) => (wake = r))
      const r = out.shift()!
      if (r instanceof Error) throw r
      return r
    },
    async close() {},
    abort() {},
  }
  return ch as unknown as ImageChannel
}

async function target(name: string): Promise<ImageStore> {
  const store = await ImageStore.open(join(dir, name))
  await store.register(id, source.encodedManifest(id))
  return store
}

function pull(
  store: ImageStore,
  peers: Record<string, FakePeer>,
  opts: { sources?: string[]; holders?: string[]; rounds?: number } = {},
): Pull {
  return new Pull({
    id,
    store,
    logger,
    sources: opts.sources ?? [],
    holders: () => opts.holders ?? [],
    fetch: (peer: string, queue: ChunkQueue, signal: AbortSignal) =>
      fetchLane(fakeChannel(peers[peer]!), { store, id, peer, queue, waitMs: 1000, signal }),
    signal: new AbortController().signal,
    rounds: opts.rounds,
    retryDelayMs: 10,
  })
}

describe('image transfer: pull lanes', () => {
  it('takes chunks from several holders at once and assembles a verified image', async () => {
    const store = await target('parallel')
    const peers = { a: { served: 0 }, b: { served: 0 }, c: { served: 0 } }
    const p = pull(store, peers, { holders: ['a', 'b', 'c'] })
    await p.done
    assert.equal(p.state, 'done')
    assert.ok(store.isComplete(id))
    assert.deepEqual(await store.verify(id), [])
    assert.ok(peers.a.served > 0 && peers.b.served > 0 && peers.c.served > 0, JSON.stringify(peers))
    assert.equal(peers.a.served + peers.b.served + peers.c.served, CHUNKS)
    assert.ok((await store.readChunk(id, 5)).equals(image.subarray(5 * CHUNK, 6 * CHUNK)))
  })

  it('refuses a chunk whose hash does not match and fetches it from another holder', async () => {
    const store = await target('bad')
    // The liar corrupts every chunk: whichever it sends first is refused, and it is asked no more.
    const all = new Set(Array.from({ length: CHUNKS }, (_, i) => i))
    const peers = { liar: { served: 0, corrupt: all }, good: { served: 0 } }
    const p = pull(store, peers, { holders: ['liar', 'good'] })
    await p.done
    assert.equal(p.state, 'done')
    assert.equal(p.badChunks, 1)
    assert.ok(peers.liar.served >= 1)
    assert.deepEqual(await store.verify(id), [])
    assert.ok((await store.readChunk(id, 0)).equals(image.subarray(0, CHUNK)))
  })

  it('keeps a pipeline pull to its first source while it works', async () => {
    const store = await target('pipeline')
    const peers = { parent: { served: 0 }, grandparent: { served: 0 }, holder: { served: 0 } }
    const p = pull(store, peers, { sources: ['parent', 'grandparent'], holders: ['holder'] })
    await p.done
    assert.equal(p.state, 'done')
    assert.deepEqual([peers.parent.served, peers.grandparent.served, peers.holder.served], [CHUNKS, 0, 0])
  })

  it('resumes a cut pull from the chunks it kept', async () => {
    const store = await target('resume')
    const cut = pull(store, { flaky: { served: 0, breakAfter: 10 } }, { holders: ['flaky'], rounds: 1 })
    await cut.done
    assert.equal(cut.state, 'failed')
    const kept = store.get(id)!.have
    assert.ok(kept >= 8 && kept <= 10, `kept ${kept}`)
    const peers = { good: { served: 0 } }
    const again = pull(store, peers, { holders: ['good'] })
    await again.done
    assert.equal(again.state, 'done')
    assert.equal(peers.good.served, CHUNKS - kept)
    assert.deepEqual(await store.verify(id), [])
  })
})
