-- Heartbeat: push the lease deadline of jobs a worker still holds, and note which of them have
-- started running (field r, see lease_lost). ARGV: base, deadline, then id, token, started
-- ('1' or '0') triples. Returns the ids whose lease this worker no longer holds.
-- ARGV: base, now, deadline, then the triples. First, after a silence of the whole fleet, every
-- lease is pushed back (touch).
local now, deadline = ARGV[2], ARGV[3]
touch(now, (tonumber(deadline) - tonumber(now)) / 2)
local lost = {}
for i = 4, #ARGV, 3 do
  local id, tok = ARGV[i], ARGV[i + 1]
  local k = jkey(id)
  if redis.call('HGET', k, 'l') == tok then
    redis.call('ZADD', PROC, 'XX', deadline, id)
    if ARGV[i + 2] == '1' then
      redis.call('HSET', k, 'r', '1')
    end
  else
    lost[#lost + 1] = id
  end
end
return lost
