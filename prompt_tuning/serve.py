r"""Serve many tasks from one frozen model: `python -m prompt_tuning.serve`.

  python -m prompt_tuning.serve --model_gin=gin/models/byte_t5_tiny.gin \
    --base=/tmp/smoke/base/checkpoints/400/params \
    --prompt last_digit=/tmp/smoke/prompt --prompt other=/tmp/other.npy \
    --max_input_length=16 --max_decode_length=4 [--port=8080] [--capacity=64]

The frozen model is loaded once; each task of the prompt library (`--prompt TASK=PATH`, a
`.npy` prompt or a run folder, repeatable; or `--library lib.json`, `{"task": "path"}`) is one
row of a prompt table. Endpoints (JSON in, JSON out):

  POST /predict  {"task": "t", "inputs": "text"}                  -> {"output": "...", ...}
                 {"task": "t", "inputs": "text", "decoding": {"method": "beam",
                  "num_decodes": 4}}  (greedy default; beam; sample with temperature/topk/topp)
                 {"task": "t", "inputs": "text", "choices": ["yes", "no"]}
                                                  -> {"choice": "no", "index": 1, "scores": [..]}
  POST /prompts  {"task": "t", "path": "/p.npy"} adds (or with "replace": true, swaps) a
                 prompt while serving; the table has a fixed capacity, so nothing recompiles.
  GET  /health   {"status": "ok", "tasks": [...], "queued": n, "batches": n, ...}

Concurrent requests wait in a bounded micro-batching queue (`--max_wait_ms`, `--max_batch`) and
requests for different tasks share one forward pass, each row with its task's prompt. Errors
answer with one sentence: 400 malformed JSON or fields, 404 unknown task, 413 over-long input,
503 overloaded (queue full; retry later), 500 a failure inside the model.

Built on the standard library's `ThreadingHTTPServer`: the model runs on one worker thread
whatever the front end, so an ASGI stack (starlette/uvicorn, not installed here) would add
dependencies without adding throughput; the handler threads only parse, queue and wait.
Binds 127.0.0.1 unless `--host` says otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import sys
import threading
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from prompt_tuning.serving import batcher as batcher_lib
from prompt_tuning.serving import engine as engine_lib

MAX_BODY_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 120.0


class _HTTPServer(http.server.ThreadingHTTPServer):
  # The default listen backlog (5) drops connections from more concurrent clients than that,
  # which then wait a full second for the SYN retry; the request queue bounds load instead.
  request_queue_size = 128
  daemon_threads = True


@dataclasses.dataclass
class Server:
  """A running server: the HTTP front, the batcher, the engine (and so the bank)."""

  http: http.server.ThreadingHTTPServer
  batcher: batcher_lib.MicroBatcher
  engine: engine_lib.Engine
  thread: threading.Thread

  @property
  def url(self) -> str:
    host, port = self.http.server_address[:2]
    return f"http://{host}:{port}"

  def close(self) -> None:
    self.http.shutdown()
    self.http.server_close()
    self.batcher.stop()
    self.thread.join(10)


def _handler(engine: engine_lib.Engine, batcher: batcher_lib.MicroBatcher, load_prompt):
  """The request handler class bound to one engine and batcher."""

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      del format, args  # quiet: a load test would print one line per request

    def _answer(self, status: int, body: Mapping[str, Any]) -> None:
      data = json.dumps(body).encode("utf-8")
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
      self._answer(status, {"error": message})

    def _body(self) -> Any:
      length = int(self.headers.get("Content-Length") or 0)
      if length > MAX_BODY_BYTES:
        raise engine_lib.RequestError(413, f"The request body is {length} bytes; at most "
                                           f"{MAX_BODY_BYTES} are accepted.")
      raw = self.rfile.read(length)
      try:
        return json.loads(raw.decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise engine_lib.RequestError(400, f"The request body is not valid JSON ({error}).") \
            from None

    def do_GET(self):  # pylint: disable=invalid-name
      if self.path.rstrip("/") != "/health":
        return self._error(404, f"No endpoint GET {self.path}; try /health.")
      return self._answer(200, {"status": "ok", "tasks": sorted(engine.bank.names),
                                "capacity": engine.bank.capacity, "queued": batcher.queued(),
                                "batches": batcher.batches, "rows": batcher.rows})

    def do_POST(self):  # pylint: disable=invalid-name
      try:
        if self.path.rstrip("/") == "/predict":
          return self._answer(200, self._predict())
        if self.path.rstrip("/") == "/prompts":
          return self._answer(200, self._add_prompt())
        return self._error(404, f"No endpoint POST {self.path}; try /predict or /prompts.")
      except engine_lib.RequestError as error:
        return self._error(error.status, str(error))
      except batcher_lib.Overloaded as error:
        return self._error(503, str(error))
      except Exception as error:  # pylint: disable=broad-except  (keep serving; say what failed)
        return self._error(500, f"The model failed on this request: "
                                f"{str(error).splitlines()[0] if str(error) else type(error)}")

    def _predict(self) -> Dict[str, Any]:
      body = self._body()
      key, payload, rows = engine.parse(body)
      answer = batcher.submit(key, payload, rows).result(timeout=REQUEST_TIMEOUT_S)
      return {"task": body["task"], **answer}

    def _add_prompt(self) -> Dict[str, Any]:
      body = self._body()
      if not isinstance(body, dict) or not isinstance(body.get("task"), str) or \
          not isinstance(body.get("path"), str):
        raise engine_lib.RequestError(400, "POST /prompts needs {\"task\": str, \"path\": str}.")
      try:
        row = engine.bank.add(body["task"], load_prompt(body["path"]),
                              replace=bool(body.get("replace", False)))
      except (ValueError, FileNotFoundError) as error:
        raise engine_lib.RequestError(400, str(error).splitlines()[0]) from None
      return {"task": body["task"], "row": row, "tasks": sorted(engine.bank.names)}

  return Handler


def start(engine: engine_lib.Engine, *, host: str = "127.0.0.1", port: int = 0,
          max_wait_s: float = 0.005, max_queue: int = 256, start_worker: bool = True,
          load_prompt=None) -> Server:
  """Starts the HTTP server (port 0: any free port) and, unless told not to, the worker."""
  if load_prompt is None:
    from prompt_tuning.methods.ensemble import loading  # pylint: disable=g-import-not-at-top
    load_prompt = loading.load_prompt
  batcher = engine_lib.make_batcher(engine, max_wait_s=max_wait_s, max_queue=max_queue)
  front = _HTTPServer((host, port), _handler(engine, batcher, load_prompt))
  thread = threading.Thread(target=front.serve_forever, name="http", daemon=True)
  thread.start()
  if start_worker:
    batcher.start()
  return Server(http=front, batcher=batcher, engine=engine, thread=thread)


def _library(args: argparse.Namespace) -> Dict[str, str]:
  library: Dict[str, str] = {}
  if args.library:
    with open(args.library) as f:
      library.update(json.load(f))
  for item in args.prompt:
    task, sep, path = item.partition("=")
    if not sep or not task:
      raise ValueError(f"--prompt {item!r} is malformed; expected TASK=PATH.")
    library[task] = path
  if not library:
    raise ValueError("No prompts: give --prompt TASK=PATH (repeatable) or --library FILE.")
  return library


def build(args: argparse.Namespace) -> Tuple[engine_lib.Engine, Any]:
  """Loads the prompts (first: a bad file fails before the model loads), model and bank."""
  from prompt_tuning.methods.ensemble import bank as bank_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.ensemble import loading  # pylint: disable=g-import-not-at-top
  library = _library(args)
  prompts = dict(zip(library, loading.load_prompts(list(library.values()))))
  length = next(iter(prompts.values())).shape[0]
  model, vocabulary = loading.model_from_gin(args.model_gin, args.gin)
  frozen = loading.frozen_params(
      model.module.config, args.base, prompt_length=length,
      lengths={"encoder_input_tokens": args.max_input_length,
               "decoder_input_tokens": args.max_decode_length})
  bank = bank_lib.PromptBank(config=model.module.config, frozen_params=frozen,
                             prompt_length=length, capacity=max(args.capacity, len(prompts)))
  for task, prompt in prompts.items():
    bank.add(task, prompt)
  engine = engine_lib.Engine(bank, vocabulary, max_input_length=args.max_input_length,
                             max_decode_length=args.max_decode_length, max_rows=args.max_batch)
  return engine, loading.load_prompt


def main(argv: Sequence[str]) -> None:
  parser = argparse.ArgumentParser(prog="prompt_tuning.serve", description=__doc__.split("\n")[0])
  parser.add_argument("--model_gin", action="append", required=True)
  parser.add_argument("--gin", action="append", default=[], help="extra gin binding NAME=VALUE")
  parser.add_argument("--base", required=True, help="frozen base checkpoint or .npz")
  parser.add_argument("--prompt", action="append", default=[], help="TASK=PATH (.npy or run)")
  parser.add_argument("--library", default=None, help='JSON file {"task": "path"}')
  parser.add_argument("--capacity", type=int, default=64, help="prompt table rows")
  parser.add_argument("--max_input_length", type=int, default=512)
  parser.add_argument("--max_decode_length", type=int, default=16)
  parser.add_argument("--max_batch", type=int, default=32, help="rows per forward pass")
  parser.add_argument("--max_wait_ms", type=float, default=5.0)
  parser.add_argument("--max_queue", type=int, default=256)
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8080)
  args = parser.parse_args(argv)
  engine, load_prompt = build(args)
  server = start(engine, host=args.host, port=args.port, max_wait_s=args.max_wait_ms / 1000,
                 max_queue=args.max_queue, load_prompt=load_prompt)
  print(f"Serving {sorted(engine.bank.names)} on {server.url}", flush=True)
  try:
    server.thread.join()
  except KeyboardInterrupt:
    server.close()


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except (ValueError, FileNotFoundError) as error:
    print(f"Error: {str(error).splitlines()[0]}", file=sys.stderr)
    raise SystemExit(1) from None
