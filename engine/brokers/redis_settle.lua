-- Record the outcomes of a batch of attempts. ARGV: base, now, dlq_max, then one JSON text: a
-- list of outcomes, each a list of 8 strings: kind ('ok' | 'retry' | 'dead'), id, lease token,
-- run_s, wait_s, x1, x2, timed_out ('1' or '0').
--   ok:    the job succeeded and is deleted. x1 = the reply body (the result's JSON text), x2 =
--          the reply kind ('ok', or 'unencodable' when x1 says why the result is not JSON);
--          sent only if a dispatcher waits for the job (field y).
--   retry: x1 = due time, x2 = the attempt that failed (the retry number); into scheduled.
--   dead:  x1 = the DLQ entry (JSON); into the DLQ.
-- An outcome whose token is not the job's current lease (the lease expired and the job was
-- handed to another worker, or it was requeued) is ignored: that other run will report.
-- Returns {accepted, stale}.
local now, dlq_max = ARGV[2], tonumber(ARGV[3])
local accepted, stale = 0, 0
local n_ok, n_failed, n_retry, n_timeout = 0, 0, 0, 0
local runs, waits = {}, {}
for _, o in ipairs(cjson.decode(ARGV[4])) do
  local kind, id, tok = o[1], o[2], o[3]
  local k = jkey(id)
  local v = redis.call('HMGET', k, 'l', 'y', 'a', 'v')
  if v[1] == tok then
    accepted = accepted + 1
    redis.call('ZREM', PROC, id)
    runs[#runs + 1] = o[4]
    waits[#waits + 1] = o[5]
    if o[8] == '1' then
      n_timeout = n_timeout + 1
    end
    if kind == 'ok' then
      if v[2] then
        reply(v[2], v[4], id, o[7], v[3], o[6])
      end
      redis.call('DEL', k)
      n_ok = n_ok + 1
    else
      redis.call('HDEL', k, 'l', 'w', 'r')
      n_failed = n_failed + 1
      if kind == 'retry' then
        redis.call('HSETNX', k, 'f', now)
        redis.call('HSET', k, 'x', now)
        redis.call('ZADD', SCHED, o[6], id)
        redis.call('HINCRBY', STATS, 'retry:' .. o[7], 1)
        n_retry = n_retry + 1
      else
        dead_letter(id, o[6], now, dlq_max)
      end
    end
  else
    stale = stale + 1
  end
end
if n_ok > 0 then redis.call('HINCRBY', STATS, 'succeeded', n_ok) end
if n_failed > 0 then redis.call('HINCRBY', STATS, 'failed', n_failed) end
if n_retry > 0 then redis.call('HINCRBY', STATS, 'retries', n_retry) end
if n_timeout > 0 then redis.call('HINCRBY', STATS, 'timed_out', n_timeout) end
if #runs > 0 then
  chunked('LPUSH', B .. 'lat:run', runs)
  redis.call('LTRIM', B .. 'lat:run', 0, 2047)
  chunked('LPUSH', B .. 'lat:wait', waits)
  redis.call('LTRIM', B .. 'lat:wait', 0, 2047)
end
flush_replies()
return {accepted, stale}
