-- Give leased jobs back. ARGV: base, now, mode, dlq_max, then id, token pairs.
--   mode 'unstarted': fetched but never started (graceful stop); the attempt is not spent and
--                     the jobs go back to the front of ready, in their order.
--   mode 'abandoned': started and given up on (forceful stop); like an expired lease, the
--                     attempt counts as failed (lease_lost).
-- Returns how many were given back.
local now, mode, dlq_max = ARGV[2], ARGV[3], tonumber(ARGV[4])
local back = {}
for i = 5, #ARGV, 2 do
  local id, tok = ARGV[i], ARGV[i + 1]
  local k = jkey(id)
  if redis.call('HGET', k, 'l') == tok then
    if mode == 'unstarted' then
      redis.call('ZREM', PROC, id)
      redis.call('HDEL', k, 'l', 'w', 'r')
      redis.call('HINCRBY', k, 'a', -1)
      back[#back + 1] = id
    else
      lease_lost(id, now, dlq_max, 'was abandoned by a forceful worker stop', true)
      back[#back + 1] = id
    end
  end
end
if mode == 'unstarted' and #back > 0 then
  local reversed = {}
  for j = #back, 1, -1 do
    reversed[#reversed + 1] = back[j]
  end
  chunked('LPUSH', READY, reversed)
  wake(#back)
end
flush_replies()
return #back
