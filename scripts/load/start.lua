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

-- report.lua, beside this script.
local report = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")

done = function(summary, latency, requests)
  report(summary, latency)
end
