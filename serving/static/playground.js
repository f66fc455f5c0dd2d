// The tagi playground (GET /): a page that drives the public HTTP API exactly as any client would,
// so what it shows is what POST /v1/adapters and POST /v1/generate answer. Plain browser
// JavaScript, no build step and nothing fetched from elsewhere. Server text is only ever put on
// the page as textContent, never parsed as HTML. URLs are relative, so the page also works
// behind a proxy that serves the API under a path prefix.
"use strict";

const $ = (id) => document.getElementById(id);

/** A failed call: the HTTP status and the server's own message. */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function requestHeaders(json) {
  const headers = {};
  if (json) headers["Content-Type"] = "application/json";
  const key = $("api-key").value;
  if (key) headers["X-API-Key"] = key;
  return headers;
}

/** The server's error message ({"error": {"message"}}), or the status line when the body has none. */
async function errorOf(response) {
  if (response.status === 401) $("api-key-row").hidden = false;
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") message = body.error.message;
  } catch {
    // not JSON (a proxy's page): keep the status line
  }
  return new ApiError(response.status, message);
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: requestHeaders(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** The data of each server-sent event of a response, as it arrives (any of the three line endings). */
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const text = pending + value;
    // A chunk may end between the \r and \n of one line ending: keep a trailing \r for the next one.
    const cut = text.endsWith("\r") ? text.length - 1 : text.length;
    const lines = text.slice(0, cut).split(/\r\n|\r|\n/);
    pending = lines.pop() + text.slice(cut);
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
    }
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(err) {
  $("error").textContent = err instanceof ApiError ? err.message : `the request failed: ${err.message}`;
  $("error").hidden = false;
  setStatus(err instanceof ApiError ? `failed (HTTP ${err.status})` : "failed");
}

function milliseconds(ms) {
  return `${Math.round(ms).toLocaleString("en-US")} ms`;
}

function showAdapter(adapter) {
  $("adapter-id").textContent = adapter.adapter_id;
  $("adapter-size").textContent = `${adapter.num_parameters.toLocaleString("en-US")} parameters`;
  $("adapter-time").textContent = `${milliseconds(adapter.generation_ms)}${adapter.cached ? " (cached)" : ""}`;
  $("generation-time").textContent = "";
  const link = $("download");
  link.href = `v1/adapters/${encodeURIComponent(adapter.adapter_id)}/peft`;
  link.download = `${adapter.adapter_id}.tar.gz`;
  $("adapter").hidden = false;
}

/** One list item per input: the input, then its output as it grows. Returns the output elements. */
function outputRows(inputs) {
  const list = $("outputs");
  list.replaceChildren();
  return inputs.map((input) => {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "input";
    label.textContent = input;
    const output = document.createElement("output");
    output.className = "output";
    const finish = document.createElement("span");
    finish.className = "finish";
    item.append(label, output, finish);
    list.append(item);
    return { output, finish };
  });
}

/** The complete answer (the non-streamed body, or the stream's last JSON event) replaces the deltas. */
function showFinal(rows, body) {
  body.outputs.forEach((text, i) => {
    rows[i].output.textContent = text;
    const reason = body.finish_reasons ? body.finish_reasons[i] : undefined;
    rows[i].finish.textContent = reason ? `finish: ${reason}` : "";
  });
}

function generateBody(adapterId, inputs) {
  const body = { adapter_id: adapterId, inputs };
  const maxNewTokens = $("max-new-tokens").value;
  if (maxNewTokens !== "") body.max_new_tokens = Number(maxNewTokens); // the server checks the range
  const fusion = $("fusion").value;
  if (fusion !== "") body.fusion = fusion === "true";
  if ($("stream").checked) body.stream = true;
  return body;
}

/** Reads an SSE answer: {"deltas"} per decoding step, then the full body, then [DONE]. */
async function readStream(response, rows) {
  let final = null;
  for await (const data of sseData(response)) {
    if (data === "[DONE]") break;
    const event = JSON.parse(data);
    if (event.error) throw new ApiError(event.error.code, event.error.message);
    if (event.deltas) {
      event.deltas.forEach((delta, i) => {
        if (delta) rows[i].output.textContent += delta;
      });
    } else {
      final = event;
    }
  }
  if (final === null) throw new Error("the stream ended before the answer was complete");
  return final;
}

async function run(event) {
  event.preventDefault();
  const main = $("playground");
  main.dataset.state = "running";
  $("run").disabled = true;
  $("error").hidden = true;
  $("adapter").hidden = true;
  $("outputs").replaceChildren();
  try {
    setStatus("generating the adapter…");
    const adapter = await (await call("POST", "v1/adapters", { instruction: $("instruction").value })).json();
    showAdapter(adapter);
    const inputs = $("inputs").value.split(/\r?\n/).filter((line) => line.trim() !== "");
    const rows = outputRows(inputs);
    setStatus("generating the outputs…");
    const started = performance.now();
    const response = await call("POST", "v1/generate", generateBody(adapter.adapter_id, inputs));
    const streamed = (response.headers.get("Content-Type") || "").startsWith("text/event-stream");
    const body = streamed ? await readStream(response, rows) : await response.json();
    showFinal(rows, body);
    $("generation-time").textContent = milliseconds(performance.now() - started);
    setStatus(body.usage ? `done: ${body.usage.completion_tokens} tokens generated` : "done");
    main.dataset.state = "done";
  } catch (err) {
    showError(err);
    main.dataset.state = "error";
  } finally {
    $("run").disabled = false;
  }
}

/** A plain link cannot send the API key: with a key, fetch the archive and save it from memory. */
async function download(event) {
  const key = $("api-key").value;
  if (!key) return;
  event.preventDefault();
  const link = event.currentTarget;
  try {
    const blob = await (await call("GET", link.getAttribute("href"))).blob();
    const saver = document.createElement("a");
    saver.href = URL.createObjectURL(blob);
    saver.download = link.download;
    saver.click();
    setTimeout(() => URL.revokeObjectURL(saver.href), 10000);
  } catch (err) {
    showError(err);
  }
}

/** The server's limits and defaults from /info; a 401 there reveals the key field. */
async function describeServer() {
  try {
    const info = await (await call("GET", "info")).json();
    const model = info.model || {};
    if (Number.isInteger(model.max_new_tokens)) $("max-new-tokens").max = model.max_new_tokens;
    if (typeof model.fusion_default === "boolean") {
      $("fusion").options[0].textContent = `checkpoint default (${model.fusion_default ? "on" : "off"})`;
    }
  } catch {
    // the page works without /info: the server still checks every value
  }
}

$("run-form").addEventListener("submit", run);
$("download").addEventListener("click", download);
$("api-key").addEventListener("change", describeServer);
describeServer();
