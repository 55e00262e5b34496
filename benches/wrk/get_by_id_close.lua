-- GET /<table>/<random id> on a new connection each time (Connection: close): over TLS, a full
-- handshake per request. wrk drops -H headers when a script gives its own, hence this script.
local C = dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/common.lua")
setup = C.setup
function init(args)
  C.init_rng()
  hdrs = C.headers(false)
  hdrs["Connection"] = "close"
end
function request()
  return wrk.format("GET", "/" .. C.table .. "/" .. C.random_id(), hdrs)
end
done = C.done
