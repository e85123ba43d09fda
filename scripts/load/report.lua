-- What start.lua and check.lua print when wrk is done: the non-2xx responses, and with
-- PERCENTILES=1 the latency distribution in more detail than wrk's --latency.
return function(summary, latency)
  io.write(string.format("non-2xx responses: %d\n", summary.errors.status))
  -- On when set and not empty, as the shell scripts' switches are (`[ -n … ]`).
  if (os.getenv("PERCENTILES") or "") ~= "" then
    local line = "latency (ms):"
    for _, p in ipairs({10, 25, 50, 75, 90, 95, 99, 99.9}) do
      line = line .. string.format(" p%s %.2f", p, latency:percentile(p) / 1000)
    end
    io.write(line .. string.format(" mean %.2f stdev %.2f max %.2f\n",
      latency.mean / 1000, latency.stdev / 1000, latency.max / 1000))
  end
end
