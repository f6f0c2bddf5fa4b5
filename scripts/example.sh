#!/usr/bin/env bash
# Run the quickstart example app (examples/quickstart) on SQLite, from a fresh clone:
# creates .venv, installs the library with uvicorn, serves on http://127.0.0.1:8000.
#   scripts/example.sh          serve until Ctrl-C
#   scripts/example.sh --smoke  serve, send a few requests, print the answers, stop
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PORT="${PORT:-8000}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet -e . uvicorn
export DATABASE_URL="${DATABASE_URL:-sqlite:///./examples/quickstart/quickstart.db}"
SERVE=(.venv/bin/python -m uvicorn app:app --app-dir examples/quickstart --host 127.0.0.1 --port "$PORT")
if [ "${1:-}" != "--smoke" ]; then
  exec "${SERVE[@]}"
fi
"${SERVE[@]}" --log-level warning &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
.venv/bin/python - "$PORT" <<'PY'
import json, sys, time, urllib.error, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
for _ in range(100):
    try:
        urllib.request.urlopen(base + "/docs")
        break
    except OSError:
        time.sleep(0.1)
title = f"hello {time.time():.0f}"
for method, path, body in [("POST", "/notes", {"title": title}), ("POST", "/notes", {"title": title}),
                           ("GET", "/notes", None), ("GET", "/notes/999999", None)]:
    status, answer = call(method, path, body)
    print(method, path, status, json.dumps(answer)[:200])
PY
