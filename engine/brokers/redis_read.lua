-- Read-only views. ARGV: base, view, ...
--   'dlq' offset limit -> {total, id, payload, entry, first_failure, ...} oldest first
--   'dlq_ids' id...     -> {total, id, payload, entry, first_failure, ...} for those in the DLQ
--   'fleet' nretries    -> one consistent picture for a dashboard (see RedisQueue.fleet_state)
local view = ARGV[2]
if view == 'dlq' or view == 'dlq_ids' then
  local ids
  if view == 'dlq' then
    local offset, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
    ids = redis.call('ZRANGE', DLQ, offset, offset + limit - 1)
  else
    ids = {}
    for i = 3, #ARGV do
      if redis.call('ZSCORE', DLQ, ARGV[i]) then
        ids[#ids + 1] = ARGV[i]
      end
    end
  end
  local out = {redis.call('ZCARD', DLQ)}
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', jkey(id), 'p', 'd', 'f')
    out[#out + 1] = id
    out[#out + 1] = v[1] or ''
    out[#out + 1] = v[2] or ''
    out[#out + 1] = v[3] or ''
  end
  return out
end

-- 'fleet'
local nretries = tonumber(ARGV[3])
local oldest = ''
local first = redis.call('LINDEX', READY, 0)
if first then
  oldest = redis.call('HGET', jkey(first), 'e') or ''
end
local soon = {}
local next = redis.call('ZRANGE', SCHED, 0, nretries - 1, 'WITHSCORES')
for i = 1, #next, 2 do
  local v = redis.call('HMGET', jkey(next[i]), 'p', 'a')
  soon[#soon + 1] = next[i]
  soon[#soon + 1] = next[i + 1]
  soon[#soon + 1] = v[1] or ''
  soon[#soon + 1] = v[2] or '0'
end
local workers = {}
for _, wid in ipairs(redis.call('ZRANGE', B .. 'workers', 0, -1)) do
  local h = redis.call('HGETALL', B .. 'worker:' .. wid)
  if #h > 0 then
    workers[#workers + 1] = h
  end
end
return {
  redis.call('HGETALL', STATS),
  redis.call('LLEN', READY),
  redis.call('ZCARD', PROC),
  redis.call('ZCARD', SCHED),
  redis.call('ZCARD', DLQ),
  oldest,
  soon,
  redis.call('LRANGE', B .. 'lat:run', 0, -1),
  redis.call('LRANGE', B .. 'lat:wait', 0, -1),
  redis.call('HGETALL', CONTROL),
  workers,
}
