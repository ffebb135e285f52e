// The E2B side of make bench-e2b: for every line on stdin, one
// Sandbox.create → first commands.run('true') with the pinned SDK, timed
// here (node's start-up is not the flow's), then a kill; prints the
// milliseconds of each, one a line. test/benche2b alternates it with the
// same flow through ember's Go SDK.
import { createInterface } from 'node:readline'
import { Sandbox } from 'e2b'

for await (const _ of createInterface({ input: process.stdin })) {
  const start = performance.now()
  const sbx = await Sandbox.create()
  await sbx.commands.run('true')
  const ms = performance.now() - start
  await sbx.kill()
  console.log(ms.toFixed(1))
}
