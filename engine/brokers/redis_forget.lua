-- A dispatcher is going away: its jobs still in the queue send it no more replies, and its
-- reply list is deleted. ARGV: base, its reply list, then job ids. Only jobs whose replies still
-- go to that list are changed (another dispatcher may have requeued one since). Returns how
-- many jobs were changed.
local list = ARGV[2]
local n = 0
for i = 3, #ARGV do
  local k = jkey(ARGV[i])
  if redis.call('HGET', k, 'y') == list then
    redis.call('HDEL', k, 'y', 'v')
    n = n + 1
  end
end
redis.call('DEL', list)
return n
