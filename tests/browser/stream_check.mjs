// Open a page in Debian's Chromium and call the README's streamAnswer() there, as a frontend would.
//
// Usage: node stream_check.mjs '{"pageUrl": ..., "gatewayUrl": ..., "apiKey": ..., "prompt": ...}'
// The page at pageUrl must define streamAnswer (tests/test_browser.py serves one). Prints one JSON
// line: {origin, texts, times, final} on success or {origin, texts, times, error} when the call
// throws; times are milliseconds from the call to each onText, read with performance.now().
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
];

const job = JSON.parse(process.argv[2]);
const timeout = job.timeoutMs ?? 30000;
const userDataDir = mkdtempSync(join(tmpdir(), "stream-check-"));
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, headless: true, args: ARGS, timeout,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeout);
  await page.goto(job.pageUrl);
  const result = await page.evaluate(async ({ gatewayUrl, apiKey, prompt }) => {
    if (typeof streamAnswer !== "function") return { error: "the page defines no streamAnswer()" };
    const texts = [];
    const times = [];
    const started = performance.now();
    try {
      const final = await streamAnswer(gatewayUrl, apiKey, prompt, (text) => {
        texts.push(text);
        times.push(performance.now() - started);
      });
      return { texts, times, final };
    } catch (error) {
      return { texts, times, error: `${error.name}: ${error.message}` };
    }
  }, job);
  result.origin = await page.evaluate(() => location.origin);
  process.stdout.write(JSON.stringify(result) + "\n");
} finally {
  await context?.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
