// The chat page of hwlm serve: streams /v1/chat/completions with the key typed in, keeps the
// conversation for multi-turn, and shows time to first token and tokens per second live.
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];  // [{role, content}], sent whole with each turn
let model = null;

function headers() {
  return { "Content-Type": "application/json", "Authorization": "Bearer " + $("key").value.trim() };
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("b");
  who.textContent = role === "user" ? "You: " : role === "assistant" ? "Model: " : "Error: ";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return body;
}

async function loadModel() {
  const r = await fetch("/v1/models", { headers: headers() });
  if (!r.ok) throw new Error((await r.json()).error.message);
  model = (await r.json()).data[0].id;
  $("model").textContent = "model: " + model;
}

async function send(text) {
  if (!model) await loadModel();
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.parentElement.dataset.state = "streaming";
  const start = performance.now();
  let first = null, tokens = 0, answer = "";
  const r = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model, messages: history, stream: true, max_tokens: 64,
                           stream_options: { include_usage: true } }),
  });
  if (!r.ok) throw new Error((await r.json()).error.message);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {  // one server-sent event per blank line
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (first === null) first = performance.now();
          tokens += 1;
          answer += piece;
          out.textContent = answer;
        }
      }
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      const now = performance.now();
      const rate = first !== null && now > first ? (tokens - 1) / ((now - first) / 1000) : 0;
      $("stats").textContent = "TTFT: " + (first === null ? "-" : (first - start).toFixed(1)) + " ms · tokens/s: "
        + (rate > 0 ? rate.toFixed(1) : "-") + " · tokens: " + tokens;
    }
  }
  history.push({ role: "assistant", content: answer });
  out.parentElement.dataset.state = "done";
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  $("send").disabled = true;
  try {
    await send(text);
  } catch (err) {
    history.pop();
    addMessage("error", String(err.message || err)).parentElement.dataset.state = "done";
  } finally {
    $("send").disabled = false;
  }
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("form").requestSubmit(); }
});
$("clear").addEventListener("click", () => { history.length = 0; $("log").textContent = ""; });
