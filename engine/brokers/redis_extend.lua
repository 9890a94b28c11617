-- Heartbeat: push the lease deadline of jobs a worker still holds. ARGV: base, deadline,
-- then id, token pairs. Returns the ids whose lease this worker no longer holds.
local deadline = ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  local id, tok = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', jkey(id), 'l') == tok then
    redis.call('ZADD', PROC, 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
