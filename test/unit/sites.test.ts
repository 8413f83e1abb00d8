// Site measurements: what a host reports about itself, how a peer's report is decoded (bounded,
// malformed input gives nothing), the mesh-wide view; and the `nat:`/`relay:` config sections.
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { loadConfig } from '../../src/node/config.js'
import type { ConfigError } from '../../src/node/errors.js'
import { buildSitesView, decodeSiteLinks, MAX_LINKS, SiteMeter } from '../../src/node/sites.js'
import { pb } from '../../src/proto/index.js'

const SITES: Record<string, string> = { a1: 'a', a2: 'a', b1: 'b', b2: 'b', c1: 'c' }

describe('site measurements', () => {
  it('reports the median round trip per site and the migration bandwidth, and round-trips the wire', () => {
    const meter = new SiteMeter({
      siteOf: (p) => SITES[p],
      rtts: () =>
        [
          ['a2', 0.5],
          ['b1', 40],
          ['b2', 44],
          ['zz', 3], // unknown site: ignored
        ] as [string, number][],
    })
    meter.recordBandwidth('b1', 10)
    meter.recordBandwidth('b2', 20)
    meter.recordBandwidth('c1', Number.NaN) // ignored
    const report = meter.report()
    assert.deepEqual(
      report.map((l) => l.site),
      ['a', 'b'],
    )
    const b = report.find((l) => l.site === 'b')!
    assert.equal(b.rttMs, 42)
    assert.equal(b.rttSamples, 2)
    assert.equal(b.bandwidthSamples, 2)
    assert.ok(b.bandwidthMiBps! > 10 && b.bandwidthMiBps! < 20)
    const decoded = decodeSiteLinks(meter.encode())
    assert.equal(decoded.length, 2)
    assert.equal(decoded[1]!.rttMs, 42)
    assert.ok(Math.abs(decoded[1]!.bandwidthMiBps! - b.bandwidthMiBps!) < 0.01)
  })

  it('decodes garbage, oversized or bad-site reports to nothing and caps the entries', () => {
    assert.deepEqual(decodeSiteLinks(new Uint8Array([0xff, 0xff, 0xff])), [])
    assert.deepEqual(decodeSiteLinks(new Uint8Array(9000)), [])
    const bad = pb.SiteLinks.encode({ links: [{ site: '../etc', rttUs: 5 }] }).finish()
    assert.deepEqual(decodeSiteLinks(bad), [])
    const many = pb.SiteLinks.encode({
      links: Array.from({ length: 100 }, (_, i) => ({ site: `s${i}`, rttUs: 1000 })),
    }).finish()
    assert.equal(decodeSiteLinks(many).length, MAX_LINKS)
  })

  it("builds the view from each host's own report, per directed site pair", () => {
    const view = buildSitesView({ peerId: 'a1', site: 'a' }, [
      {
        peerId: 'a1',
        site: 'a',
        alive: true,
        links: [{ site: 'b', rttMs: 40, rttSamples: 2, bandwidthSamples: 0 }],
      },
      {
        peerId: 'a2',
        site: 'a',
        alive: false,
        links: [{ site: 'b', rttMs: 50, rttSamples: 2, bandwidthMiBps: 8, bandwidthSamples: 1 }],
      },
      {
        peerId: 'b1',
        site: 'b',
        alive: true,
        links: [{ site: 'a', rttMs: 41, rttSamples: 1, bandwidthSamples: 0 }],
      },
    ])
    assert.deepEqual(view.sites, [
      { name: 'a', hosts: ['a1', 'a2'], alive: 1 },
      { name: 'b', hosts: ['b1'], alive: 1 },
    ])
    assert.deepEqual(view.links, [
      { from: 'a', to: 'b', rttMs: 45, bandwidthMiBps: 8, reporters: 2 },
      { from: 'b', to: 'a', rttMs: 41, bandwidthMiBps: undefined, reporters: 1 },
    ])
  })
})

describe("a host cannot speak for another's measurements", () => {
  it('a report carries no sender: it counts for the (signed) reporter and its own site only', () => {
    // b1 reports figures towards a: they are b -> a, never a -> b, and never another host's.
    const view = buildSitesView({ peerId: 'a1', site: 'a' }, [
      {
        peerId: 'a1',
        site: 'a',
        alive: true,
        links: [{ site: 'b', rttMs: 40, rttSamples: 1, bandwidthSamples: 0 }],
      },
      {
        peerId: 'b1',
        site: 'b',
        alive: true,
        links: [
          { site: 'a', rttMs: 1, rttSamples: 1, bandwidthMiBps: 9999, bandwidthSamples: 1 },
          { site: 'b', rttMs: 2, rttSamples: 1, bandwidthSamples: 0 },
        ],
      },
    ])
    assert.deepEqual(
      view.links.find((l) => l.from === 'a' && l.to === 'b'),
      { from: 'a', to: 'b', rttMs: 40, bandwidthMiBps: undefined, reporters: 1 },
    )
    assert.equal(view.links.find((l) => l.from === 'b' && l.to === 'a')?.reporters, 1)
  })
})

describe('nat and relay config', () => {
  const withFile = async (text: string, fn: (file: string) => void) => {
    const dir = await mkdtemp(join(tmpdir(), 'skymesh-natcfg-'))
    try {
      const file = join(dir, 'agent.yaml')
      await writeFile(file, text)
      fn(file)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }

  it('defaults: reachability auto, AutoNAT and hole punching on, no relay service', () => {
    const c = loadConfig({ dataDir: '/tmp/x' }, {})
    assert.equal(c.nat.reachability, 'auto')
    assert.equal(c.nat.autonat, true)
    assert.equal(c.nat.holePunching, true)
    assert.equal(c.relay.enabled, false)
    assert.ok(c.relay.dataLimitMiB > 0 && c.relay.durationLimitSec > 0)
  })

  it('`relay: true` and a `relay:` section enable the relay', async () => {
    await withFile('relay: true\n', (f) =>
      assert.equal(loadConfig({ dataDir: '/tmp/x', config: f }, {}).relay.enabled, true),
    )
    await withFile('relay:\n  dataLimitMiB: 64\n', (f) => {
      const c = loadConfig({ dataDir: '/tmp/x', config: f }, {})
      assert.equal(c.relay.enabled, true)
      assert.equal(c.relay.dataLimitMiB, 64)
    })
  })

  it('bad values are named by their key', async () => {
    await withFile('nat:\n  reachability: maybe\n', (f) =>
      assert.throws(
        () => loadConfig({ dataDir: '/tmp/x', config: f }, {}),
        (e: ConfigError) => /nat\.reachability: unknown reachability "maybe"/.test(e.message),
      ),
    )
    await withFile('relay:\n  durationLimitSec: 1\n', (f) =>
      assert.throws(() => loadConfig({ dataDir: '/tmp/x', config: f }, {}), /relay/),
    )
  })
})
