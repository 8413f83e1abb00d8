// The qemu driver with a real QEMU (TCG when KVM does not work): boot the tiny guest, its memory
// self-check, pause/resume, the `-netdev stream` NIC at frame level, the TCP echo server, a QEMU
// that dies, and destroy. Skips, saying why, where QEMU or the guest packages are not installed.
//
// The echo server is reached through a user-mode NIC with a host port forward: a TCP connection
// over the stream socket would need a TCP stack in the test; the stream NIC is proven here at frame
// level (ARP + ICMP echo, both directions) and carries TCP once the overlay switch attaches to it.
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { createConnection } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  ARP_REPLY,
  ARP_REQUEST,
  arpReplyFrame,
  arpRequestFrame,
  buildEthernet,
  buildIcmpEcho,
  buildIpv4,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  IP_PROTO_ICMP,
  parseArp,
  parseEthernet,
  parseIcmpEcho,
  parseIpv4,
} from '../../src/overlay/frame.js'
import { findQemu, probeKvm, QemuDriver, type QemuVm } from '../../src/vm/qemu/index.js'
import { VmError, type VmState } from '../../src/vm/types.js'
import {
  guestSpec,
  memLines,
  processAlive,
  qemuSkipReason,
  StreamPeer,
  shortTmpDir,
  waitSerial,
} from '../helpers/qemu.js'
import { freePort } from '../helpers/tcp-relay.js'

const skip = qemuSkipReason()
if (skip) console.log(`# qemu driver tests skipped: ${skip}`)

const BOOT_MS = 90_000

function echoOnce(port: number, payload: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = createConnection(port, '127.0.0.1')
    let got = ''
    const t = setTimeout(() => {
      s.destroy()
      reject(new Error(`echo: got ${JSON.stringify(got)} within ${timeoutMs} ms`))
    }, timeoutMs)
    s.on('connect', () => s.write(payload))
    s.on('data', (d) => {
      got += d.toString()
      if (got.length >= payload.length) {
        clearTimeout(t)
        s.destroy()
        resolve(got)
      }
    })
    s.on('error', (e) => {
      clearTimeout(t)
      reject(e)
    })
  })
}

