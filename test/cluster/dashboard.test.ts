// The web dashboard in a real browser (Debian's chromium, driven by playwright-core) against three real
// agents: it asks for the token, shows every host and VM, runs a migration started from the page to
// its end with a moving progress bar, and shows a killed agent dead. Hostile names (from an in-process
// API server, since the real API refuses them) render as text. Screenshots go to .tmp/screenshots.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import pino from 'pino'
import type { Browser, BrowserContext, Page } from 'playwright-core'
import { Registry } from 'prom-client'
import { createApiServer } from '../../src/node/api/index.js'
import type { AgentService, ClusterVm } from '../../src/node/types.js'
import { launchChromium, screenshotDir } from '../browser/chromium.js'
import {
  type RunningAgent,
  removeDir,
  runCli,
  sleep,
  startAgent,
  tempDir,
  waitFor,
} from '../helpers/agent-process.js'

let dir: string
let a: RunningAgent
let b: RunningAgent
let c: RunningAgent
let browser: Browser
const shots = screenshotDir()

before(async () => {
  dir = await tempDir('skymesh-dashboard-')
  const config = join(dir, 'agent.yaml')
  await writeFile(config, 'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 150\n  suspicionMult: 3\n')
  const args = ['--config', config, '--log-level', 'info']
  a = await startAgent({ dataDir: join(dir, 'a'), site: 'site-a', args })
  b = await startAgent({ dataDir: join(dir, 'b'), site: 'site-a', args, bootstrap: [a.addrs[0]!] })
  c = await startAgent({ dataDir: join(dir, 'c'), site: 'site-b', args, bootstrap: [a.addrs[0]!] })
  await waitFor(
    'the mesh to form',
    async () => (await a.request('GET', '/v1/cluster')).body.counts.alive === 3,
  )
  const vm = (agent: RunningAgent, body: object) =>
    agent.request('POST', '/v1/vms', body).then((r) => assert.equal(r.status, 201, JSON.stringify(r.body)))
  // The one that moves writes 32 MiB/s into a 64 MiB hot set: its pages are not zero, so they take time.
  await vm(a, {
    name: 'mover',
    vcpus: 1,
    memoryMiB: 128,
    diskMiB: 32,
    workload: { dirtyMiBps: 32, hotSetMiB: 64 },
  })
  await vm(a, { name: 'web-a', vcpus: 1, memoryMiB: 32, diskMiB: 32 })
  await vm(b, { name: 'web-b', vcpus: 1, memoryMiB: 32, diskMiB: 32 })
  await vm(c, { name: 'db-c', vcpus: 1, memoryMiB: 32, diskMiB: 32 })
  await waitFor(
    'every VM in gossip',
    async () => (await a.request('GET', '/v1/cluster/vms')).body.vms.length === 4,
  )
  browser = await launchChromium()
})

after(async () => {
  await browser?.close()
  await Promise.all([a, b, c].filter(Boolean).map((x) => x.stop()))
  await removeDir(dir)
})

async function signIn(ctx: BrowserContext, agent: RunningAgent): Promise<Page> {
  const page = await ctx.newPage()
  await page.goto(`${agent.api}/dashboard/login`)
  await page.fill('#token', agent.token)
  await page.click('button[type=submit]')
  await page.waitForURL(`${agent.api}/dashboard/`)
  await page.waitForSelector('[data-testid=live]:text-is("live")')
  return page
}

