// Drives ember-agent with the pinned e2b SDK, unchanged, in its debug mode
// (which talks to envd at sandboxUrl without the E2B API). EMBER_AGENT_BIN
// names the agent binary; each run starts it on a free loopback port.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { Sandbox, CommandExitError } from 'e2b'

const bin = process.env.EMBER_AGENT_BIN
let agent
let sbx

before(async () => {
  assert.ok(bin, 'set EMBER_AGENT_BIN to an ember-agent binary')
  agent = spawn(bin, ['-listen', '127.0.0.1:0'], { stdio: ['ignore', 'inherit', 'pipe'] })
  const lines = createInterface({ input: agent.stderr })
  const url = await new Promise((resolve, reject) => {
    agent.once('exit', (code) => reject(new Error(`ember-agent exited with ${code}`)))
    lines.once('line', (line) => {
      const m = /addr=(\S+)/.exec(line)
      m ? resolve(`http://${m[1]}`) : reject(new Error(`no address in ${line}`))
    })
  })
  lines.on('line', (line) => process.stderr.write(`ember-agent: ${line}\n`))
  sbx = await Sandbox.create({ debug: true, sandboxUrl: url, apiKey: 'e2b_unused' })
})

after(async () => {
  if (agent && agent.exitCode === null) {
    const exited = new Promise((resolve) => agent.once('exit', resolve))
    agent.kill('SIGTERM')
    await exited
  }
})

test('run echoes through bash', async () => {
  const r = await sbx.commands.run('echo hello')
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'hello\n')
  assert.equal(r.stderr, '')
})

test('envs and cwd reach the command', async () => {
  const r = await sbx.commands.run('echo "$GREETING"; pwd', { envs: { GREETING: 'hi there' }, cwd: '/tmp' })
  assert.equal(r.stdout, 'hi there\n/tmp\n')
})

test('a non-zero exit throws CommandExitError with the output', async () => {
  await assert.rejects(sbx.commands.run('echo oops >&2; exit 3'), (err) => {
    assert.ok(err instanceof CommandExitError, String(err))
    assert.equal(err.exitCode, 3)
    assert.equal(err.stderr, 'oops\n')
    return true
  })
})

test('output streams to callbacks before the command ends', async () => {
  const seen = []
  const r = await sbx.commands.run('echo first; sleep 0.4; echo second', {
    onStdout: (data) => seen.push({ data, at: Date.now() }),
  })
  const end = Date.now()
  assert.equal(r.stdout, 'first\nsecond\n')
  assert.ok(seen.length >= 2, `got ${seen.length} chunks`)
  assert.equal(seen[0].data, 'first\n')
  // The sleep separates the lines; a buffered first line would arrive at the end.
  assert.ok(end - seen[0].at >= 200, `first chunk arrived ${end - seen[0].at} ms before the end`)
})

test('stdin: send, close, read back', async () => {
  const h = await sbx.commands.run('cat', { background: true, stdin: true })
  await sbx.commands.sendStdin(h.pid, 'one ')
  await sbx.commands.sendStdin(h.pid, 'two\n')
  await sbx.commands.closeStdin(h.pid)
  const r = await h.wait()
  assert.equal(r.stdout, 'one two\n')
})

test('list shows a running command and kill ends it', async () => {
  const h = await sbx.commands.run('sleep 60', { background: true })
  const listed = await sbx.commands.list()
  assert.ok(listed.some((p) => p.pid === h.pid && p.cmd === '/bin/bash'), JSON.stringify(listed))
  assert.equal(await sbx.commands.kill(h.pid), true)
  await assert.rejects(h.wait(), CommandExitError)
  assert.equal(await sbx.commands.kill(h.pid), false)
})

// Files, watches, terminals and re-attach: the rest of envd the SDK drives.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { FileNotFoundError } from 'e2b'

