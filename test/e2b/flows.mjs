// The flows of the E2B tier, written once against E2B's public SDK API and
// run by each pinned SDK version (e2b.test.mjs here and in v2early/, v1/),
// unchanged, against a real ember daemon and real guests. A flow an SDK
// version has no call for is skipped naming the call; a flow that needs an
// envd capability the guest's agent does not have yet is skipped naming
// the capability, found by probing the agent. Nothing passes silently.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'

const version = process.env.EMBER_E2B_VERSION ?? '?'
const pinned = process.env.EMBER_E2B_PINNED === 'true'

// Create and command timeouts: guests run under software emulation here.
const T = { timeout: 180_000 }

export function e2bFlows(sdk) {
  const { Sandbox, CommandExitError } = sdk
  const made = []
  let sbx

  // create makes a sandbox the suite kills at the end (unless the test
  // did).
  const create = async (...args) => {
    const s = await Sandbox.create(...args)
    made.push(s.sandboxId)
    return s
  }

  // list returns the first page of sandboxes, as either SDK generation
  // lists them (2.x: a paginator; 1.x: a promise of an array).
  const list = async (opts) => {
    const l = Sandbox.list(opts)
    return typeof l?.nextItems === 'function' ? await l.nextItems() : await l
  }

  // notFound says whether err is the SDK's "no such sandbox".
  const notFound = (err) =>
    (sdk.SandboxNotFoundError && err instanceof sdk.SandboxNotFoundError) ||
    (sdk.NotFoundError && err instanceof sdk.NotFoundError) ||
    /\b404\b/.test(String(err?.message))

  // pause and connect as the SDK spells them.
  const pause = (s) => (typeof s.pause === 'function' ? s.pause() : s.betaPause())
  const hasPause = () => typeof Sandbox.prototype.pause === 'function' || typeof Sandbox.prototype.betaPause === 'function'

  // capability probes the guest's agent once for an envd capability,
  // returning null when it has it and the reason to skip when not.
  const probes = new Map()
  const capability = (name, probe) => {
    if (!probes.has(name)) {
      probes.set(name, probe().then(
        () => null,
        (err) => `waits for envd's ${name} in the guest agent (probe: ${String(err?.message ?? err).split('\n')[0]})`,
      ))
    }
    return probes.get(name)
  }
  const files = () => capability('filesystem service and /files', async () => {
    await sbx.files.write('/tmp/.ember-probe', 'x')
    await sbx.files.list('/tmp')
  })
  const pty = () => capability('PTYs (Start with pty)', async () => {
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
    await sbx.pty.kill(h.pid)
  })
  const connectProc = () => capability('process Connect to a running pid', async () => {
    const h = await sbx.commands.run('sleep 5', { background: true })
    try {
      const c = await sbx.commands.connect(h.pid)
      await c.disconnect()
    } finally {
      await sbx.commands.kill(h.pid)
    }
  })

  before(async () => {
    sbx = await create({ timeoutMs: 600_000, envs: { SANDBOX_WIDE: 'from create' }, metadata: { suite: 'e2b', version } })
  }, T)

  after(async () => {
    for (const id of made) {
      await Sandbox.kill(id).catch(() => {})
    }
  }, T)

  describe('lifecycle', () => {
    test('create → info → list → kill → not found', T, async () => {
      const s = await create({ metadata: { flow: 'lifecycle', version } })
      const info = await Sandbox.getInfo(s.sandboxId)
      assert.equal(info.sandboxId, s.sandboxId)
      assert.equal(info.metadata.flow, 'lifecycle')
      assert.match(info.envdVersion, /^\d+\.\d+\.\d+$/)
      if (info.state !== undefined) assert.equal(info.state, 'running')
      assert.ok(info.startedAt instanceof Date && !isNaN(info.startedAt), `startedAt ${info.startedAt}`)
      assert.ok(info.endAt > info.startedAt, `endAt ${info.endAt}`)
      const listed = await list({ query: { metadata: { flow: 'lifecycle', version } } })
      assert.deepEqual(listed.map((x) => x.sandboxId), [s.sandboxId])
      assert.equal(await Sandbox.kill(s.sandboxId), true)
      assert.equal(await Sandbox.kill(s.sandboxId), false)
      await assert.rejects(Sandbox.getInfo(s.sandboxId), (err) => notFound(err) || assert.fail(`not a not-found error: ${err}`))
    })

    test('a wrong API key is refused', T, async () => {
      await assert.rejects(Sandbox.create({ apiKey: 'e2b_wrong' }), (err) => {
        // The pinned SDK raises AuthenticationError on a 401; the older
        // ones a SandboxError naming the status.
        if (pinned) {
          assert.ok(err instanceof sdk.AuthenticationError, `${err?.constructor?.name}: ${err}`)
        } else {
          assert.match(String(err.message), /\b401\b/)
        }
        return true
      })
    })

    test('setTimeout, then the sandbox expires', T, async () => {
      const s = await create({ timeoutMs: 600_000 })
      await s.setTimeout(3_000)
      const info = await Sandbox.getInfo(s.sandboxId)
      assert.ok(info.endAt - Date.now() < 5_000, `endAt ${info.endAt} is not about 3 s away`)
      const deadline = Date.now() + 30_000
      for (;;) {
        const gone = await Sandbox.getInfo(s.sandboxId).then(() => false, (err) => notFound(err))
        if (gone) break
        assert.ok(Date.now() < deadline, 'the sandbox outlived its timeout by 30 s')
        await new Promise((r) => setTimeout(r, 500))
      }
    })

    test('updateNetwork replaces the egress policy', T, async (t) => {
      if (typeof Sandbox.updateNetwork !== 'function') return t.skip(`e2b@${version} has no updateNetwork`)
      const s = await create({ allowInternetAccess: true })
      await Sandbox.updateNetwork(s.sandboxId, { allowOut: ['10.1.2.3'], allowInternetAccess: false })
      const info = await Sandbox.getInfo(s.sandboxId)
      assert.equal(info.allowInternetAccess, false)
      assert.deepEqual(info.network.allowOut, ['10.1.2.3/32'])
      await assert.rejects(Sandbox.updateNetwork(s.sandboxId, { allowOut: ['example.com'] }), /501/)
    })

    test('two sandboxes are isolated', T, async () => {
      const other = await create()
      await sbx.commands.run('echo mine > /tmp/isolation')
      const r = await other.commands.run('cat /tmp/isolation 2>&1 || echo absent')
      assert.match(r.stdout, /absent/)
      assert.notEqual(other.sandboxId, sbx.sandboxId)
    })
  })

  describe('commands', () => {
    test('output and the exit code', T, async () => {
      const r = await sbx.commands.run('echo hello; echo err >&2')
      assert.equal(r.exitCode, 0)
      assert.equal(r.stdout, 'hello\n')
      assert.equal(r.stderr, 'err\n')
    })

    test('a failing command throws CommandExitError', T, async () => {
      await assert.rejects(sbx.commands.run('echo oops >&2; exit 3'), (err) => {
        assert.ok(err instanceof CommandExitError, String(err))
        assert.equal(err.exitCode, 3)
        assert.equal(err.stderr, 'oops\n')
        return true
      })
    })

    test('envs, the sandbox-wide envs and cwd', T, async () => {
      const r = await sbx.commands.run('echo "$GREETING|$SANDBOX_WIDE"; pwd', { envs: { GREETING: 'hi there' }, cwd: '/tmp' })
      assert.equal(r.stdout, 'hi there|from create\n/tmp\n')
    })

    test('output reaches the callbacks before the command ends', T, async () => {
      const seen = []
      const r = await sbx.commands.run('echo first; sleep 1; echo second', { onStdout: (d) => seen.push({ d, at: Date.now() }) })
      const end = Date.now()
      assert.equal(r.stdout, 'first\nsecond\n')
      assert.ok(seen.length >= 2, `got ${seen.length} chunks`)
      assert.equal(seen[0].d, 'first\n')
      assert.ok(end - seen[0].at >= 500, `the first chunk came ${end - seen[0].at} ms before the end`)
    })

    test('a command past its timeout fails', T, async () => {
      const start = Date.now()
      await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 1_000 }))
      assert.ok(Date.now() - start < 15_000, `took ${Date.now() - start} ms`)
    })

    test('background, list, wait and kill', T, async () => {
      const h = await sbx.commands.run('sleep 2; echo done', { background: true })
      const long = await sbx.commands.run('sleep 60', { background: true })
      const listed = await sbx.commands.list()
      assert.ok(listed.some((p) => p.pid === long.pid), JSON.stringify(listed))
      const r = await h.wait()
      assert.equal(r.stdout, 'done\n')
      assert.equal(await sbx.commands.kill(long.pid), true)
      await assert.rejects(long.wait(), CommandExitError)
      assert.equal(await sbx.commands.kill(long.pid), false)
    })

    test('stdin: send, close, read back', T, async (t) => {
      if (typeof sbx.commands.closeStdin !== 'function') return t.skip(`e2b@${version} has no commands.closeStdin`)
      const h = await sbx.commands.run('cat', { background: true, stdin: true })
      await sbx.commands.sendStdin(h.pid, 'one ')
      await sbx.commands.sendStdin(h.pid, 'two\n')
      await sbx.commands.closeStdin(h.pid)
      const r = await h.wait()
      assert.equal(r.stdout, 'one two\n')
    })

    test('connect to a running command', T, async (t) => {
      const skip = await connectProc()
      if (skip) return t.skip(skip)
      const h = await sbx.commands.run('sleep 1; echo late', { background: true })
      const c = await sbx.commands.connect(h.pid)
      const r = await c.wait()
      assert.match(r.stdout, /late/)
    })
  })

  describe('pty', () => {
    test('a PTY runs a shell', T, async (t) => {
      const skip = await pty()
      if (skip) return t.skip(skip)
      let out = ''
      const h = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => (out += new TextDecoder().decode(d)) })
      await sbx.pty.sendInput(h.pid, new TextEncoder().encode('echo pty-$((40+2))\nexit\n'))
      await h.wait().catch(() => {})
      assert.match(out, /pty-42/)
    })
  })

  describe('files', () => {
    test('text, bytes, several at once, a missing file', T, async (t) => {
      const skip = await files()
      if (skip) return t.skip(skip)
      await sbx.files.write('/tmp/f/a.txt', 'text')
      assert.equal(await sbx.files.read('/tmp/f/a.txt'), 'text')
      await sbx.files.write('/tmp/f/b.bin', new Uint8Array([0, 1, 2, 255]).buffer)
      assert.deepEqual([...(await sbx.files.read('/tmp/f/b.bin', { format: 'bytes' }))], [0, 1, 2, 255])
      await sbx.files.write([{ path: '/tmp/f/c', data: 'c' }, { path: '/tmp/f/d', data: 'd' }])
      assert.equal(await sbx.files.read('/tmp/f/d'), 'd')
      await assert.rejects(sbx.files.read('/tmp/f/missing'))
    })

    test('list, mkdir, rename, remove', T, async (t) => {
      const skip = await files()
      if (skip) return t.skip(skip)
      assert.equal(await sbx.files.makeDir('/tmp/g'), true)
      await sbx.files.write('/tmp/g/x', 'x')
      await sbx.files.rename('/tmp/g/x', '/tmp/g/y')
      assert.deepEqual((await sbx.files.list('/tmp/g')).map((e) => e.name), ['y'])
      await sbx.files.remove('/tmp/g/y')
      assert.deepEqual(await sbx.files.list('/tmp/g'), [])
    })

    test('5 MiB by stream', T, async (t) => {
      const skip = await files()
      if (skip) return t.skip(skip)
      const big = new Uint8Array(5 << 20).map((_, i) => i % 251)
      await sbx.files.write('/tmp/big', new Blob([big]).stream())
      const back = await sbx.files.read('/tmp/big', { format: 'bytes' })
      assert.equal(back.length, big.length)
      assert.equal(back[12345], big[12345])
    })

    test('watchDir sees a write', T, async (t) => {
      const skip = await files()
      if (skip) return t.skip(skip)
      await sbx.files.makeDir('/tmp/w')
      const events = []
      const h = await sbx.files.watchDir('/tmp/w', (e) => events.push(e))
      await sbx.commands.run('echo x > /tmp/w/new')
      const deadline = Date.now() + 10_000
      while (!events.some((e) => e.name === 'new') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200))
      await h.stop()
      assert.ok(events.some((e) => e.name === 'new'), JSON.stringify(events))
    })

    test('signed upload and download URLs with plain fetch', T, async (t) => {
      if (typeof sbx.uploadUrl !== 'function') return t.skip(`e2b@${version} has no uploadUrl`)
      const skip = await files()
      if (skip) return t.skip(skip)
      const form = new FormData()
      form.append('file', new Blob(['signed']), 'ignored')
      const up = await fetch(await sbx.uploadUrl('/tmp/signed.txt'), { method: 'POST', body: form })
      assert.equal(up.status, 200, await up.text())
      const down = await fetch(await sbx.downloadUrl('/tmp/signed.txt'))
      assert.equal(await down.text(), 'signed')
    })
  })

  describe('pause, snapshots, forks, metrics', () => {
    test('pause → connect resumes, with a file and a background process intact', T, async (t) => {
      if (!hasPause()) return t.skip(`e2b@${version} has no pause`)
      const s = await create({ timeoutMs: 600_000 })
      await s.commands.run('echo kept > /tmp/kept')
      const bg = await s.commands.run('i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done', { background: true })
      assert.equal(await pause(s), true)
      assert.equal(await pause(s), false, 'a second pause is "already paused"')
      assert.equal((await Sandbox.getInfo(s.sandboxId)).state, 'paused')
      assert.equal(await s.isRunning(), false)
      const again = await Sandbox.connect(s.sandboxId)
      assert.equal(await again.isRunning(), true)
      assert.equal((await again.commands.run('cat /tmp/kept')).stdout, 'kept\n')
      const listed = await again.commands.list()
      assert.ok(listed.some((p) => p.pid === bg.pid), `the background process is gone: ${JSON.stringify(listed)}`)
      const a = Number((await again.commands.run('cat /tmp/counter')).stdout)
      await new Promise((r) => setTimeout(r, 1500))
      const b = Number((await again.commands.run('cat /tmp/counter')).stdout)
      assert.ok(b > a, `the counter stood still after the resume (${a} → ${b})`)
    })

    test('paused at its timeout as asked, resumed by traffic', T, async (t) => {
      if (!pinned) return t.skip(`e2b@${version} has no lifecycle option`)
      const s = await create({ timeoutMs: 600_000, lifecycle: { onTimeout: 'pause', autoResume: true } })
      await s.commands.run('echo before > /tmp/auto')
      const info = await Sandbox.getInfo(s.sandboxId)
      assert.deepEqual(info.lifecycle, { onTimeout: 'pause', autoResume: true })
      await s.setTimeout(2_000)
      const deadline = Date.now() + 30_000
      while ((await Sandbox.getInfo(s.sandboxId)).state !== 'paused') {
        assert.ok(Date.now() < deadline, 'not paused 30 s after its timeout')
        await new Promise((r) => setTimeout(r, 300))
      }
      // The first request waits for the resume, then goes through.
      assert.equal((await s.commands.run('cat /tmp/auto')).stdout, 'before\n')
      assert.equal((await Sandbox.getInfo(s.sandboxId)).state, 'running')
    })

    test('a private sandbox takes traffic on its ports with its token only', T, async (t) => {
      if (!pinned) return t.skip(`e2b@${version} has no network.allowPublicTraffic`)
      const s = await create({ network: { allowPublicTraffic: false } })
      assert.ok(s.trafficAccessToken, 'no trafficAccessToken')
      await s.commands.run('mkdir -p /tmp/www && echo served > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www')
      const get = (hdrs) => fetch(process.env.E2B_SANDBOX_URL + '/index.html', {
        headers: { 'E2b-Sandbox-Id': s.sandboxId, 'E2b-Sandbox-Port': '8080', ...hdrs },
      })
      assert.equal((await get({})).status, 403)
      const ok = await get({ 'E2b-Traffic-Access-Token': s.trafficAccessToken })
      assert.equal(ok.status, 200)
      assert.equal(await ok.text(), 'served\n')
      const pub = await create()
      assert.equal(pub.trafficAccessToken, undefined)
    })

    test('snapshot → create from it', T, async (t) => {
      if (typeof Sandbox.prototype.createSnapshot !== 'function') return t.skip(`e2b@${version} has no createSnapshot`)
      const s = await create()
      await s.commands.run('echo from-snapshot > /home/user/marker')
      const snap = await s.createSnapshot({ name: `e2b-${version.replaceAll('.', '-')}-${Date.now()}` })
      const child = await create(snap.snapshotId)
      assert.equal((await child.commands.run('cat /home/user/marker')).stdout, 'from-snapshot\n')
      const snaps = await Sandbox.listSnapshots({ sandboxId: s.sandboxId }).nextItems()
      assert.ok(snaps.some((x) => x.snapshotId === snap.snapshotId), JSON.stringify(snaps))
      await Sandbox.kill(child.sandboxId)
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false)
    })

    test('fork', T, async (t) => {
      if (typeof Sandbox.prototype.fork !== 'function') return t.skip(`e2b@${version} has no fork`)
      await sbx.commands.run('echo before-fork > /home/user/forked')
      const [f] = await sbx.fork()
      assert.ok(!(f instanceof Error), String(f))
      made.push(f.sandboxId)
      assert.notEqual(f.sandboxId, sbx.sandboxId)
      assert.equal((await f.commands.run('cat /home/user/forked')).stdout, 'before-fork\n')
      await f.commands.run('echo changed > /home/user/forked')
      assert.equal((await sbx.commands.run('cat /home/user/forked')).stdout, 'before-fork\n')
    })

    test('metrics are real samples from the guest', T, async () => {
      const deadline = Date.now() + 30_000
      let m = []
      while (Date.now() < deadline) {
        m = await sbx.getMetrics()
        if (m.length >= 2) break
        await new Promise((r) => setTimeout(r, 1000))
      }
      assert.ok(m.length >= 2, `${m.length} samples in 30 s`)
      const last = m[m.length - 1]
      assert.ok(last.timestamp instanceof Date && !isNaN(last.timestamp), `timestamp ${last.timestamp}`)
      assert.ok(last.cpuCount >= 1, `cpuCount ${last.cpuCount}`)
      assert.ok(last.cpuUsedPct >= 0 && last.cpuUsedPct <= 100, `cpuUsedPct ${last.cpuUsedPct}`)
      assert.ok(last.memTotal > 100 << 20 && last.memUsed > 0 && last.memUsed < last.memTotal, `mem ${last.memUsed}/${last.memTotal}`)
      assert.ok(last.diskTotal > 100 << 20 && last.diskUsed > 0 && last.diskUsed < last.diskTotal, `disk ${last.diskUsed}/${last.diskTotal}`)
    })
  })
}
