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

local non201 = 0
response = function(status, headers, body)
  if status ~= 201 then non201 = non201 + 1 end
end

done = function(summary, latency, requests)
  local errs = 0
  for _, t in ipairs(threads) do errs = errs + (tonumber(t:get("non201")) or 0) end
  io.write(string.format("non-2xx responses (from status counts): %d\n", summary.errors.status))
end
