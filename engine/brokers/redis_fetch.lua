-- Fetch a batch with a lease, after housekeeping. ARGV: base, now, count, lease deadline,
-- worker id, dlq_max (0: no cap), scan limit, own share (the most this worker takes whatever
-- others do; '' for count), live window (seconds a worker's last heartbeat stays live).
--   0. after a silence of the whole fleet longer than lease_s / 2, leases are pushed back (touch);
--   1. retries due at or before now move from scheduled to the end of ready;
--   2. leases that ended at or before now are lost attempts (see lease_lost);
--   3. unless the queue is paused, up to count ids move from ready to processing, each with
--      a fresh lease token and one more attempt. Beyond its own share, a worker takes at most
--      its fair part of ready (ready / live workers), so a large buffer never hoards the queue
--      while other workers are idle.
-- Returns one JSON text (one bulk reply parses far faster than a flat array):
--   [next retry due or "", next lease deadline or "", promoted, reclaimed, missing, paused,
--    [[id, token, attempt, payload, enqueued_at], ...]]
local now, count, deadline, wid = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local dlq_max, scan = tonumber(ARGV[6]), tonumber(ARGV[7])
local own, live_s = tonumber(ARGV[8]), tonumber(ARGV[9])
touch(now, (tonumber(deadline) - tonumber(now)) / 2)

local due = redis.call('ZRANGEBYSCORE', SCHED, '-inf', now, 'LIMIT', 0, scan)
if #due > 0 then
  chunked('ZREM', SCHED, due)
  for _, id in ipairs(due) do
    redis.call('HSET', jkey(id), 'e', now)
  end
  chunked('RPUSH', READY, due)
  wake(#due)
end

local reclaimed = 0
local expired = redis.call('ZRANGEBYSCORE', PROC, '-inf', now, 'LIMIT', 0, scan)
for _, id in ipairs(expired) do
  lease_lost(id, now, dlq_max, 'lost its lease (no heartbeat before the deadline)', false)
  reclaimed = reclaimed + 1
end

local paused = 0
if redis.call('HGET', CONTROL, 'paused') == '1' then
  count = 0
  paused = 1
end

if own and live_s and count > own then
  local live = redis.call('ZCOUNT', B .. 'workers', tonumber(now) - live_s, '+inf')
  if live > 1 then
    count = math.max(own, math.min(count, math.ceil(redis.call('LLEN', READY) / live)))
  end
end

local out = {'', '', #due, reclaimed, 0, paused}
local jobs = {}
if count > 0 then
  local ids = redis.call('LPOP', READY, count)
  if ids then
    local tok = redis.call('INCRBY', B .. 'tok', #ids) - #ids
    local missing = 0
    local leases = {}  -- ZADD arguments: deadline, id, deadline, id...
    for _, id in ipairs(ids) do
      local k = jkey(id)
      local v = redis.call('HMGET', k, 'p', 'e', 'a')
      if v[1] then
        tok = tok + 1
        local attempt = (tonumber(v[3]) or 0) + 1
        redis.call('HSET', k, 'a', attempt, 'l', tok, 'w', wid)
        leases[#leases + 1] = deadline
        leases[#leases + 1] = id
        jobs[#jobs + 1] = {id, tostring(tok), attempt, v[1], v[2] or now}
      else
        missing = missing + 1
      end
    end
    for i = 1, #leases, 2000 do  -- one ZADD per 1000 leases (below Lua's unpack limit)
      redis.call('ZADD', PROC, unpack(leases, i, math.min(i + 1999, #leases)))
    end
    out[5] = missing
  end
end

local ns = redis.call('ZRANGE', SCHED, 0, 0, 'WITHSCORES')
local np = redis.call('ZRANGE', PROC, 0, 0, 'WITHSCORES')
out[1] = ns[2] or ''
out[2] = np[2] or ''
out[7] = jobs
flush_replies()
return cjson.encode(out)
