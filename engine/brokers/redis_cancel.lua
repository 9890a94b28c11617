-- Cancel jobs that have not started. ARGV: base, owner ('' for anyone), then job ids. A job
-- waiting in ready or in scheduled is deleted, counted as cancelled, and its dispatcher (if one
-- waits) gets a 'cancelled' reply; one leased to a worker (running, or fetched and about to
-- run), dead-lettered or finished is left alone. With an owner (a reply list), only jobs whose
-- replies go there are touched: a dispatcher cancels its own jobs, not those another one has
-- requeued since. Returns the ids cancelled.
local owner = ARGV[2]
local done, want, rest = {}, {}, 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if owner ~= '' and redis.call('HGET', jkey(id), 'y') ~= owner then
    -- not this owner's (any more): leave it
  elseif redis.call('ZREM', SCHED, id) == 1 then
    done[#done + 1] = id
  elseif not want[id] then
    want[id] = true
    rest = rest + 1
  end
end
if rest > 0 and rest <= 16 then
  for i = 3, #ARGV do
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
  local k = jkey(id)
  local v = redis.call('HMGET', k, 'y', 'v', 'a')
  if v[1] then
    reply(v[1], v[2], id, 'cancelled', v[3], 'null')
  end
  redis.call('DEL', k)
end
if #done > 0 then
  redis.call('HINCRBY', STATS, 'cancelled', #done)
end
flush_replies()
return done