describe('qemu driver', { skip, timeout: 300_000 }, () => {
  let driver: QemuDriver
  let tmp: ReturnType<typeof shortTmpDir>
  let vm: QemuVm
  const guestIp = '10.9.0.2'

  before(async () => {
    driver = new QemuDriver()
    tmp = shortTmpDir()
    console.log(`# accelerator: ${await driver.accel()}`)
  })

  after(async () => {
    await driver?.close()
    await tmp?.remove()
  })

  it('the KVM probe firmware really runs (checked under TCG, where it must print)', async () => {
    assert.equal(await probeKvm(findQemu().system, 'tcg', 10_000), true)
  })

  it('boots the tiny guest, whose memory check reports OK on the serial console', {
    timeout: BOOT_MS + 10_000,
  }, async () => {
    const t0 = Date.now()
    vm = await driver.create(guestSpec('q1', { rateMiBps: 1 }), {
      dir: `${tmp.path}/q1`,
      ip: `${guestIp}/24`,
    })
    assert.equal(vm.state, 'running')
    assert.ok(vm.pid && processAlive(vm.pid), 'QEMU runs')
    assert.ok(vm.nicSocket && existsSync(vm.nicSocket), 'the NIC socket exists')
    await waitSerial(
      vm.serialLog,
      () => memLines(vm.serialLog).filter((l) => l.ok).length >= 2,
      BOOT_MS,
      'two MEM OK lines',
    )
    console.log(`# boot to the second MEM OK line: ${Date.now() - t0} ms`)
    assert.deepEqual(
      memLines(vm.serialLog).filter((l) => !l.ok),
      [],
      'no MEM FAIL',
    )
    assert.ok(driver.instances().includes(vm))
  })

  it('refuses page-level access clearly (QEMU guests migrate with their own stream)', async () => {
    assert.equal(vm.capabilities.pageAccess, false)
    assert.throws(
      () => vm.memory.readPage(0),
      (e: unknown) => e instanceof VmError && /not supported/.test(e.message),
    )
    await assert.rejects(vm.disk.readBlock(0), /not supported/)
    await assert.rejects(vm.digest(), /not supported/)
  })

  it('pause stops the guest (no progress, its clock stands) and resume continues it', async () => {
    const seen = memLines(vm.serialLog).length
    await waitSerial(vm.serialLog, () => memLines(vm.serialLog).length > seen, 20_000, 'a fresh MEM OK line')
    await vm.pause()
    assert.equal(vm.state, 'paused')
    assert.equal((await vm.qmp.execute<{ status: string }>('query-status')).status, 'paused')
    const atPause = memLines(vm.serialLog)
    const last = atPause.at(-1)
    assert.ok(last)
    const pausedMs = 6000
    await sleep(pausedMs)
    assert.equal(memLines(vm.serialLog).length, atPause.length, 'no output while paused')
    await assert.rejects(vm.pause(), /cannot pause/)
    await vm.resume()
    assert.equal(vm.state, 'running')
    const lines = await waitSerial(
      vm.serialLog,
      () => memLines(vm.serialLog).length > atPause.length,
      30_000,
      'progress after resume',
    )
    const next = memLines(vm.serialLog)[atPause.length]
    assert.ok(next?.ok, `${lines.at(-1)}`)
    assert.equal(next.gen, last.gen + 1)
    // Had the guest kept running, its clock would have moved by more than the pause.
    assert.ok(
      next.t - last.t < pausedMs / 1000 - 1,
      `guest clock moved ${(next.t - last.t).toFixed(2)} s over a ${pausedMs} ms pause`,
    )
  })

  it('the -netdev stream socket carries Ethernet frames both ways (ARP, then ICMP echo)', async () => {
    const peer = await StreamPeer.connect(vm.nicSocket as string)
    try {
      const me = { mac: '02:00:00:00:00:01', ip: '10.9.0.1' }
      let guestMac: string | undefined
      for (let i = 0; i < 20 && !guestMac; i++) {
        peer.send(arpRequestFrame(me, guestIp))
        const reply = await peer
          .receive((f) => {
            const e = parseEthernet(f)
            const a = e?.ethertype === ETHERTYPE_ARP ? parseArp(e.payload) : undefined
            return a?.op === ARP_REPLY && a.senderIp === guestIp && a.targetIp === me.ip
          }, 1000)
          .catch(() => undefined)
        if (reply) guestMac = parseEthernet(reply)?.src
      }
      assert.ok(guestMac, 'the guest answered ARP')
      const data = new TextEncoder().encode('skymesh-ping')
      const icmp = buildIcmpEcho({ type: ICMP_ECHO_REQUEST, id: 0x5eed, seq: 1, data })
      peer.send(
        buildEthernet(guestMac, me.mac, ETHERTYPE_IPV4, buildIpv4(me.ip, guestIp, IP_PROTO_ICMP, icmp)),
      )
      const pong = await peer.receive((f) => {
        const e = parseEthernet(f)
        // answer the guest's own ARP for us, should it ask before replying
        const arp = e?.ethertype === ETHERTYPE_ARP ? parseArp(e.payload) : undefined
        if (arp?.op === ARP_REQUEST && arp.targetIp === me.ip) {
          peer.send(arpReplyFrame({ mac: arp.senderMac, ip: arp.senderIp }, me))
        }
        const ip = e?.ethertype === ETHERTYPE_IPV4 ? parseIpv4(e.payload) : undefined
        const echo = ip?.protocol === IP_PROTO_ICMP ? parseIcmpEcho(ip.payload) : undefined
        return echo?.type === ICMP_ECHO_REPLY && echo.id === 0x5eed && echo.seq === 1
      }, 15_000)
      const ip = parseIpv4(parseEthernet(pong)?.payload ?? new Uint8Array())
      assert.equal(ip?.src, guestIp)
      assert.deepEqual(parseIcmpEcho(ip?.payload ?? new Uint8Array())?.data, data)
    } finally {
      peer.close()
    }
  })

  let vm2: QemuVm
  it('the guest echo server answers over TCP (user-mode NIC with a host port forward)', {
    timeout: BOOT_MS + 30_000,
  }, async () => {
    const port = await freePort()
    vm2 = await driver.create(guestSpec('q2', { rateMiBps: 0 }), {
      dir: `${tmp.path}/q2`,
      nic: { user: { hostfwd: [{ hostPort: port, guestPort: 7 }] } },
      ip: '10.0.2.15/24',
      gateway: '10.0.2.2',
    })
    assert.equal(vm2.nicSocket, undefined)
    await waitSerial(
      vm2.serialLog,
      (l) => l.some((x) => x.startsWith('SKYMESH ECHO 7')),
      BOOT_MS,
      'the echo server',
    )
    const payload = 'hello skymesh\n'.repeat(20)
    let answer: string | undefined
    for (let i = 0; i < 20 && answer === undefined; i++) {
      answer = await echoOnce(port, payload, 5000).catch(async () => {
        await sleep(500)
        return undefined
      })
    }
    assert.equal(answer, payload)
  })

  it('a QEMU that dies is reported as crashed and reaped', async () => {
    const states: VmState[] = []
    vm2.onStateChange((s) => states.push(s))
    const pid = vm2.pid as number
    process.kill(pid, 'SIGKILL')
    const exit = await vm2.exited
    assert.equal(exit.signal, 'SIGKILL')
    assert.equal(vm2.state, 'crashed')
    assert.deepEqual(states, ['crashed'])
    assert.equal(processAlive(pid), false, 'no zombie left')
    assert.ok(!driver.instances().includes(vm2))
    await assert.rejects(vm2.resume(), /cannot resume/)
    await vm2.destroy()
  })

  it('a restarted agent re-attaches to a QEMU that outlived it; one that died is not found', async () => {
    const spec = guestSpec('att')
    const first = await driver.create(spec, { dir: `${tmp.path}/att`, nic: 'none' })
    // The agent "dies": its QMP connection goes, QEMU runs on (own process group)
    first.qmp.close()
    const later = new QemuDriver()
    try {
      const again = await later.attach(spec, { dir: `${tmp.path}/att` })
      assert.ok(again, 're-attached')
      assert.equal(again.pid, first.pid)
      assert.equal(again.state, 'running')
      assert.equal(again.options.nic, 'none', 'its launch options came back')
      await again.pause()
      assert.equal((await again.qmp.execute<{ status: string }>('query-status')).status, 'paused')
      await again.resume()
      // It dies: the re-attached handle sees it (not our child: by /proc) and reports it
      process.kill(first.pid as number, 'SIGKILL')
      await again.exited
      assert.equal(again.state, 'crashed')
      assert.equal(await later.attach(spec, { dir: `${tmp.path}/att` }), undefined)
    } finally {
      await later.close()
      await first.destroy()
    }
  })

  it('destroy ends QEMU and removes the VM directory', async () => {
    const pid = vm.pid as number
    await vm.destroy()
    assert.equal(vm.state, 'stopped')
    assert.equal(processAlive(pid), false)
    assert.equal(existsSync(`${tmp.path}/q1`), false)
    assert.deepEqual(driver.instances(), [])
  })
})
