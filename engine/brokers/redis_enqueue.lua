-- Enqueue a batch. ARGV: base, now, payload1 .. payloadN. Returns the first new job id;
-- the batch has consecutive ids.
local now = ARGV[2]
local n = #ARGV - 2
local first = redis.call('INCRBY', B .. 'seq', n) - n + 1
local ids = {}
for i = 1, n do
  local id = first + i - 1
  redis.call('HSET', jkey(id), 'p', ARGV[2 + i], 'a', 0, 'e', now)
  ids[i] = id
end
chunked('RPUSH', READY, ids)
redis.call('HINCRBY', STATS, 'submitted', n)
wake(n)
return first