describe('web dashboard in chromium against real agents', () => {
  let ctx: BrowserContext
  let page: Page

  it('asks for the token: no page or stream without it, a wrong one is refused', async () => {
    const anon = await browser.newContext()
    try {
      const p = await anon.newPage()
      await p.goto(`${a.api}/dashboard/`)
      assert.equal(p.url(), `${a.api}/dashboard/login`)
      assert.equal((await anon.request.get(`${a.api}/dashboard/events`)).status(), 401)
      assert.equal((await anon.request.get(`${a.api}/dashboard/static/app.js`)).status(), 401)
      await p.fill('#token', 'not-the-token')
      await p.click('button[type=submit]')
      await p.waitForSelector('#message:not(:empty)')
      assert.equal(p.url(), `${a.api}/dashboard/login`)
      await p.screenshot({ path: join(shots, 'dashboard-login.png') })
    } finally {
      await anon.close()
    }
    ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } })
    page = await signIn(ctx, a)
  })

  it('`skymesh dashboard` prints a one-time URL that signs a browser in once', async () => {
    const r = await runCli(['dashboard', '--data-dir', a.dataDir])
    assert.equal(r.code, 0, r.stderr)
    const url = r.stdout.split('\n')[0]!
    assert.match(url, /\/dashboard\/login\?code=/)
    const other = await browser.newContext()
    try {
      const p = await other.newPage()
      await p.goto(url)
      assert.equal(p.url(), `${a.api}/dashboard/`)
      await p.waitForSelector('[data-testid=live]:text-is("live")')
      const again = await (await browser.newContext()).newPage()
      await again.goto(url)
      assert.match(again.url(), /\/dashboard\/login\?expired=1$/)
      await again.context().close()
    } finally {
      await other.close()
    }
  })

  it('shows every host, by site, and every VM', async () => {
    await page.waitForFunction("document.querySelectorAll('[data-testid=host]').length === 3")
    for (const agent of [a, b, c]) {
      const status = await page.getAttribute(`[data-peer="${agent.peerId}"]`, 'data-status')
      assert.equal(status, 'alive')
    }
    assert.deepEqual((await page.locator('.site-name').allTextContents()).sort(), ['site-a', 'site-b'])
    // counts read as words: "2 hosts" for site-a, "1 host" (not "1 hosts") for site-b
    assert.deepEqual((await page.locator('.site-count').allTextContents()).sort(), ['1 host', '2 hosts'])
    await page.waitForFunction("document.querySelectorAll('[data-testid=host-vm]').length === 4")
    await page.screenshot({ path: join(shots, 'dashboard-mesh.png') })
    await page.click('[data-testid=tab-vms]')
    await page.waitForFunction("document.querySelectorAll('[data-testid=vm-row]').length === 4")
    assert.deepEqual((await page.locator('[data-testid=vm-name]').allTextContents()).sort(), [
      'db-c',
      'mover',
      'web-a',
      'web-b',
    ])
    await page.fill('[data-testid=vm-search]', 'web')
    await page.waitForFunction("document.querySelectorAll('[data-testid=vm-row]').length === 2")
    await page.fill('[data-testid=vm-search]', '')
    await page.screenshot({ path: join(shots, 'dashboard-vms.png') })
  })

  it('runs a migration started from the page to its end; its progress bar moves', async () => {
    const row = page.locator('[data-testid=vm-row]', { hasText: 'mover' })
    await row.locator('[data-testid=migrate]').click()
    await page.selectOption('[data-testid=migrate-target]', b.peerId)
    await page.fill('[data-testid=migrate-bandwidth]', '24')
    await page.click('[data-testid=confirm]')
    await page.waitForSelector('[data-testid=tab-migrations].active')
    const seen = new Set<number>()
    let shot = false
    await waitFor(
      'the migration to finish on the page',
      async () => {
        const values = await page
          .locator('[data-testid=migration-bar]')
          .evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-value'))))
        for (const v of values) if (v > 0 && v < 1) seen.add(v)
        if (!shot && values.some((v) => v > 0.05)) {
          shot = true
          await page.screenshot({ path: join(shots, 'dashboard-migration.png') })
        }
        return (await page.locator('[data-testid=finished-migration][data-phase=done]').count()) === 1
      },
      90_000,
    )
    assert.ok(seen.size >= 2, `the bar showed ${[...seen].join(', ')}`)
    await waitFor(
      'the mesh to see it on b',
      async () => (await a.request('GET', '/v1/cluster/vms/mover')).body.host === b.peerId,
    )
    await page.screenshot({ path: join(shots, 'dashboard-migrations.png') })
  })

  it('shows placement: a dry-run plan and the active-hosts chart', async () => {
    await page.click('[data-testid=tab-placement]')
    await page.click('[data-testid=plan]')
    await page.waitForSelector('[data-testid=plan-result]')
    await page.waitForSelector('figure[data-testid=chart] svg', { timeout: 20_000 })
    await page.screenshot({ path: join(shots, 'dashboard-placement.png') })
  })

  it('creates a VM from the page (a bad name gets the API’s message, as text) and removes it', async () => {
    await page.click('[data-testid=tab-vms]')
    await page.click('[data-testid=create-vm]')
    await page.fill('[data-testid=vm-form-name]', '<img src=x onerror="window.__pwned=1">')
    await page.click('[data-testid=confirm]')
    await page.waitForSelector('[data-testid=dialog] .error:not(:empty)')
    assert.match((await page.locator('[data-testid=dialog] .error').textContent()) ?? '', /name/)
    assert.equal(await page.evaluate('window.__pwned'), undefined)
    await page.fill('[data-testid=vm-form-name]', 'fresh-1')
    await page.click('[data-testid=confirm]')
    await page.waitForSelector('[data-testid=dialog]', { state: 'detached' })
    const row = page.locator('[data-testid=vm-row]', { hasText: 'fresh-1' })
    await row.waitFor()
    assert.equal(
      (await a.request('GET', '/v1/vms')).body.vms.filter((v: { name: string }) => v.name === 'fresh-1')
        .length,
      1,
    )
    await row.locator('[data-testid=remove]').click()
    await page.click('[data-testid=confirm]')
    await row.waitFor({ state: 'detached', timeout: 15_000 })
    assert.equal(
      (await a.request('GET', '/v1/vms')).body.vms.some((v: { name: string }) => v.name === 'fresh-1'),
      false,
    )
  })

  it('shows a killed agent dead', async () => {
    await page.click('[data-testid=tab-mesh]')
    const t0 = Date.now()
    await c.kill9()
    await page.waitForSelector(`[data-peer="${c.peerId}"][data-status=dead]`, { timeout: 30_000 })
    const ms = Date.now() - t0
    await page.screenshot({ path: join(shots, 'dashboard-dead.png') })
    // the README's picture (docs/dashboard.png): the mesh view without the empty space below
    await page.screenshot({
      path: join(shots, 'dashboard-readme.png'),
      clip: { x: 0, y: 0, width: 1280, height: 560 },
    })
    process.stdout.write(`# dashboard showed the killed agent dead after ${ms} ms\n`)
    await ctx.close()
  })
})

