-- Recover the leases a worker holds without knowing it: a fetch whose reply was lost (the
-- connection dropped after Redis ran the script). ARGV: base, worker id, then the lease tokens
-- the worker knows about. Every other job leased to that worker goes back to the front of
-- ready without spending an attempt (it never started). Returns how many.
local wid = ARGV[2]
local known = {}
for i = 3, #ARGV do
  known[ARGV[i]] = true
end
local back = {}
for _, id in ipairs(redis.call('ZRANGE', PROC, 0, -1)) do
  local k = jkey(id)
  local v = redis.call('HMGET', k, 'w', 'l')
  if v[1] == wid and not known[v[2]] then
    redis.call('ZREM', PROC, id)
    redis.call('HDEL', k, 'l', 'w', 'r')
    redis.call('HINCRBY', k, 'a', -1)
    back[#back + 1] = id
  end
end
if #back > 0 then
  local reversed = {}
  for j = #back, 1, -1 do
    reversed[#reversed + 1] = back[j]
  end
  chunked('LPUSH', READY, reversed)
  wake(#back)
end
return #back
