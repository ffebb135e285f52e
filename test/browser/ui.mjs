// Drives the daemon's /test page in headless Chromium through a sandbox's
// whole life: key, create, exec, the usage and latency charts drawing from
// the event stream and the samples, files (upload, list, download, delete),
// a terminal, pause, resume, exec, snapshot, create from the snapshot,
// streamed output, fork, destroy, delete the snapshot. Any console error
// fails it.
//
// Environment: EMBER_URL and EMBER_API_KEY name the daemon; EMBER_ARTIFACTS
// is where screenshots go; EMBER_CHROMIUM overrides /usr/bin/chromium.
import { chromium } from "playwright-core";
import { mkdtemp, rm, mkdir, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const url = need("EMBER_URL");
const apiKey = need("EMBER_API_KEY");
const artifacts = process.env.EMBER_ARTIFACTS || (await mkdtemp(join(tmpdir(), "ember-browser-")));
const executablePath = process.env.EMBER_CHROMIUM || "/usr/bin/chromium";

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(name + " is not set");
  return v;
}

const started = Date.now();
function step(what) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);
}

await mkdir(artifacts, { recursive: true });
const profile = await mkdtemp(join(tmpdir(), "ember-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 800 },
});
const problems = [];
let failed = false;
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(+(process.env.EMBER_UI_TIMEOUT_MS || 60_000));
  page.on("console", (m) => { if (m.type() === "error") problems.push("console error: " + m.text()); });
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  await run(page);
  if (problems.length) throw new Error(problems.join("\n"));
  step("passed");
} catch (e) {
  failed = true;
  console.error(e.stack || String(e));
  for (const p of problems) console.error(p);
  const page = context.pages()[0];
  if (page) await page.screenshot({ path: join(artifacts, "failure.png"), fullPage: true }).catch(() => {});
} finally {
  await context.close();
  await rm(profile, { recursive: true, force: true });
  console.log("screenshots in " + artifacts);
}
process.exit(failed ? 1 : 0);

// forgive drops the console's report of the one failed request a step
// provoked on purpose.
function forgive(status) {
  const i = problems.findIndex((p) => p.includes(`status of ${status}`));
  if (i >= 0) problems.splice(i, 1);
}

// row finds a sandbox's row in the list.
function row(page, id) {
  return page.locator(`#rows tr[data-id="${id}"]`);
}

// waitState waits until the sandbox's row shows the state.
async function waitState(page, id, state) {
  await row(page, id).locator(`.state-${state}`).waitFor();
}

// exec runs a command in the console's sandbox and returns its output once
// the exit code shows.
async function exec(page, cmd, want) {
  await page.getByLabel("Command, run by").fill(cmd);
  await page.locator("#run:not([disabled])").click();
  await page.waitForFunction(() => /^exit /.test(document.getElementById("exit").textContent));
  const out = await page.locator("#out").textContent();
  const exit = await page.locator("#exit").textContent();
  if (exit !== "exit 0" || !out.includes(want)) throw new Error(`${cmd}: ${exit}, output ${JSON.stringify(out)}`);
  return out;
}

