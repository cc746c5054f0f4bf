// Open a page in Debian's Chromium and call the README's streamAnswer() there, as a frontend would.
//
// Usage: node stream_check.mjs '{"pageUrl": ..., "gatewayUrl": ..., "apiKey": ..., "prompt": ...}'
// The page at pageUrl must define streamAnswer (tests/test_browser.py serves one). Prints one JSON
// line: {origin, texts, times, final} on success or {origin, texts, times, error} when the call
// throws; times are milliseconds from the call to each onText, read with performance.now().
import { runInPage } from "./chromium.mjs";

await runInPage("stream-check-", async ({ gatewayUrl, apiKey, prompt }) => {
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
});
