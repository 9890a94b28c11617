-- Enqueue a batch. ARGV: base, now, max_retries (the same for the whole batch; the payloads
-- say it too, but Lua never has to parse a payload to read it), the reply list of the
-- dispatcher that waits for the outcomes ('' for none), its life number for them, payload1 ..
-- payloadN.
-- Returns the first new job id; the batch has consecutive ids.
local now, m, y, life = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local n = #ARGV - 5
local first = redis.call('INCRBY', B .. 'seq', n) - n + 1
local ids = {}
for i = 1, n do
  local id = first + i - 1
  if y == '' then
    redis.call('HSET', jkey(id), 'p', ARGV[5 + i], 'a', 0, 'e', now, 'm', m)
  else
    redis.call('HSET', jkey(id), 'p', ARGV[5 + i], 'a', 0, 'e', now, 'm', m, 'y', y, 'v', life)
  end
  ids[i] = id
end
chunked('RPUSH', READY, ids)
redis.call('HINCRBY', STATS, 'submitted', n)
wake(n)
return first
