// Run one job in a page of Debian's Chromium (playwright-core, no downloaded browser) and print its result.
//
// runInPage(prefix, evaluate): reads the job (JSON) from argv[2], opens job.pageUrl in a fresh profile,
// runs evaluate(job) in the page, adds the page's origin, prints the result as one JSON line, and
// always closes the browser and removes the profile.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";
// Without the background-networking flags Chromium keeps dialling Google on this closed network.
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
];

export async function runInPage(prefix, evaluate) {
  const job = JSON.parse(process.argv[2]);
  const timeout = job.timeoutMs ?? 30000;
  const userDataDir = mkdtempSync(join(tmpdir(), prefix));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM, headless: true, args: ARGS, timeout,
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(timeout);
    await page.goto(job.pageUrl);
    const result = await page.evaluate(evaluate, job);
    result.origin = await page.evaluate(() => location.origin);
    process.stdout.write(JSON.stringify(result) + "\n");
  } finally {
    await context?.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}
