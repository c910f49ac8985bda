-- wrk_attack.lua -- one tenant's heaviest accepted requests, for bench/noisy_neighbour.sh
--
-- Sends the bodies in the files named by ATTACK_BODIES (comma-separated; each file holds
-- "METHOD PATH" on its first line and the body after it) in turn, as fast as wrk can.

local bodies = {}
local headers = { ["Content-Type"] = "application/json" }

for name in string.gmatch(os.getenv("ATTACK_BODIES") or "", "[^,]+") do
  local f = assert(io.open(name, "rb"))
  local first = f:read("*l")
  local method, path = string.match(first, "^(%S+) (%S+)$")
  table.insert(bodies, { method = method, path = path, body = f:read("*a") })
  f:close()
end

local i = 0
function request()
  i = i % #bodies + 1
  local b = bodies[i]
  return wrk.format(b.method, b.path, headers, b.body)
end

local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  io.write(string.format("attacker requests=%d errors(status)=%d p99_us=%d\n",
    summary.requests, summary.errors.status, latency:percentile(99)))
end
