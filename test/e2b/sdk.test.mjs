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
