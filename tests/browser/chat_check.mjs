// Open a page in Debian's Chromium and hold a conversation through the README's createChat(), as a frontend would.
//
// Usage: node chat_check.mjs '{"pageUrl": ..., "gatewayUrl": ..., "apiKey": ..., "system": ..., "questions": [...]}'
// The page at pageUrl must define createChat (tests/test_readme_chat.py serves one). In the page it runs
//   const say = createChat(gatewayUrl, apiKey, system);
//   await say(questions[0], onText); await say(questions[1], onText); ...
// one turn after the other, and prints one JSON line: {origin, turns}, where each turn is
// {question, texts, times, answer, returnedAt} or, when say() throws, {question, texts, times, error}
// (no later turn is tried). times and returnedAt are milliseconds from the first call, read with
// performance.now(); texts are the pieces onText received, in order.
import { runInPage } from "./chromium.mjs";

await runInPage("chat-check-", async ({ gatewayUrl, apiKey, system, questions }) => {
  if (typeof createChat !== "function") return { error: "the page defines no createChat()" };
  const say = createChat(gatewayUrl, apiKey, system);
  const turns = [];
  const started = performance.now();
  for (const question of questions) {
    const turn = { question, texts: [], times: [] };
    turns.push(turn);
    try {
      turn.answer = await say(question, (text) => {
        turn.texts.push(text);
        turn.times.push(performance.now() - started);
      });
      turn.returnedAt = performance.now() - started;
    } catch (error) {
      turn.error = `${error.name}: ${error.message}`;
      break;
    }
  }
  return { turns };
});
