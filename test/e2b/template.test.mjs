// E2B's template SDK against ember (test/e2b's TestTemplateBuild starts the
// daemon): Template.build() of the pinned SDK builds a template FROM the
// daemon's default template, and Sandbox.create() from it runs a command.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Template, Sandbox, BuildError } from 'e2b'

// Builds and creates: guests run under software emulation here.
const T = { timeout: 600_000 }

// ember's busybox, which every template built on ember has.
const bb = '/usr/lib/ember/busybox'

test('Template.build() builds on ember, and Sandbox.create() from it runs a command', T, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ember-e2b-template-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.mkdirSync(path.join(dir, 'site'))
  fs.writeFileSync(path.join(dir, 'site', 'hello.txt'), 'hello from the build context\n')
  const name = `e2b-built-${Date.now()}`
  const define = (last) =>
    Template({ fileContextPath: dir })
      .fromTemplate('base')
      .setEnvs({ GREETING: 'hi' })
      .runCmd(`mkdir -p /srv/www && echo "$GREETING from a RUN as $(${bb} id -un)" > /srv/www/index.html`)
      .copy('site', '/srv/www/')
      .setWorkdir('/srv/www')
      .runCmd(last)
      .setStartCmd(`${bb} httpd -f -p 8080 -h /srv/www`, `${bb} wget -q -O /dev/null http://127.0.0.1:8080/`)

  const logs = []
  const started = Date.now()
  const info = await Template.build(define('echo v1 > /srv/last'), name, { onBuildLogs: (e) => logs.push(e.message) })
  const cold = Date.now() - started
  assert.equal(info.templateId, name)
  assert.ok(logs.some((m) => m.includes(`template ${name} built`)), logs.join('\n'))
  assert.ok(await Template.exists(name))
  assert.equal(await Template.exists(`${name}-not-built`), false)

  const sbx = await Sandbox.create(name)
  try {
    const r = await sbx.commands.run(`cd /srv/www && cat index.html hello.txt /srv/last && echo $GREETING && ${bb} wget -q -O- http://127.0.0.1:8080/hello.txt`)
    assert.equal(r.stdout, 'hi from a RUN as root\nhello from the build context\nv1\nhi\nhello from the build context\n')
  } finally {
    await sbx.kill()
  }

  // Only the last step changed: every step before it comes from the cache,
  // the COPY's files are not uploaded again.
  const logs2 = []
  const again = Date.now()
  await Template.build(define('echo v2 > /srv/last'), `${name}-2`, { onBuildLogs: (e) => logs2.push(e.message) })
  const warm = Date.now() - again
  const cached = logs2.filter((m) => /^\[\d+\/\d+\] .* \(cached\)$/.test(m))
  assert.equal(cached.length, 5, `steps reused:\n${logs2.join('\n')}`)
  assert.ok(logs2.some((m) => m.includes("Skipping upload of 'site'")), logs2.join('\n'))
  console.log(`cold build ${cold} ms, rebuild of the last step ${warm} ms`)

  // A failing step fails Template.build with E2B's BuildError, naming it.
  await assert.rejects(
    Template.build(Template().fromTemplate('base').runCmd('echo about to fail && exit 3'), `${name}-bad`),
    (err) => err instanceof BuildError && /exit code 3/.test(err.message) || assert.fail(`not the build's failure: ${err}`),
  )
  assert.equal(await Template.exists(`${name}-bad`), false)
})