describe('web dashboard: hostile names render as text', () => {
  it('a VM named <script> and a site named <b> are text, nothing runs', async () => {
    const names = ['<script>window.__pwned=1</script>', '<img src=x onerror="window.__pwned=2">']
    const self = '12D3KooWHostileHostileHostileHostileHostileHost'
    const vms: ClusterVm[] = names.map((name, i) => ({
      id: `vm-${i}`,
      name,
      host: self,
      epoch: 1,
      status: 'ok',
      state: 'running',
      vcpus: 1,
      memoryMiB: 64,
      diskMiB: 64,
      cpu: 0,
      dirtyMiBps: 0,
    }))
    const cap = { vcpus: 2, memoryMiB: 1024, diskMiB: 1024 }
    const agent = {
      metrics: new Registry(),
      nodeInfo: () => ({
        peerId: self,
        addrs: [],
        version: 'test',
        site: '<b>bold</b>',
        driver: 'synthetic',
        startedAt: new Date().toISOString(),
        capacity: cap,
        used: cap,
        vmCount: 2,
      }),
      cluster: () => ({
        self,
        hosts: [
          {
            peerId: self,
            self: true,
            status: 'alive',
            site: '<b>bold</b>',
            addrs: [],
            capacity: cap,
            used: cap,
            cpuLoad: 1,
            vmCount: 2,
          },
        ],
        counts: { alive: 1, suspect: 0, dead: 0, left: 0 },
      }),
      clusterVms: () => vms,
      listVms: () => [],
      listMigrations: () => [],
    }
    const token = 'hostile-test-token-0123456789'
    const api = createApiServer({
      agent: agent as unknown as AgentService,
      token,
      logger: pino({ level: 'silent' }),
      port: 0,
    })
    const base = await api.listen()
    const ctx = await browser.newContext()
    try {
      const page = await ctx.newPage()
      await page.goto(`${base}/dashboard/login`)
      await page.fill('#token', token)
      await page.click('button[type=submit]')
      await page.waitForSelector('[data-testid=host-vm]')
      assert.deepEqual((await page.locator('.host-vms .vm-name').allTextContents()).sort(), [...names].sort())
      assert.equal(await page.locator('.site-name').textContent(), '<b>bold</b>')
      await page.click('[data-testid=tab-vms]')
      await page.waitForSelector('[data-testid=vm-row]')
      assert.deepEqual(
        (await page.locator('[data-testid=vm-name]').allTextContents()).sort(),
        [...names].sort(),
      )
      await sleep(300)
      assert.equal(await page.evaluate('window.__pwned'), undefined)
      assert.equal(await page.locator('#app img, #app b, #app script').count(), 0)
    } finally {
      await ctx.close()
      await api.close()
    }
  })
})
