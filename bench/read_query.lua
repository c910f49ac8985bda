-- wrk script for the read API: GET requests with a bearer secret key.
--   READ_KEY    secret key (required)
--   READ_KIND   "timeline" (a random user's last 100 events) or "filtered" (the last 100
--               events of one event name)
--   READ_USERS  distinct user ids in the data set (timeline)
local key   = os.getenv("READ_KEY")
local kind  = os.getenv("READ_KIND") or "timeline"
local users = tonumber(os.getenv("READ_USERS") or "100000")
local headers = { ["Authorization"] = "Bearer " .. key }
local names = { "viewed_product", "added_to_cart", "purchased_item", "signed_up" }

function request()
  if kind == "timeline" then
    return wrk.format("GET", "/api/v2/users/u" .. math.random(0, users - 1) .. "/events?limit=100", headers)
  end
  return wrk.format("GET", "/api/v2/events?limit=100&event_name=" .. names[math.random(1, #names)], headers)
end
