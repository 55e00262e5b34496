-- GET /<table>/?age=gt=A&age=lt=B&sort(-age)&limit(N): an indexed range with a sort, a random
-- window of three ages. Loads the shared helpers from BENCH_LUA_DIR (../shared/bench/harper/wrk).
local C = dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/common.lua")
local lim = os.getenv("BENCH_QUERY_LIMIT") or "10"
setup = C.setup
function init(args) C.init_rng(); hdrs = C.headers(false) end
function request()
  local a = math.random(0, 12)
  return wrk.format("GET", "/" .. C.table .. "/?age=gt=" .. a .. "&age=lt=" .. (a + 4) ..
    "&sort(-age)&limit(" .. lim .. ")", hdrs)
end
done = C.done
