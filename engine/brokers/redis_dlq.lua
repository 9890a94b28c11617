-- DLQ commands. ARGV: base, now, command, reply list ('' for none), life number, then either
-- 'upto', max_score, limit (the oldest
-- `limit` entries whose DLQ sequence number is at most max_score: callers act on a whole DLQ in
-- chunks, so no single call blocks Redis for long) or ids.
--   requeue: back to the end of ready with fresh attempts (counted as submitted + requeued);
--            its outcome goes to the reply list given, if any (to no earlier one).
--   delete:  dropped for good.
-- Returns the ids acted on, oldest first.
local now, command, y, life = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ids
if ARGV[6] == 'upto' then
  ids = redis.call('ZRANGEBYSCORE', DLQ, '-inf', ARGV[7], 'LIMIT', 0, tonumber(ARGV[8]))
else
  ids = {}
  for i = 6, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
end
local done = {}
for _, id in ipairs(ids) do
  if redis.call('ZREM', DLQ, id) == 1 then
    done[#done + 1] = id
    local k = jkey(id)
    if command == 'requeue' then
      redis.call('HDEL', k, 'd', 'f', 'x', 'l', 'w', 'r', 'k', 'y', 'v')
      if y == '' then
        redis.call('HSET', k, 'a', 0, 'e', now)
      else
        redis.call('HSET', k, 'a', 0, 'e', now, 'y', y, 'v', life)
      end
    else
      redis.call('DEL', k)
    end
  end
end
if command == 'requeue' and #done > 0 then
  chunked('RPUSH', READY, done)
  redis.call('HINCRBY', STATS, 'submitted', #done)
  redis.call('HINCRBY', STATS, 'requeued', #done)
  wake(#done)
end
return done
