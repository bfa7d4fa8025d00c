-- wrk script for bench/run.sh: POST distinct pre-signed Kinde tokens, count non-200s.
--
--   TOKENS=/path/tokens.txt wrk -t T -c C -d 10s --latency -s bench/tokens.lua URL
--
-- TOKENS holds one signed JWT per line (`kinde-webhooks send user.created --print
-- --repeat N`). Thread k of T keeps lines k, k+T, k+2T, ... so no two threads share a
-- token, and each thread sends its slice in order, once. If a thread runs out it starts
-- its slice again (the server then sees duplicates, which are cheaper): such requests are
-- counted as `wrapped` and reported, so a run that wrapped is visible (run.sh flags it).
--
-- done() prints one machine-readable line:
--   BENCH requests=.. ok=.. non200=.. wrapped=.. tokens=.. duration_us=.. p50_us=..
--         p99_us=.. p999_us=.. max_us=.. errors_connect=.. errors_read=.. errors_write=..
--         errors_timeout=.. statuses=200:N,503:M
-- plus `NON200 <status> <body>` for the first few non-200 answers, per thread, and with
-- env WRK_PCTL=1 `PCTL <percentile> <us>` lines (0.1 to 99.9 in 0.1 steps).

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
local tokens = {}
local i = 0
n, ok, non200, wrapped, sent = 0, 0, 0, 0, 0
statuses = {}
samples = {}

function init(args)
   local path = os.getenv("TOKENS") or error("set TOKENS=<file of tokens, one per line>")
   local nthreads = tonumber(os.getenv("WRK_THREADS") or "") or error("set WRK_THREADS")
   local line_no = 0
   for line in io.lines(path) do
      if line ~= "" then
         if line_no % nthreads == id then
            n = n + 1
            tokens[n] = line
         end
         line_no = line_no + 1
      end
   end
   if n == 0 then error("thread " .. id .. ": no tokens in " .. path) end
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/jwt"
end

function request()
   i = i + 1
   if i > n then
      i = 1
   end
   sent = sent + 1
   if sent > n then
      wrapped = wrapped + 1
   end
   return wrk.format(nil, nil, nil, tokens[i])
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 200 then
      ok = ok + 1
   else
      non200 = non200 + 1
      if #samples < 5 then
         table.insert(samples, status .. " " .. tostring(body))
      end
   end
end

-- Runs once, in the main Lua state: thread:get copies each thread's globals over.
function done(summary, latency, requests)
   local total_ok, total_non200, total_wrapped, total_tokens = 0, 0, 0, 0
   local merged = {}
   for _, t in ipairs(threads) do
      total_ok = total_ok + t:get("ok")
      total_non200 = total_non200 + t:get("non200")
      total_wrapped = total_wrapped + t:get("wrapped")
      total_tokens = total_tokens + t:get("n")
      local st = t:get("statuses")
      for code, count in pairs(st) do
         merged[code] = (merged[code] or 0) + count
      end
      for _, s in ipairs(t:get("samples")) do
         io.write("NON200 ", s:gsub("\n", " "), "\n")
      end
   end
   local parts = {}
   for code, count in pairs(merged) do
      table.insert(parts, code .. ":" .. count)
   end
   table.sort(parts)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d ok=%d non200=%d wrapped=%d tokens=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d max_us=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d statuses=%s\n",
      summary.requests, total_ok, total_non200, total_wrapped, total_tokens, summary.duration,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
      e.connect, e.read, e.write, e.timeout, table.concat(parts, ",")))
   -- WRK_PCTL=1 (bench/replicas.sh): the latency curve in 0.1 % steps, so the runs of
   -- several wrk processes can be merged into one distribution.
   if os.getenv("WRK_PCTL") == "1" then
      for p = 1, 999 do
         io.write(string.format("PCTL %.1f %d\n", p / 10, latency:percentile(p / 10)))
      end
   end
end
