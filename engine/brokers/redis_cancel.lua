-- Cancel jobs that have not started. ARGV: base, then job ids. A job waiting in ready or in
-- scheduled is deleted and counted as cancelled; one leased to a worker (running, or fetched
-- and about to run), dead-lettered or finished is left alone. Returns the ids cancelled.
local done, want, rest = {}, {}, 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', SCHED, id) == 1 then
    done[#done + 1] = id
  elseif not want[id] then
    want[id] = true
    rest = rest + 1
  end
end
if rest > 0 and rest <= 16 then
  for i = 2, #ARGV do
    local id = ARGV[i]
    if want[id] and redis.call('LREM', READY, 1, id) > 0 then
      want[id] = nil
      done[#done + 1] = id
    end
  end
elseif rest > 0 then
  -- Many at once (a forceful shutdown): one pass over ready instead of one LREM scan per id.
  local ids = redis.call('LRANGE', READY, 0, -1)
  local keep = {}
  for _, id in ipairs(ids) do
    if want[id] then
      want[id] = nil
      done[#done + 1] = id
    else
      keep[#keep + 1] = id
    end
  end
  if #keep < #ids then
    redis.call('DEL', READY)
    chunked('RPUSH', READY, keep)
  end
end
for _, id in ipairs(done) do
  redis.call('DEL', jkey(id))
end
if #done > 0 then
  redis.call('HINCRBY', STATS, 'cancelled', #done)
end
return done
