// Usage: node openai_check.mjs BASE_URL [TOKEN]
// Runs the official `openai` JS client against BASE_URL/v1 (foreman, or any
// Ollama) and prints one JSON object describing what it saw; any exception
// is reported, not thrown.
import OpenAI from "openai";

const [base, token] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: token || "ollama", maxRetries: 0 });

async function attempt(name, call) {
  try {
    return [name, { ok: true, value: await call() }];
  } catch (error) {
    return [name, { ok: false, error: String(error.message ?? error), status: error.status }];
  }
}

const messages = [{ role: "user", content: "hello from javascript" }];
const results = Object.fromEntries([
  await attempt("chat", async () => {
    const reply = await client.chat.completions.create({ model: "llama3.2", messages });
    const [choice] = reply.choices;
    return { object: reply.object, content: choice.message.content, finish_reason: choice.finish_reason };
  }),
  await attempt("chat_stream", async () => {
    const stream = await client.chat.completions.create({ model: "llama3.2", messages, stream: true });
    const parts = [];
    const arrivals = [];
    let finish = null;
    for await (const chunk of stream) {
      arrivals.push(performance.now());
      const choice = chunk.choices[0];
      if (choice?.delta?.content) parts.push(choice.delta.content);
      if (choice?.finish_reason) finish = choice.finish_reason;
    }
    return {
      chunks: parts.length,
      content: parts.join(""),
      finish_reason: finish,
      spread_ms: arrivals.length ? arrivals[arrivals.length - 1] - arrivals[0] : 0,
    };
  }),
  await attempt("unknown_model", async () => client.chat.completions.create({ model: "no-such-model", messages })),
]);
console.log(JSON.stringify(results));