const dir = mkdtempSync(join(tmpdir(), 'ember-sdk-'))
after(() => rmSync(dir, { recursive: true, force: true }))

test('files: text, every byte value, several at once', async () => {
  const text = join(dir, 'hello.txt')
  await sbx.files.write(text, 'héllo wörld\n')
  assert.equal(await sbx.files.read(text), 'héllo wörld\n')

  const all = new Uint8Array(256).map((_, i) => i)
  await sbx.files.write(join(dir, 'all.bin'), all.buffer)
  assert.deepEqual(await sbx.files.read(join(dir, 'all.bin'), { format: 'bytes' }), all)

  const many = await sbx.files.write([
    { path: join(dir, 'many/a.txt'), data: 'a' },
    { path: join(dir, 'many/deep/b.txt'), data: 'b' },
  ])
  assert.equal(many.length, 2)
  assert.equal(await sbx.files.read(join(dir, 'many/deep/b.txt')), 'b')
  const listed = (await sbx.files.list(join(dir, 'many'), { depth: 2 })).map((e) => `${e.type} ${e.name}`).sort()
  assert.deepEqual(listed, ['dir deep', 'file a.txt', 'file b.txt'])
})

test('files: 5 MiB streamed up and down', async () => {
  const size = 5 << 20
  const chunk = new Uint8Array(64 << 10).map((_, i) => (i * 7) & 0xff)
  const want = createHash('sha256')
  let sent = 0
  const upload = new ReadableStream({
    pull(ctrl) {
      if (sent >= size) return ctrl.close()
      want.update(chunk)
      sent += chunk.length
      ctrl.enqueue(chunk)
    },
  })
  const p = join(dir, 'big.bin')
  await sbx.files.write(p, upload)
  const info = await sbx.files.getInfo(p)
  assert.equal(info.size, size)
  const got = createHash('sha256')
  for await (const part of await sbx.files.read(p, { format: 'stream' })) got.update(part)
  assert.equal(got.digest('hex'), want.digest('hex'))
})

test('files: stat, mkdir, rename, remove, missing', async () => {
  const d = join(dir, 'ops')
  assert.equal(await sbx.files.makeDir(d), true)
  assert.equal(await sbx.files.makeDir(d), false)
  await sbx.files.write(join(d, 'x'), 'x')
  const moved = await sbx.files.rename(join(d, 'x'), join(d, 'y'))
  assert.equal(moved.name, 'y')
  assert.equal(await sbx.files.exists(join(d, 'x')), false)
  assert.equal((await sbx.files.getInfo(join(d, 'y'))).type, 'file')
  await sbx.files.remove(d)
  assert.equal(await sbx.files.exists(d), false)
  await assert.rejects(sbx.files.read(join(d, 'y')), FileNotFoundError)
})

test('files: metadata kept and read back', async () => {
  const p = join(dir, 'meta.txt')
  await sbx.files.write(p, 'm', { metadata: { Author: 'ember', purpose: 'sdk test' } })
  const info = await sbx.files.getInfo(p)
  assert.deepEqual(info.metadata, { author: 'ember', purpose: 'sdk test' })
})

