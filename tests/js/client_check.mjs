// Usage: node client_check.mjs BASE_URL [TOKEN]
// Runs the official `ollama` JS client against BASE_URL and prints one JSON
// object describing what it saw; any exception is reported, not thrown.
import { Ollama } from "ollama";

const [host, token] = process.argv.slice(2);
const client = new Ollama({
  host,
  headers: token ? { Authorization: `Bearer ${token}` } : {},
});

async function attempt(name, call) {
  try {
    return [name, { ok: true, value: await call() }];
  } catch (error) {
    return [name, { ok: false, error: String(error.message ?? error), status: error.status_code }];
  }
}

const messages = [{ role: "user", content: "hello from javascript" }];
const results = Object.fromEntries([
  await attempt("chat", async () => {
    const reply = await client.chat({ model: "llama3.2", messages });
    return { content: reply.message.content, done: reply.done, done_reason: reply.done_reason };
  }),
  await attempt("chat_stream", async () => {
    const parts = [];
    let last = null;
    for await (const part of await client.chat({ model: "llama3.2", messages, stream: true })) {
      parts.push(part.message.content);
      last = part;
    }
    return { chunks: parts.length, content: parts.join(""), done: last?.done };
  }),
  await attempt("generate", async () => (await client.generate({ model: "llama3.2", prompt: "hi" })).done),
  await attempt("embed", async () => (await client.embed({ model: "all-minilm", input: ["a", "b"] })).embeddings.length),
  await attempt("list", async () => (await client.list()).models.map((m) => m.name)),
  await attempt("ps", async () => (await client.ps()).models.map((m) => m.name)),
  await attempt("show", async () => (await client.show({ model: "llama3.2" })).details.family),
  await attempt("unknown_model", async () => client.chat({ model: "no-such-model", messages })),
]);
console.log(JSON.stringify(results));
