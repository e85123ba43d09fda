-- wrk script: POST /v1/verifications/{id}/check with the right code, each pending
-- verification once; with BY_NUMBER=1, POST /v1/verification-checks with the number
-- and the code instead. Reads "id code number" lines from $PAIRS; thread k takes lines
-- k, k+n, …
local threads = {}
local pairs_ = {}
local i = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local tid = tonumber(wrk.thread:get("tid")) or 0
  local n = tonumber(os.getenv("WRK_THREADS") or "4")
  local line_no = 0
  for line in io.lines(os.getenv("PAIRS")) do
    if line_no % n == tid then
      local id, code, number = line:match("^(%S+) (%S+) (%S+)$")
      table.insert(pairs_, { id, code, number })
    end
    line_no = line_no + 1
  end
end

local by_number = os.getenv("BY_NUMBER") == "1"

request = function()
  i = i + 1
  local p = pairs_[((i - 1) % #pairs_) + 1]
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. os.getenv("RINGFENCE_KEY"),
  }
  if by_number then
    return wrk.format("POST", "/v1/verification-checks", headers,
      '{"to":"' .. p[3] .. '","code":"' .. p[2] .. '"}')
  end
  return wrk.format("POST", "/v1/verifications/" .. p[1] .. "/check", headers,
    '{"code":"' .. p[2] .. '"}')
end

-- report.lua, beside this script.
local report = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")

done = function(summary, latency, requests)
  report(summary, latency)
end
