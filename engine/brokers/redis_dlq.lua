-- DLQ commands. ARGV: base, now, command, then 'all' or ids.
--   requeue: back to the end of ready with fresh attempts (counted as submitted + requeued).
--   delete:  dropped for good.
-- Returns the ids acted on, oldest first.
local now, command = ARGV[2], ARGV[3]
local ids
if ARGV[4] == 'all' then
  ids = redis.call('ZRANGE', DLQ, 0, -1)
else
  ids = {}
  for i = 4, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
end
local done = {}
for _, id in ipairs(ids) do
  if redis.call('ZREM', DLQ, id) == 1 then
    done[#done + 1] = id
    local k = jkey(id)
    if command == 'requeue' then
      redis.call('HDEL', k, 'd', 'f', 'x', 'l', 'w', 'r', 'k')
      redis.call('HSET', k, 'a', 0, 'e', now)
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
