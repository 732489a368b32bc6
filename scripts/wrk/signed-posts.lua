-- wrk script: POSTs pre-signed Meta webhook bodies, each once (an independent client for the
-- performance issue; wrk cannot compute an HMAC, so the signatures are made beforehand).
--   wrk -t2 -c64 -d30s --latency -s scripts/wrk/signed-posts.lua http://127.0.0.1:18080 -- BODIES THREADS
-- BODIES: one line per request, "sha256=<hex>\t<json>" (scripts/bench-wrk.py writes it).
-- Thread k of THREADS takes lines k, k+THREADS, …; past its last line it starts again (those
-- copies are duplicates: the summary counts them apart from the first pass).

local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  requests = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == id then
      local sig, body = line:match("^(%S+)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", "/webhooks/whatsapp", {
        ["Content-Type"] = "application/json",
        ["X-Hub-Signature-256"] = sig,
      }, body)
    end
    i = i + 1
  end
  n = 0
  wrapped = 0
end

function request()
  n = n + 1
  if n > #requests then
    n = 1
    wrapped = wrapped + 1
  end
  return requests[n]
end

function done(summary, latency, requests)
  io.write(string.format("wrk: requests %d, seconds %.2f, rate %.0f/s, non_2xx %d, socket_errors %d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout))
  io.write(string.format("wrk: ack latency ms p50 %.2f p90 %.2f p99 %.2f max %.2f\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
  for _, t in ipairs(threads) do
    if t:get("wrapped") and t:get("wrapped") > 0 then
      io.write("wrk: a thread ran out of bodies and repeated them (duplicates); write more\n")
      break
    end
  end
end
