-- wrk_v1.lua -- Segment HTTP Tracking API load for wrk 4.x: /v1/batch bodies of WRK_BATCH
-- track calls (or single /v1/track calls when WRK_BATCH=1), each with its own messageId,
-- as analytics-python sends them.
--
--   WRK_AUTH="Basic $(printf '%s:' "$TOKEN" | base64)" WRK_BATCH=100 \
--     wrk -t1 -c16 -d10s --latency -s bench/wrk_v1.lua http://127.0.0.1:8080
--
-- WRK_USERS distinct user ids (default 100000); WRK_OFFSET added to the call counter, so
-- several runs against one server send new messageIds (default 0).

local auth   = os.getenv("WRK_AUTH") or ""
local batch  = tonumber(os.getenv("WRK_BATCH") or "100")
local users  = tonumber(os.getenv("WRK_USERS") or "100000")
local offset = tonumber(os.getenv("WRK_OFFSET") or "0")
local path   = batch > 1 and "/v1/batch" or "/v1/track"

local counter
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = auth }

function init(args)
  counter = offset
end

local call = '{"type":"track","userId":"%d","event":"Viewed product",' ..
  '"properties":{"product_name":"Red T-shirt","product_url":"http://www.yourdomain.com/products/red-t-shirt","n":%d},' ..
  '"messageId":"bench-%d","timestamp":"2026-11-30T04:46:31.000+00:00",' ..
  '"context":{"library":{"name":"analytics-python","version":"2.4.0"}}}'

function request()
  if batch == 1 then
    counter = counter + 1
    return wrk.format("POST", path, headers, string.format(call, counter % users, counter, counter))
  end
  local items = {}
  for i = 1, batch do
    counter = counter + 1
    items[i] = string.format(call, counter % users, counter, counter)
  end
  local body = '{"batch":[' .. table.concat(items, ",") .. '],"sentAt":"2026-11-30T04:46:32.000+00:00"}'
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  io.write(string.format("requests=%d  errors(connect/read/write/status/timeout)=%d/%d/%d/%d/%d\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout))
  io.write(string.format("latency_us p50=%d p90=%d p99=%d p99.9=%d max=%d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