test('watchDir reports changes, recursively', async () => {
  const d = join(dir, 'watched')
  await sbx.files.makeDir(join(d, 'sub'))
  const seen = []
  const entries = []
  const w = await sbx.files.watchDir(d, (ev) => { seen.push(`${ev.type} ${ev.name}`); if (ev.entry) entries.push(ev.entry.name) }, { recursive: true, includeEntry: true })
  await sbx.files.write(join(d, 'sub/new.txt'), 'n')
  const deadline = Date.now() + 10000
  while (!seen.includes('create sub/new.txt') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  await w.stop()
  assert.ok(seen.includes('create sub/new.txt'), JSON.stringify(seen))
  assert.ok(entries.includes('new.txt'), JSON.stringify(entries))
})

test('pty: input, resize, exit', async () => {
  let out = ''
  const decoder = new TextDecoder()
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += decoder.decode(d) } })
  const waitFor = async (s) => {
    const deadline = Date.now() + 10000
    while (!out.includes(s) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    assert.ok(out.includes(s), `no ${JSON.stringify(s)} in ${JSON.stringify(out)}`)
  }
  const enc = new TextEncoder()
  await sbx.pty.sendInput(h.pid, enc.encode('stty size; echo "sum=$((40+2))"\n'))
  await waitFor('24 80')
  await waitFor('sum=42')
  await sbx.pty.resize(h.pid, { cols: 100, rows: 30 })
  await sbx.pty.sendInput(h.pid, enc.encode('stty size\n'))
  await waitFor('30 100')
  await sbx.pty.sendInput(h.pid, enc.encode('exit 3\n'))
  await assert.rejects(h.wait(), (err) => err instanceof CommandExitError && err.exitCode === 3)
})

test('connect re-attaches to a running command', async () => {
  const h = await sbx.commands.run('sleep 0.5; for i in 1 2 3; do echo tick$i; sleep 0.2; done', { background: true })
  await h.disconnect()
  let out = ''
  const again = await sbx.commands.connect(h.pid, { onStdout: (d) => { out += d } })
  const r = await again.wait()
  assert.equal(r.exitCode, 0)
  assert.ok(out.includes('tick3'), JSON.stringify(out))
})

// A second agent with an access token, as a sandbox E2B reports as secured:
// the SDK's own signed URLs open /files, a tampered or expired one does not,
// and nothing else gets in without the token.
test('access token and signed URLs', async (t) => {
  const secured = spawn(bin, ['-listen', '127.0.0.1:0'], { stdio: ['ignore', 'inherit', 'pipe'] })
  t.after(() => new Promise((resolve) => { secured.once('exit', resolve); secured.kill('SIGTERM') }))
  const lines = createInterface({ input: secured.stderr })
  const url = await new Promise((resolve, reject) => {
    secured.once('exit', (code) => reject(new Error(`ember-agent exited with ${code}`)))
    lines.once('line', (line) => {
      const m = /addr=(\S+)/.exec(line)
      m ? resolve(`http://${m[1]}`) : reject(new Error(`no address in ${line}`))
    })
  })
  lines.resume()
  const init = await fetch(url + '/init', { method: 'POST', body: JSON.stringify({ accessToken: 'tok-123' }) })
  assert.equal(init.status, 204)
  const s = new Sandbox({ sandboxId: 'secured', envdVersion: '0.6.4', envdAccessToken: 'tok-123', sandboxUrl: url, apiKey: 'e2b_unused', debug: true })
  const p = join(dir, 'signed.txt')
  await s.files.write(p, 'signed content')
  assert.equal(await s.files.read(p), 'signed content')

  const down = await s.downloadUrl(p, { useSignatureExpiration: 60 })
  assert.match(down, /signature=v1_/)
  assert.equal(await (await fetch(down)).text(), 'signed content')
  const tampered = down.replace(/signature=v1_./, 'signature=v1_X')
  assert.equal((await fetch(tampered)).status, 401)
  const expired = await s.downloadUrl(p, { useSignatureExpiration: -10 })
  assert.equal((await fetch(expired)).status, 401)

  const up = await s.uploadUrl(join(dir, 'via-url.txt'))
  const form = new FormData()
  form.append('file', new Blob(['uploaded by url']), join(dir, 'via-url.txt'))
  assert.equal((await fetch(up, { method: 'POST', body: form })).status, 200)
  assert.equal(await s.files.read(join(dir, 'via-url.txt')), 'uploaded by url')

  assert.equal((await fetch(url + '/files?path=' + encodeURIComponent(p))).status, 401)
  const rpc = await fetch(url + '/process.Process/List', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' })
  assert.equal(rpc.status, 401)
  assert.equal((await fetch(url + '/health')).status, 204)
})
