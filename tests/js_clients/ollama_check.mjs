// ollama-js (the npm package `ollama`, as pinned in package.json), unchanged, against the real gateway.
//
// Usage: node ollama_check.mjs '{"host": "http://127.0.0.1:PORT/ollama", "key": ..., "wrongKey": ..., "model": ...}'
// Prints one JSON line: one entry per call, each {"result": ...} or {"error": {name, message, status_code}},
// so that one failing call does not hide what the others did. tests/test_more_clients.py checks it.
import { Ollama } from "ollama";

const { host, key, wrongKey, model } = JSON.parse(process.argv[2]);
const messages = [{ role: "user", content: "hi" }];

async function attempt(call) {
  try {
    return { result: await call() };
  } catch (error) {
    return { error: { name: error.name, message: error.message, status_code: error.status_code ?? null } };
  }
}

const part = (p) => ({ content: p.message?.content, response: p.response, done: p.done, done_reason: p.done_reason,
                       prompt_eval_count: p.prompt_eval_count, eval_count: p.eval_count });

const client = new Ollama({ host, headers: { Authorization: `Bearer ${key}` } });
const out = { host: client.config.host };
out.list = await attempt(async () => (await client.list()).models.map((m) => m.model));
out.chat = await attempt(async () => {
  const answer = await client.chat({ model, messages });
  return { role: answer.message.role, ...part(answer) };
});
out.chatStream = await attempt(async () => {
  const parts = [];
  for await (const p of await client.chat({ model, messages, stream: true })) parts.push(part(p));
  return parts;
});
out.generateStream = await attempt(async () => {
  const parts = [];
  for await (const p of await client.generate({ model, prompt: "say hello", stream: true })) parts.push(part(p));
  return parts;
});

const wrong = new Ollama({ host, headers: { Authorization: `Bearer ${wrongKey}` } });
out.wrongKeyList = await attempt(async () => (await wrong.list()).models.map((m) => m.model));
out.wrongKeyChatStream = await attempt(async () => {
  const parts = [];
  for await (const p of await wrong.chat({ model, messages, stream: true })) parts.push(part(p));
  return parts;
});

process.stdout.write(JSON.stringify(out) + "\n");
