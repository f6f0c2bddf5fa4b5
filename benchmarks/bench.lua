-- wrk script for the benchmark: BENCH_ENDPOINT=read|write|list, BENCH_ROWS=seeded rows.
-- Counts what it sent and every 2xx / non-2xx answer, and prints one JSON line at the end
-- (prefixed BENCH_JSON) with those counts and wrk's latency percentiles in microseconds.
local endpoint = os.getenv("BENCH_ENDPOINT") or "read"
local rows = tonumber(os.getenv("BENCH_ROWS") or "1000")
local write_body = '{"name":"bench","price":7}'
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  sent, ok, bad = 0, 0, 0
  math.randomseed(os.time() + id)
  if endpoint == "write" then
    fixed = wrk.format("POST", "/items", {["Content-Type"] = "application/json"}, write_body)
  elseif endpoint == "list" then
    fixed = wrk.format("GET", "/items")
  end
end

function request()
  sent = sent + 1
  if fixed then
    return fixed
  end
  return wrk.format("GET", "/items/" .. math.random(1, rows))
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local total_sent, total_ok, total_bad = 0, 0, 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    total_ok = total_ok + thread:get("ok")
    total_bad = total_bad + thread:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "sent": %d, "ok": %d, "bad": %d, '
      .. '"socket_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, total_sent, total_ok, total_bad,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
