// Run firmware code on genuine MicroPython (the official WebAssembly port) under Node.
//
// Usage:
//   node tests/micropython_wasm/run.mjs job.json        # a JSON file
//   node tests/micropython_wasm/run.mjs '{"code": ...}'  # JSON inline
//   node tests/micropython_wasm/run.mjs < job.json      # JSON on stdin
//
// Job: {"files": {"securenode/config.py": "<text>", "ca.der": {"base64": "..."}},
//       "code": "<python source>", "timeout_ms": 30000, "heapsize": 4194304}
// Files are written relative to "/", which is also the working directory, so the
// layout matches a board's flash (sys.path is ['', '.frozen', '/lib'] as on a board).
//
// Exit status: 0 the code ran; 1 it raised (traceback on stderr); 2 bad job or
// MicroPython failed to load; 3 timed out. Python's stdout is forwarded as it is
// printed, so output up to a hang or a crash is not lost.
//
// MicroPython runs in a worker thread: runPython() is synchronous, and a runaway
// loop (or micropython.heap_lock(), which hangs this port) would otherwise block
// the timer that is meant to stop it. heapsize is not a hard cap in this port.

import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { readFileSync } from "node:fs";

const PACKAGE = "@micropython/micropython-webassembly-pyscript";
const EXIT_OK = 0, EXIT_PYTHON = 1, EXIT_SETUP = 2, EXIT_TIMEOUT = 3;

function readJob() {
  const arg = process.argv[2];
  let text;
  if (arg === undefined || arg === "-") {
    text = readFileSync(0, "utf8");
  } else if (arg.trimStart().startsWith("{")) {
    text = arg;
  } else {
    text = readFileSync(arg, "utf8");
  }
  const job = JSON.parse(text);
  if (typeof job.code !== "string") {
    throw new Error('job needs "code" (a string of Python source)');
  }
  if (job.files !== undefined && (typeof job.files !== "object" || Array.isArray(job.files))) {
    throw new Error('job "files" must be an object mapping path -> text or {"base64": ...}');
  }
  return job;
}

function fail(status, message) {
  process.stderr.write("run.mjs: " + message + "\n");
  process.exit(status);
}

async function main() {
  let job;
  try {
    job = readJob();
  } catch (e) {
    fail(EXIT_SETUP, "bad job: " + e.message);
  }
  const timeoutMs = job.timeout_ms ?? 30000;
  const worker = new Worker(new URL(import.meta.url), { workerData: job });
  const timer = setTimeout(() => {
    process.stderr.write("run.mjs: timed out after " + timeoutMs + " ms\n");
    worker.terminate().then(() => process.exit(EXIT_TIMEOUT));
  }, timeoutMs);
  worker.on("message", (msg) => {
    if (msg.stdout !== undefined) {
      process.stdout.write(msg.stdout);
    } else if (msg.stderr !== undefined) {
      process.stderr.write(msg.stderr);
    } else if (msg.done !== undefined) {
      clearTimeout(timer);
      // Let stdout drain before exiting: it may be a pipe to the test.
      process.stdout.write("", () => process.exit(msg.done));
    }
  });
  worker.on("error", (e) => {
    clearTimeout(timer);
    fail(EXIT_SETUP, "worker failed: " + (e && e.stack ? e.stack : e));
  });
}

async function runInWorker(job) {
  const decoder = new TextDecoder();
  const pending = { stdout: [], stderr: [] };
  // Forward whole lines as they complete; a partial line is flushed at the end.
  const sink = (name) => (chunk) => {
    for (const byte of chunk) {
      pending[name].push(byte);
      if (byte === 10) flush(name);
    }
  };
  const flush = (name) => {
    if (pending[name].length) {
      parentPort.postMessage({ [name]: decoder.decode(new Uint8Array(pending[name])) });
      pending[name] = [];
    }
  };

  let mp;
  try {
    const { loadMicroPython } = await import(PACKAGE);
    mp = await loadMicroPython({
      heapsize: job.heapsize ?? 4 * 1024 * 1024,
      stdout: sink("stdout"),
      stderr: sink("stderr"),
      linebuffer: false,
    });
    for (const [path, content] of Object.entries(job.files ?? {})) {
      const full = "/" + path.replace(/^\/+/, "");
      const dir = full.slice(0, full.lastIndexOf("/"));
      if (dir) mp.FS.mkdirTree(dir);
      if (typeof content === "string") {
        mp.FS.writeFile(full, content);
      } else if (content && typeof content.base64 === "string") {
        mp.FS.writeFile(full, Buffer.from(content.base64, "base64"));
      } else {
        throw new Error("file " + path + ': content must be text or {"base64": ...}');
      }
    }
    mp.FS.chdir("/");
  } catch (e) {
    parentPort.postMessage({ stderr: "run.mjs: cannot set up MicroPython: " + (e.message || e) + "\n" });
    parentPort.postMessage({ done: EXIT_SETUP });
    return;
  }

  let status = EXIT_OK;
  try {
    mp.runPython(job.code);
  } catch (e) {
    flush("stdout");
    if (e.name === "PythonError") {
      if (e.type !== "SystemExit") {
        status = EXIT_PYTHON;
        parentPort.postMessage({ stderr: e.message.endsWith("\n") ? e.message : e.message + "\n" });
      }
    } else {
      status = EXIT_SETUP;
      parentPort.postMessage({ stderr: "run.mjs: MicroPython aborted: " + (e.stack || e) + "\n" });
    }
  }
  flush("stdout");
  flush("stderr");
  parentPort.postMessage({ done: status });
}

if (isMainThread) {
  await main();
} else {
  await runInWorker(workerData);
}
