// docker-compose.yml for real: a mesh of agent containers (a seed and 2 scaled replicas) with the
// mesh key and API token as Docker secrets comes up healthy, converges, migrates a VM between
// containers, and is torn down with its volumes. Skipped, saying why, where Docker cannot run.
//
// The image is built from the Dockerfile (docker-compose build); where Docker Hub cannot be
// reached, scripts/docker-base-image.sh first builds the base image locally. SKYMESH_IMAGE=TAG
// uses an image built beforehand instead.
import assert from 'node:assert/strict'
import { execFile, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { removeDir, runCli, tempDir, waitFor } from '../helpers/agent-process.js'

const run = promisify(execFile)
const ROOT = fileURLToPath(new URL('../../', import.meta.url)).replace(/\/dist\/$/, '/')
const BASE_IMAGE = 'node:20-bookworm-slim'

function dockerUnavailable(): string | undefined {
  if (process.env.SKYMESH_SKIP_DOCKER) return 'SKYMESH_SKIP_DOCKER is set'
  const info = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8' })
  if (info.error) return 'the docker command is not installed (apt-get install docker.io docker-compose)'
  if (info.status !== 0)
    return `no Docker engine answers (${info.stderr.trim().split('\n')[0]}); start dockerd`
  const compose = spawnSync('docker-compose', ['version', '--short'], { encoding: 'utf8' })
  if (compose.error || compose.status !== 0) return 'docker-compose (v1) is not installed'
  if (!process.env.SKYMESH_IMAGE) {
    const base = spawnSync('docker', ['image', 'inspect', BASE_IMAGE], { encoding: 'utf8' })
    if (base.status !== 0 && process.getuid?.() !== 0) {
      return `the base image ${BASE_IMAGE} is missing and building it needs root`
    }
  }
  return undefined
}

const why = dockerUnavailable()
if (why) console.log(`# docker: not running the docker-compose test here: ${why}`)

describe('docker-compose mesh', { skip: why, timeout: 20 * 60_000 }, () => {
  const project = `skymeshtest${randomBytes(3).toString('hex')}`
  let dir: string
  let env: NodeJS.ProcessEnv
  let token: string
  const apis: string[] = []

  const compose = async (...args: string[]) =>
    (
      await run('docker-compose', ['-p', project, '-f', join(ROOT, 'docker-compose.yml'), ...args], {
        env,
        cwd: ROOT,
        maxBuffer: 64 * 1024 * 1024,
      })
    ).stdout

  const api = async (base: string, method: string, path: string, body?: unknown) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    return { status: res.status, body: (await res.json()) as any }
  }

  before(async () => {
    dir = await tempDir()
    const meshKey = join(dir, 'mesh.key')
    const made = await runCli(['mesh-key', meshKey])
    assert.equal(made.code, 0, made.stderr)
    token = randomBytes(24).toString('base64url')
    await writeFile(join(dir, 'api.token'), `${token}\n`, { mode: 0o600 })
    env = {
      ...process.env,
      SKYMESH_MESH_KEY: meshKey,
      SKYMESH_API_TOKEN: join(dir, 'api.token'),
      SKYMESH_SEED_API_PORT: '0',
      SKYMESH_IMAGE: process.env.SKYMESH_IMAGE ?? `${project}:latest`,
    }
    if (!process.env.SKYMESH_IMAGE) {
      await run('bash', [join(ROOT, 'scripts/docker-base-image.sh'), BASE_IMAGE], {
        maxBuffer: 64 * 1024 * 1024,
      })
      await compose('build', '--quiet', 'seed')
    }
    await compose('up', '-d', '--scale', 'agent=2', 'seed', 'agent')
    const seedPort = (await compose('port', 'seed', '4711')).trim()
    apis.push(`http://${seedPort}`)
    for (const index of [1, 2])
      apis.push(`http://${(await compose('port', `--index=${index}`, 'agent', '4711')).trim()}`)
  })

  after(async () => {
    if (env) {
      const logs = await compose('logs', '--no-color', '--tail=30').catch(() => '')
      await compose('down', '-v', '--remove-orphans', '-t', '10').catch((err) =>
        console.log(`# down: ${err}`),
      )
      if (!process.env.SKYMESH_IMAGE)
        await run('docker', ['rmi', '-f', `${project}:latest`]).catch(() => undefined)
      if (process.env.SKYMESH_DOCKER_LOGS) console.log(logs)
    }
    if (dir) await removeDir(dir)
  })

  it('every container becomes healthy and publishes its API on loopback only', async () => {
    const ids = (await compose('ps', '-q')).trim().split('\n').filter(Boolean)
    assert.equal(ids.length, 3)
    await waitFor(
      'all containers healthy',
      async () => {
        const { stdout } = await run('docker', ['inspect', '--format', '{{.State.Health.Status}}', ...ids])
        return stdout
          .trim()
          .split('\n')
          .every((s) => s === 'healthy')
      },
      120_000,
    )
    for (const a of apis) assert.match(a, /^http:\/\/127\.0\.0\.1:\d+$/)
  })

  it('the API refuses a wrong token and answers the shared secret one', async () => {
    const res = await fetch(`${apis[0]}/v1/node`, { headers: { authorization: 'Bearer wrong-token-here' } })
    assert.equal(res.status, 401)
    assert.equal((await api(apis[0]!, 'GET', '/v1/node')).status, 200)
  })

  it('converges: every agent sees the 3 containers alive', async () => {
    for (const a of apis) {
      await waitFor(
        `${a} sees 3 alive`,
        async () => {
          const r = await api(a, 'GET', '/v1/cluster')
          return r.body.hosts?.filter((h: { status: string }) => h.status === 'alive').length === 3
        },
        60_000,
      )
    }
  })

  it('migrates a VM from the seed to a replica, and every agent sees where it went', async () => {
    const vm = await api(apis[0]!, 'POST', '/v1/vms', { name: 'boxed', vcpus: 1, memoryMiB: 32, diskMiB: 64 })
    assert.equal(vm.status, 201, JSON.stringify(vm.body))
    const to = (await api(apis[1]!, 'GET', '/v1/node')).body.peerId as string
    const mig = await api(apis[0]!, 'POST', `/v1/vms/${vm.body.id}/migrate`, { to })
    assert.equal(mig.status, 202, JSON.stringify(mig.body))
    const done = await waitFor(
      'the migration to end',
      async () => {
        const r = await api(apis[0]!, 'GET', `/v1/migrations/${mig.body.id}`)
        return ['done', 'failed', 'cancelled'].includes(r.body.phase) ? r.body : undefined
      },
      60_000,
    )
    assert.equal(done.phase, 'done', JSON.stringify(done))
    for (const a of apis) {
      await waitFor(`${a} sees the VM on its new host`, async () => {
        const r = await api(a, 'GET', `/v1/cluster/vms/${vm.body.id}`)
        return r.body.host === to && r.body.epoch >= 2
      })
    }
    const local = await api(apis[1]!, 'GET', `/v1/vms/${vm.body.id}`)
    assert.equal(local.body.state, 'running')
    assert.equal((await api(apis[0]!, 'GET', `/v1/vms/${vm.body.id}`)).status, 404)
  })
})
