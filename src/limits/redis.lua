-- hopwarden's shared rate limit buckets (src/limits/redis.rs): one flush from one replica.
--
-- Each key is a GCRA bucket: its value is the bucket's theoretical arrival time `tat`
-- (microseconds on Redis's own clock, so replicas' clocks never have to agree). The
-- replica already decided the requests it sends here; this adds them to the shared
-- bucket and says how far ahead of now the bucket is, which the replica adopts.
--
-- KEYS[i]: a bucket. ARGV[2i-1]: requests that replica allowed since its last flush.
-- ARGV[2i]: the limit's interval in microseconds (may be fractional).
-- Returns, per key, whole microseconds until the bucket is full again (0: full).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local count = tonumber(ARGV[2 * i - 1])
  local interval = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then
    tat = now
  end
  tat = tat + count * interval
  local ahead = tat - now
  if count > 0 and ahead > 0 then
    -- Only a flush that adds requests writes (a read-back leaves the key and its
    -- expiry as they are). A bucket that is full again is the same as none: let Redis
    -- forget it then.
    redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil(ahead / 1000) + 1000)
  end
  out[i] = math.floor(ahead)
end
return out
