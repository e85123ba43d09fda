-- wrk script: POST /v1/verifications with a fresh, valid UK mobile number per request.
-- Numbers are +44 790T NNNNNN: T is the wrk thread (0–9), N a per-thread counter, so no
-- two requests of a run share a number. RUN_SALT (0–9) lets runs use distinct ranges.
--
-- The request is formatted once, in `init`, around a placeholder of the number's
-- length; each request only formats the number and joins three strings. wrk runs this
-- function for every request on the cores the server shares, and the ceiling it is
-- compared with (GET /healthz) runs no script at all.
local threads = {}
local counter = 0
local tid = 0
local head, tail

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  tid = tonumber(wrk.thread:get("tid")) or 0
  local salt = tonumber(os.getenv("RUN_SALT") or "0")
  counter = salt * 100000
  local placeholder = "+447900000000"
  local template = wrk.format("POST", "/v1/verifications", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. os.getenv("RINGFENCE_KEY"),
  }, '{"to":"' .. placeholder .. '","channel":"sms"}')
  local at = template:find(placeholder, 1, true)
  head = template:sub(1, at - 1)
  tail = template:sub(at + #placeholder)
end

request = function()
  counter = counter + 1
  return head .. string.format("+44790%d%06d", tid % 10, counter % 1000000) .. tail
end

done = function(summary, latency, requests)
  io.write(string.format("non-2xx responses: %d\n", summary.errors.status))
  -- PERCENTILES=1: the latency distribution in more detail than wrk's --latency.
  if os.getenv("PERCENTILES") then
    local line = "latency (ms):"
    for _, p in ipairs({10, 25, 50, 75, 90, 95, 99, 99.9}) do
      line = line .. string.format(" p%s %.2f", p, latency:percentile(p) / 1000)
    end
    io.write(line .. string.format(" mean %.2f stdev %.2f max %.2f\n",
      latency.mean / 1000, latency.stdev / 1000, latency.max / 1000))
  end
end
