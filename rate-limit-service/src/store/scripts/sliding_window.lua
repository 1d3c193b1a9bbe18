-- Sliding window, counted in buckets (see algorithm.rs): read the buckets still counted,
-- drop older ones, and add this check's hits to the current bucket if they fit.
--
-- KEYS[1]  hash: bucket index -> hits admitted in that bucket
-- ARGV[1]  current bucket index
-- ARGV[2]  first bucket index still counted
-- ARGV[3]  limit
-- ARGV[4]  hits (0 only asks)
-- ARGV[5]  key lifetime in milliseconds (one window and one bucket)
--
-- Returns the buckets counted *before* this check, {index, hits, index, hits, ...}; the
-- service recomputes the same decision from them, so both sides share one arithmetic.
local fields = redis.call('HGETALL', KEYS[1])
local first = tonumber(ARGV[2])
local counted = {}
local total = 0
for i = 1, #fields, 2 do
  local index = tonumber(fields[i])
  if index < first then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    local hits = tonumber(fields[i + 1])
    total = total + hits
    counted[#counted + 1] = index
    counted[#counted + 1] = hits
  end
end
local hits = tonumber(ARGV[4])
if hits > 0 and total + hits <= tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[1], ARGV[1], hits)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return counted
