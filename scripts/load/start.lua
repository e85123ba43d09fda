-- wrk script: POST /v1/verifications with a fresh, valid UK mobile number per request.
-- Numbers are +44 790T NNNNNN: T is the wrk thread (0–9), N a per-thread counter, so no
-- two requests of a run share a number. RUN_SALT (0–9) lets runs use distinct ranges.
local threads = {}
local counter = 0
local tid = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  tid = tonumber(wrk.thread:get("tid")) or 0
  local salt = tonumber(os.getenv("RUN_SALT") or "0")
  counter = salt * 100000
end

request = function()
  counter = counter + 1
  local number = string.format("+44790%d%06d", tid % 10, counter % 1000000)
  local body = '{"to":"' .. number .. '","channel":"sms"}'
  return wrk.format("POST", "/v1/verifications", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. os.getenv("RINGFENCE_KEY"),
  }, body)
end

done = function(summary, latency, requests)
  io.write(string.format("non-2xx responses: %d\n", summary.errors.status))
end
