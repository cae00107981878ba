-- wrk script for bench/signup.py: POST /subscribe as our own form sends it (form token,
-- `Origin: null`), a new address and its own X-Forwarded-For address on every request.
-- DRIP_BENCH_TOKEN: the form token; DRIP_BENCH_RUN: a tag that keeps addresses unique across
-- the warm-up and the measured run. `done` prints one JSON line for bench/signup.py.
local token = os.getenv("DRIP_BENCH_TOKEN") or ""
local run = os.getenv("DRIP_BENCH_RUN") or "0"
-- DRIP_BENCH_CLOSE=1: a new connection per request, as nginx opens to its upstream by default.
local close = os.getenv("DRIP_BENCH_CLOSE") == "1"
local threads = 0
local counter = 0
id = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function request()
  counter = counter + 1
  local serial = id * 10000000 + counter
  local body = "email=b" .. run .. "x" .. serial .. "%40example.com"
    .. "&timezone=Asia%2FTokyo&form_token=" .. token
  local ip = string.format("10.%d.%d.%d", serial % 251, math.floor(serial / 251) % 251,
    math.floor(serial / 63001) % 251 + 1)
  local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Origin"] = "null",
    ["X-Forwarded-For"] = ip,
  }
  if close then
    headers["Connection"] = "close"
  end
  return wrk.format("POST", "/subscribe", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d,'
      .. ' "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