async function shoot(page, name) {
  for (const [w, h] of [[1280, 800], [400, 800]]) {
    await page.setViewportSize({ width: w, height: h });
    await page.screenshot({ path: join(artifacts, `${name}-${w}x${h}.png`), fullPage: true });
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    if (wide > w) throw new Error(`${name}: the page is ${wide} px wide in a ${w} px window`);
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

async function run(page) {
  step("open " + url);
  await page.goto(url + "/");
  if (!page.url().endsWith("/test")) throw new Error("/ did not lead to /test but to " + page.url());
  await shoot(page, "0-key");
  if ((await page.evaluate(() => document.activeElement.id)) !== "key") throw new Error("the key field does not start focused");
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, button, textarea")]
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.textContent.trim())
    .map((e) => e.outerHTML));
  if (unlabelled.length) throw new Error("controls without a label: " + unlabelled.join(", "));

  step("wrong key, then the right one");
  await page.getByLabel("API key").fill("not-the-key");
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator("#key-err", { hasText: "invalid API key" }).waitFor();
  // The 401 is the point of this step: Chromium logs it as a failed resource.
  forgive(401);
  await page.getByLabel("API key").fill(apiKey);
  await page.getByRole("button", { name: "Connect" }).click();
  await page.locator("#keystate").waitFor();
  await page.locator("#sb-empty", { hasText: "No sandboxes yet" }).waitFor();
  step("the key outlives a reload of the tab");
  await page.reload();
  await page.locator("#keystate").waitFor();
  await page.locator("#sb-empty", { hasText: "No sandboxes yet" }).waitFor();

  step("create a sandbox");
  await page.getByLabel("Timeout (s)").fill("600");
  await page.getByRole("button", { name: "Create sandbox" }).click();
  // Whichever shows first, the row or the error; neither wait may reject
  // unhandled once the other has won.
  const shown = await Promise.race([
    page.locator("#rows tr").first().waitFor().then(() => "row", (e) => e),
    page.locator("#create-err:not(:empty)").waitFor().then(() => "error", () => "none"),
  ]);
  if (shown instanceof Error) throw shown;
  if (shown === "error") throw new Error("create: " + (await page.locator("#create-err").textContent()));
  const first = await page.locator("#rows tr").first().getAttribute("data-id");
  await waitState(page, first, "running");
  step("created " + first);

  step("echo hello");
  await exec(page, "echo hello", "hello\n");

  step("the page follows the event stream, and its charts draw");
  await page.locator("#live", { hasText: "live" }).waitFor();
  await page.waitForFunction((id) => {
    const card = document.querySelector(`.usage-card[data-id="${id}"]`);
    const drawn = (kind) => {
      const svg = card && card.querySelector("svg." + kind);
      return svg && +svg.dataset.points >= 2 && svg.querySelector("polyline").getAttribute("points").trim().split(" ").length >= 2;
    };
    return drawn("cpu") && drawn("mem") && /%$/.test(card.querySelector(".chart .val").textContent);
  }, first);
  await page.waitForFunction(() => +document.getElementById("latency-chart").dataset.points >= 1 &&
    document.querySelectorAll("#latency-chart line").length >= 1);
  const latencyText = await page.locator("#latency-val").textContent();
  if (!/^1 · median \d+ ms/.test(latencyText)) throw new Error("create latency reads " + JSON.stringify(latencyText));
  await shoot(page, "1-charts");

  step("files: upload, list, download, delete");
  await page.getByLabel("Directory", { exact: true }).fill("/tmp");
  await page.getByRole("button", { name: "List", exact: true }).click();
  const upload = { name: "hello-ü.txt", mimeType: "text/plain", buffer: Buffer.from("uploaded from the browser ✓\n") };
  await page.getByLabel("Upload into the directory").setInputFiles(upload);
  await page.getByRole("button", { name: "Upload", exact: true }).click();
  await page.locator('#frows tr[data-name="hello-ü.txt"]').waitFor();
  await exec(page, "cat '/tmp/hello-ü.txt'", "uploaded from the browser ✓\n");
  const [dl] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download hello-ü.txt" }).click()]);
  const got = await readFile(await dl.path(), "utf8");
  if (got !== "uploaded from the browser ✓\n") throw new Error("downloaded " + JSON.stringify(got));
  await page.getByRole("button", { name: "Delete hello-ü.txt" }).click();
  await page.locator('#frows tr[data-name="hello-ü.txt"]').waitFor({ state: "detached" });

  step("terminal: a command and its output");
  await page.getByRole("button", { name: "Open terminal" }).click();
  await page.locator("#term-status", { hasText: "connected" }).waitFor();
  // bash's prompt (the default user's: bash-5.2$), drawn by xterm.js.
  await page.waitForFunction(() => /bash-[0-9.]+\$/.test(document.querySelector("#term .xterm-rows")?.textContent || ""));
  await page.keyboard.type("echo term-$((6*7)); exit 4");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector("#term .xterm-rows").textContent.includes("term-42"));
  await page.locator("#term-status", { hasText: "exited with code 4" }).waitFor();
  await shoot(page, "1-files-terminal");
  await page.getByRole("button", { name: "Close", exact: true }).click();

  step("pause");
  await page.getByRole("button", { name: "Pause " + first }).click();
  await waitState(page, first, "paused");
  if (!(await page.locator("#run").isDisabled())) throw new Error("Run stays enabled on a paused sandbox");
  step("resume");
  await page.getByRole("button", { name: "Resume " + first }).click();
  await waitState(page, first, "running");
  step("run a command from the keyboard");
  await page.getByLabel("Command, run by").fill("echo again; uname -s");
  await page.getByLabel("Command, run by").press("Enter");
  await page.waitForFunction(() => /^exit /.test(document.getElementById("exit").textContent));
  const again = await page.locator("#out").textContent();
  if (!again.includes("again\nLinux\n") || (await page.locator("#exit").textContent()) !== "exit 0") throw new Error("after resume: " + again);

  step("snapshot");
  await page.getByRole("button", { name: "Snapshot " + first }).click();
  if ((await page.evaluate(() => document.activeElement.id)) !== "snap-name") throw new Error("the snapshot dialog does not focus its name field");
  await page.getByLabel("Snapshot name").fill("web-snap");
  await page.getByRole("button", { name: "Take snapshot" }).click();
  await page.locator('#snaps li[data-name="web-snap"]').waitFor();
  if (await page.locator("#snapdlg").evaluate((d) => d.open)) throw new Error("the snapshot dialog stayed open");

  step("the create form offers the snapshot");
  await page.getByLabel("From", { exact: true }).selectOption("s:web-snap");
  if (!(await page.getByLabel("vCPUs").isDisabled())) throw new Error("vCPUs stay editable for a snapshot");
  await page.getByLabel("From", { exact: true }).selectOption("t:base");

  step("new sandbox from the snapshot");
  await page.getByRole("button", { name: "New sandbox from snapshot web-snap" }).click();
  await page.locator("#rows tr").nth(1).waitFor();
  const second = await page.locator("#rows tr").nth(1).getAttribute("data-id");
  await waitState(page, second, "running");
  await row(page, second).getByText("from snapshot web-snap").waitFor();
  step("created " + second);
  await exec(page, "echo from-snapshot", "from-snapshot\n");
  step("output streams while the command runs");
  await page.getByRole("button", { name: "Open the console of " + first }).click();
  await page.getByLabel("Command, run by").fill("echo first; sleep 2; echo second");
  await page.getByLabel("Command, run by").press("Enter");
  // The first line of the console echoes the command itself.
  await page.waitForFunction(() => document.getElementById("out").textContent.split("\n").slice(1).includes("first"));
  const early = await page.locator("#exit").textContent();
  const sofar = await page.locator("#out").textContent();
  if (early !== "running…" || sofar.split("\n").slice(1).includes("second")) throw new Error(`output was not streamed: ${early}, ${JSON.stringify(sofar)}`);
  await page.locator("#exit", { hasText: "exit 0" }).waitFor();
  await exec(page, "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo oops >&2", "line 3\n");

  step("fork");
  await page.getByRole("button", { name: "Fork " + first }).click();
  await page.locator("#rows tr").nth(2).waitFor();
  const third = await page.locator("#rows tr").nth(2).getAttribute("data-id");
  await waitState(page, third, "running");
  step("forked " + third);
  await shoot(page, "1-running");

  step("a refused delete shows the API's message");
  await page.getByRole("button", { name: "Delete snapshot web-snap" }).click();
  await page.locator("#snap-err", { hasText: "snapshot_in_use" }).waitFor();
  forgive(409);

  step("destroy all three");
  for (const id of [third, second, first]) {
    await page.getByRole("button", { name: "Destroy " + id }).click();
    await row(page, id).waitFor({ state: "detached" });
  }
  await page.locator("#sb-empty", { hasText: "No sandboxes yet" }).waitFor();

  step("delete the snapshot");
  await page.getByRole("button", { name: "Delete snapshot web-snap" }).click();
  await page.locator("#snaps", { hasText: "No snapshots yet" }).waitFor();
  await shoot(page, "2-empty");
}
