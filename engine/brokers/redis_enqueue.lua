-- Enqueue a batch. ARGV: base, now, max_retries (the same for the whole batch; the payloads
-- say it too, but Lua never has to parse a payload to read it), payload1 .. payloadN.
-- Returns the first new job id; the batch has consecutive ids.
local now, m = ARGV[2], ARGV[3]
local n = #ARGV - 3
local first = redis.call('INCRBY', B .. 'seq', n) - n + 1
local ids = {}
for i = 1, n do
  local id = first + i - 1
  redis.call('HSET', jkey(id), 'p', ARGV[3 + i], 'a', 0, 'e', now, 'm', m)
  ids[i] = id
end
chunked('RPUSH', READY, ids)
redis.call('HINCRBY', STATS, 'submitted', n)
wake(n)
return first
