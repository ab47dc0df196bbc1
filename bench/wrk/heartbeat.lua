-- wrk script of bench/compare.sh: POST heartbeats with an empty body, rotating
-- over the agents `loadgen register --id-prefix wrk-` registered
-- (wrk-000000 ... ; WRK_AGENTS of them, 1000 by default; WRK_PREFIX names
-- another prefix, as bench/cluster.sh does). nginx answers the very same
-- requests with `return 204;`, so both servers get identical bytes.
local requests = {}
local next_request = 1

function init(args)
    local count = tonumber(os.getenv("WRK_AGENTS") or "1000")
    local prefix = os.getenv("WRK_PREFIX") or "wrk-"
    for index = 0, count - 1 do
        local path = string.format("/api/v1/agents/%s%06d/heartbeat", prefix, index)
        requests[index + 1] = wrk.format("POST", path, nil, "")
    end
    -- Each wrk thread starts at a different agent.
    next_request = math.random(count)
end

function request()
    local chosen = requests[next_request]
    next_request = next_request % #requests + 1
    return chosen
end
