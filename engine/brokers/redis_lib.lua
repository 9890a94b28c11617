-- Shared helpers of the Redis broker's scripts (engine/brokers/redis.py). This text is
-- prepended to every redis_*.lua script when it is registered, so each script runs as one
-- atomic unit: a job is always in exactly one of ready / processing / scheduled / dlq.
--
-- ARGV[1] is the key base "<prefix>:{<queue>}:"; every key hangs off it (the braces keep a
-- queue's keys in one hash slot). Per job there is one hash, <base>job:<id>, with fields
--   p  the payload (JSON text written by the producer; never decoded here except best-effort)
--   a  attempts started          e  when it last became ready (wall-clock seconds)
--   l  lease token while leased   w  the leasing worker         r  "1" once reported running
--   k  leases lost before the job was reported running
--   m  max_retries, written at enqueue (so Lua never needs to decode the payload for it)
--   f  first failure time         x  last failure time          d  DLQ entry (JSON)
--   y  the reply list of the dispatcher that submitted (or requeued) it, if it waits for one
--   v  that dispatcher's number for this life of the job (a requeue starts a new one), echoed
--      in every reply, so an outcome of an earlier life is never taken for the new one's
-- Times are wall-clock seconds passed in by the caller's clock, never read here.

local B = ARGV[1]
local READY = B .. 'ready'            -- LIST of ids, oldest first
local PROC = B .. 'processing'        -- ZSET id -> lease deadline
local SCHED = B .. 'scheduled'        -- ZSET id -> retry due time
local DLQ = B .. 'dlq'                -- ZSET id -> dead-letter sequence number
local STATS = B .. 'stats'            -- HASH of fleet-wide counters
local CONTROL = B .. 'control'        -- HASH: paused, min_workers, max_workers
local WAKE = B .. 'wake'              -- LIST of wake-up tokens for idle fetchers
local SEEN = B .. 'seen'              -- STRING: the latest 'now' of any fetch or lease renewal

local function jkey(id)
  return B .. 'job:' .. id
end

-- Run cmd(key, ids...) in chunks that stay below Lua's unpack limit.
local function chunked(cmd, key, ids)
  for i = 1, #ids, 4000 do
    redis.call(cmd, key, unpack(ids, i, math.min(i + 3999, #ids)))
  end
end

-- Tell idle fetchers there is work: a few tokens, capped, so a busy fleet does not pile them up.
local function wake(n)
  if n > 0 then
    local tokens = {}
    for i = 1, math.min(n, 16) do
      tokens[i] = '1'
    end
    redis.call('LPUSH', WAKE, unpack(tokens))
    redis.call('LTRIM', WAKE, 0, 15)
  end
end

-- A field of a job's payload, or nil when the payload is not a JSON object.
local function payload_field(p, field)
  local ok, obj = pcall(cjson.decode, p)
  if ok and type(obj) == 'table' then
    return obj[field]
  end
  return nil
end

-- Leases do not run down while nobody can reach Redis. A live fleet fetches or renews leases
-- several times per lease (heartbeat_s < lease_s / 2, and poll_s), so a silence longer than
-- grace = lease_s / 2 means Redis was down or unreachable for everyone (or the whole fleet
-- was). Then every lease is pushed back by the silence beyond grace, before anything is
-- reclaimed: the live owners get grace seconds after Redis returns to renew their leases, so a
-- long job is not run twice only because Redis was away for longer than its lease. A dead
-- owner's lease still ends, at most grace seconds later than it would have. Called by the
-- scripts that reclaim or renew leases (fetch, extend), before they do.
local function touch(now, grace)
  local t = tonumber(now)
  local seen = tonumber(redis.call('GET', SEEN))
  if seen and t - seen > grace then
    local shift = t - seen - grace
    local leased = redis.call('ZRANGE', PROC, 0, -1, 'WITHSCORES')
    for i = 1, #leased, 2 do
      redis.call('ZADD', PROC, tonumber(leased[i + 1]) + shift, leased[i])
    end
    redis.call('HINCRBY', STATS, 'lease_pauses', 1)
  end
  if not seen or t > seen then
    redis.call('SET', SEEN, now)
  end
end

-- Replies tell a dispatcher how the jobs it submitted ended (engine/redis_dispatcher.py). Each
-- is one JSON array, [id, life, kind, attempts, body] with kind 'ok' (body: the result's JSON
-- text), 'unencodable' (it succeeded; body: a JSON string saying why its result is not JSON),
-- 'dead' (body: the DLQ entry) or 'cancelled' (body: null). A reply list nobody reads (its dispatcher died) expires a day after its last
-- reply.
local REPLY_TTL_S = 86400
local replies = {}  -- reply list -> texts, pushed by flush_replies at the end of a script

local function reply(list, life, id, kind, attempts, body)
  local texts = replies[list]
  if not texts then
    texts = {}
    replies[list] = texts
  end
  texts[#texts + 1] = '[' .. id .. ',' .. (tonumber(life) or 0) .. ',"' .. kind .. '",' .. (tonumber(attempts) or 0)
    .. ',' .. body .. ']'
end

local function flush_replies()
  for list, texts in pairs(replies) do
    chunked('RPUSH', list, texts)
    redis.call('EXPIRE', list, REPLY_TTL_S)
  end
  replies = {}
end

-- Move a job (already out of every other structure) into the DLQ, evicting beyond dlq_max.
-- Tells the job's dispatcher, if one waits (flush_replies sends it).
local function dead_letter(id, entry, now, dlq_max)
  local k = jkey(id)
  local v = redis.call('HMGET', k, 'y', 'a', 'v')
  if v[1] then
    reply(v[1], v[3], id, 'dead', v[2], entry)
  end
  redis.call('HSETNX', k, 'f', now)
  redis.call('HSET', k, 'd', entry, 'x', now)
  redis.call('ZADD', DLQ, redis.call('INCR', B .. 'dlqseq'), id)
  redis.call('HINCRBY', STATS, 'dead_lettered', 1)
  if dlq_max > 0 then
    local over = redis.call('ZCARD', DLQ) - dlq_max
    if over > 0 then
      local old = redis.call('ZPOPMIN', DLQ, over)
      for i = 1, #old, 2 do
        redis.call('DEL', jkey(old[i]))
      end
      redis.call('HINCRBY', STATS, 'dlq_evicted', over)
    end
  end
end

-- The most times a job may lose its lease before a heartbeat reported it started, without
-- that costing an attempt. Beyond it, a job that kills its worker at once still ends in the DLQ.
local UNSTARTED_LOSSES = 3

-- A lease that ended without an outcome (its worker died, hung, lost Redis, or gave up on it).
-- If no heartbeat reported the job started (field r), it was most likely only prefetched: it
-- goes back to the front of ready without spending the attempt, at most UNSTARTED_LOSSES times
-- (field k). Otherwise it counts as a failed attempt: with retries left the job goes straight
-- back to the front of ready, else it is dead-lettered. started = true forces the latter.
-- Returns 1 (requeued as a retry), 2 (dead-lettered), 3 (requeued, attempt not spent) or 0 (no
-- job data: nothing to do).
local function lease_lost(id, now, dlq_max, why, started)
  local k = jkey(id)
  redis.call('ZREM', PROC, id)
  local v = redis.call('HMGET', k, 'w', 'r', 'k', 'p', 'm')
  local owner, p = v[1] or '?', v[4]
  redis.call('HDEL', k, 'l', 'w', 'r')
  if not p then
    return 0
  end
  if not started and v[2] ~= '1' and (tonumber(v[3]) or 0) < UNSTARTED_LOSSES then
    redis.call('HINCRBY', k, 'k', 1)
    redis.call('HINCRBY', k, 'a', -1)
    redis.call('LPUSH', READY, id)
    wake(1)
    return 3
  end
  local attempts = tonumber(redis.call('HGET', k, 'a') or '0') or 0
  -- Jobs enqueued before field m existed: best effort from the payload (cjson refuses some
  -- JSON that Python writes, such as lone-surrogate escapes; then 0).
  local max_retries = tonumber(v[5]) or tonumber(payload_field(p, 'max_retries')) or 0
  redis.call('HINCRBY', STATS, 'failed', 1)
  redis.call('HSETNX', k, 'f', now)
  redis.call('HSET', k, 'x', now)
  if attempts <= max_retries then
    redis.call('HINCRBY', STATS, 'retries', 1)
    redis.call('HINCRBY', STATS, 'retry:' .. attempts, 1)
    redis.call('HSET', k, 'e', now)
    redis.call('LPUSH', READY, id)
    wake(1)
    return 1
  end
  local entry = cjson.encode({
    exc_type = 'engine.brokers.redis.LeaseExpired',
    exc_message = why .. ' (worker ' .. owner .. ')',
    traceback = '',
    attempts = attempts,
    reason = 'retries exhausted (' .. max_retries .. ' retries); the last attempt ' .. why,
    last_failure_at = tonumber(now),
  })
  dead_letter(id, entry, now, dlq_max)
  return 2
end

