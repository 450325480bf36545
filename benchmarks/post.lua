-- wrk script: POST a JSON body with the API token, and print the latency percentiles as JSON.
-- (No response() callback: it would make wrk hand every answer to Lua. Non-2xx/3xx answers
-- are counted by wrk itself in errors.status.)
--   LMJ_TOKEN: the server's token; LMJ_BODY: the request body (default {"x": 1})
wrk.method = "POST"
wrk.body = os.getenv("LMJ_BODY") or '{"x": 1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "token " .. (os.getenv("LMJ_TOKEN") or "")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, e.connect + e.read + e.write + e.status + e.timeout))
end
