-- Token bucket as GCRA (see algorithm.rs): one theoretical arrival time (TAT) per key.
--
-- KEYS[1]  the TAT in microseconds since the epoch
-- ARGV[1]  now, microseconds since the epoch
-- ARGV[2]  emission interval in microseconds (period / rate, rounded up)
-- ARGV[3]  burst * emission interval: how far ahead of now the TAT may run
-- ARGV[4]  hits (0 only asks)
--
-- Returns the TAT before this check (now for a new or stale key) as a string, so that no
-- digit is lost; the service recomputes the same decision from it.
local now = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then
  tat = now
end
local hits = tonumber(ARGV[4])
local new_tat = tat + hits * tonumber(ARGV[2])
if hits > 0 and new_tat - now <= tonumber(ARGV[3]) then
  local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
end
return string.format('%.0f', tat)
