"""The quota store shared by replicas: Redis, every check-and-record inside one Lua script.

One round trip per admit and one per settle. Python never reads a figure to write it back:
two replicas admitting at once are serialized by Redis, so a limit is never exceeded.

Layout, every key under the "{prefix}" hash tag (one cluster slot) and with a TTL:
  {p}:w:<window key>:rq   ZSET call_id -> request time          (TTL 61 s)
  {p}:w:<window key>:ts   ZSET call_id -> reservation time      (TTL 61 s)
  {p}:w:<window key>:tk   HASH call_id -> reserved tokens       (TTL 61 s)
  {p}:w:<window key>:tt   the sum of the live reservations       (TTL 61 s)
  {p}:w:<window key>:st   ZSET call_id -> stream lease expiry    (TTL 180 s)
  {p}:b:<budget key>      HASH s: spent nano-USD, u: unpriced calls (expires a day after its period)
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from tollway.service.quota.store import (
    STREAM_LEASE_S,
    WINDOW_S,
    Admission,
    BudgetCharge,
    BudgetDemand,
    BudgetUsage,
    QuotaStoreError,
    Refusal,
    WindowDemand,
    WindowSettlement,
    WindowUsage,
)

# Budget figures outlive their period by a day, for settlements of calls that straddle its end.
FIGURE_GRACE_S = 86_400
_WINDOW_TTL_S = int(WINDOW_S) + 1
_LEASE_TTL_S = int(STREAM_LEASE_S) + 60

_COMMON = f"""
local WINDOW, LEASE, WINDOW_TTL, LEASE_TTL = {WINDOW_S!r}, {STREAM_LEASE_S!r}, {_WINDOW_TTL_S}, {_LEASE_TTL_S}
""" + r"""
-- '' asks for the server's clock: one clock for every replica.
local function clock(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- %.17g round-trips a double; Lua's own tostring keeps 14 digits only.
local function num(x) return string.format('%.17g', x) end

-- Non-negative decimal integers compared as strings: exact past 2^53, where Lua's doubles are not.
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

-- Drops the token reservations that left the window; the live total.
local function expire_tokens(base, horizon)
  local stamps, amounts, total_key = base .. ':ts', base .. ':tk', base .. ':tt'
  local total = tonumber(redis.call('GET', total_key) or '0')
  local dropped = false
  while true do
    local old = redis.call('ZRANGEBYSCORE', stamps, '-inf', horizon, 'LIMIT', 0, 500)
    if #old == 0 then break end
    local values = redis.call('HMGET', amounts, unpack(old))
    for i = 1, #old do total = total - (tonumber(values[i]) or 0) end
    redis.call('HDEL', amounts, unpack(old))
    redis.call('ZREM', stamps, unpack(old))
    dropped = true
  end
  if dropped then redis.call('SET', total_key, total, 'KEEPTTL') end
  return total
end

local function expire_requests(base, horizon)
  redis.call('ZREMRANGEBYSCORE', base .. ':rq', '-inf', horizon)
  return redis.call('ZCARD', base .. ':rq')
end

local function expire_leases(base, now)
  redis.call('ZREMRANGEBYSCORE', base .. ':st', '-inf', now)
  return redis.call('ZCARD', base .. ':st')
end
"""

# KEYS: a base key per window, then a key per budget. ARGV: now ('' = server clock), call_id,
# window count, per window rpm, tpm, tokens, streams ('' = no such limit), per budget its max.
# Reply: now, refusal kind, index, retry_after, used, limit, missing count, missing indices...,
# per window remaining requests and tokens, per budget spent.
_ADMIT = _COMMON + r"""
local now, call_id, nwin = clock(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local horizon = now - WINDOW
local requests, reserved, streams = {}, {}, {}
for i = 1, nwin do
  local base, a = KEYS[i], 3 + (i - 1) * 4
  if ARGV[a + 1] ~= '' then requests[i] = expire_requests(base, horizon) end
  if ARGV[a + 2] ~= '' then reserved[i] = expire_tokens(base, horizon) end
  if ARGV[a + 4] ~= '' then streams[i] = expire_leases(base, now) end
end
local b0 = 3 + nwin * 4
local spent, missing = {}, {}
for j = 1, #KEYS - nwin do
  local figure = redis.call('HGET', KEYS[nwin + j], 's')
  if figure then spent[j] = figure else spent[j] = '0'; missing[#missing + 1] = j - 1 end
end

local function answer(kind, index, retry, used, limit)
  local out = {num(now), kind, index, retry, used, limit, #missing}
  for _, m in ipairs(missing) do out[#out + 1] = m end
  for i = 1, nwin do
    local a = 3 + (i - 1) * 4
    local rpm, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    if rpm then out[#out + 1] = math.max(0, rpm - requests[i]) else out[#out + 1] = '' end
    if tpm then out[#out + 1] = math.max(0, tpm - reserved[i]) else out[#out + 1] = '' end
  end
  for j = 1, #spent do out[#out + 1] = spent[j] end
  return out
end

local function tokens_free_in(base, left, tokens, limit)
  local offset = 0
  while true do
    local batch = redis.call('ZRANGE', base .. ':ts', offset, offset + 199, 'WITHSCORES')
    if #batch == 0 then return 0 end
    local ids = {}
    for k = 1, #batch, 2 do ids[#ids + 1] = batch[k] end
    local amounts = redis.call('HMGET', base .. ':tk', unpack(ids))
    for k = 1, #ids do
      left = left - (tonumber(amounts[k]) or 0)
      if left + tokens <= limit then return tonumber(batch[2 * k]) + WINDOW - now end
    end
    offset = offset + 200
  end
end

if #missing > 0 then return answer('', '', '', '', '') end
for i = 1, nwin do
  local base, a = KEYS[i], 3 + (i - 1) * 4
  local rpm, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local tokens, cs = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if rpm and requests[i] >= rpm then
    local oldest = redis.call('ZRANGE', base .. ':rq', 0, 0, 'WITHSCORES')
    return answer('requests', i - 1, num(tonumber(oldest[2]) + WINDOW - now), requests[i], rpm)
  end
  if tpm and reserved[i] + tokens > tpm then
    local retry = ''
    if tokens <= tpm then retry = num(tokens_free_in(base, reserved[i], tokens, tpm)) end
    return answer('tokens', i - 1, retry, reserved[i], tpm)
  end
  if cs and streams[i] >= cs then
    local first = redis.call('ZRANGE', base .. ':st', 0, 0, 'WITHSCORES')
    return answer('streams', i - 1, num(tonumber(first[2]) - now), streams[i], cs)
  end
end
for j = 1, #spent do
  if not less(spent[j], ARGV[b0 + j]) then return answer('budget', j - 1, '', spent[j], ARGV[b0 + j]) end
end

for i = 1, nwin do
  local base, a = KEYS[i], 3 + (i - 1) * 4
  if ARGV[a + 1] ~= '' then
    requests[i] = requests[i] + redis.call('ZADD', base .. ':rq', now, call_id)
    redis.call('EXPIRE', base .. ':rq', WINDOW_TTL)
  end
  if ARGV[a + 2] ~= '' then
    -- A call admitted again replaces its reservation rather than leaking the old one.
    local earlier = tonumber(redis.call('HGET', base .. ':tk', call_id) or '0')
    local tokens = tonumber(ARGV[a + 3])
    redis.call('ZADD', base .. ':ts', now, call_id)
    redis.call('HSET', base .. ':tk', call_id, ARGV[a + 3])
    redis.call('INCRBY', base .. ':tt', tokens - earlier)
    reserved[i] = reserved[i] + tokens - earlier
    redis.call('EXPIRE', base .. ':ts', WINDOW_TTL)
    redis.call('EXPIRE', base .. ':tk', WINDOW_TTL)
    redis.call('EXPIRE', base .. ':tt', WINDOW_TTL)
  end
  if ARGV[a + 4] ~= '' then
    redis.call('ZADD', base .. ':st', now + LEASE, call_id)
    redis.call('EXPIRE', base .. ':st', LEASE_TTL)
  end
end
return answer('', '', '', '', '')
"""

# KEYS: window base keys, then budget keys. ARGV: now, call_id, window count, per window actual
# tokens and release ('1' or ''), per budget nano-USD, unpriced ('1' or ''), expiry (unix s).
_SETTLE = _COMMON + r"""
local now, call_id, nwin = clock(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local horizon = now - WINDOW
for i = 1, nwin do
  local base, a = KEYS[i], 3 + (i - 1) * 2
  local stamp = redis.call('ZSCORE', base .. ':ts', call_id)
  -- Past the window the reservation no longer counts: leave it for expiry.
  if stamp and tonumber(stamp) > horizon then
    local reserved = tonumber(redis.call('HGET', base .. ':tk', call_id) or '0')
    redis.call('HSET', base .. ':tk', call_id, ARGV[a + 1])
    redis.call('INCRBY', base .. ':tt', tonumber(ARGV[a + 1]) - reserved)
  end
  if ARGV[a + 2] ~= '' then redis.call('ZREM', base .. ':st', call_id) end
end
local b0 = 3 + nwin * 2
for j = 1, #KEYS - nwin do
  local key, a = KEYS[nwin + j], b0 + (j - 1) * 3
  -- No spend figure: the ledger seed will hold this call's cost; an unpriced call is still
  -- counted so it is not lost before the seed.
  local present = redis.call('HEXISTS', key, 's') == 1
  if present and ARGV[a + 1] ~= '0' then redis.call('HINCRBY', key, 's', ARGV[a + 1]) end
  if ARGV[a + 2] ~= '' then redis.call('HINCRBY', key, 'u', 1) end
  if present or ARGV[a + 2] ~= '' then redis.call('EXPIREAT', key, ARGV[a + 3]) end
end
"""

# KEYS[1]: the budget. ARGV: spent, unpriced calls, expiry (unix s). Both become max(current, given).
_SEED = _COMMON + r"""
local spent = redis.call('HGET', KEYS[1], 's')
if not spent or less(spent, ARGV[1]) then redis.call('HSET', KEYS[1], 's', ARGV[1]) end
local unpriced = redis.call('HGET', KEYS[1], 'u')
if not unpriced or tonumber(unpriced) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'u', ARGV[2]) end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
"""

# KEYS: a window base key per lease. ARGV: now, then the call_id of each lease.
_RENEW = _COMMON + r"""
local now = clock(ARGV[1])
for i = 1, #KEYS do
  local leases, call_id = KEYS[i] .. ':st', ARGV[i + 1]
  local expiry = redis.call('ZSCORE', leases, call_id)
  -- An expired lease stays expired: its slot may be taken already.
  if expiry and tonumber(expiry) > now then
    redis.call('ZADD', leases, now + LEASE, call_id)
    redis.call('EXPIRE', leases, LEASE_TTL)
  end
end
"""

# KEYS: window base keys, then budget keys. ARGV: now, window count. Reply per window: requests,
# tokens, streams, seconds until the oldest request leaves ('' none); per budget: spent ('' none), unpriced.
_USAGE = _COMMON + r"""
local now, nwin = clock(ARGV[1]), tonumber(ARGV[2])
local horizon = now - WINDOW
local out = {}
for i = 1, nwin do
  local base = KEYS[i]
  local requests = expire_requests(base, horizon)
  out[#out + 1] = requests
  out[#out + 1] = expire_tokens(base, horizon)
  out[#out + 1] = expire_leases(base, now)
  if requests > 0 then
    local oldest = redis.call('ZRANGE', base .. ':rq', 0, 0, 'WITHSCORES')
    out[#out + 1] = num(tonumber(oldest[2]) + WINDOW - now)
  else
    out[#out + 1] = ''
  end
end
for j = nwin + 1, #KEYS do
  local figure = redis.call('HMGET', KEYS[j], 's', 'u')
  out[#out + 1] = figure[1] or ''
  out[#out + 1] = figure[2] or '0'
end
return out
"""

_KINDS: dict[bytes, Literal["requests", "tokens", "streams", "budget"]] = {
    b"requests": "requests", b"tokens": "tokens", b"streams": "streams", b"budget": "budget"}


class _Script:
    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


class _Connections:
    """A few connections, each carrying one command at a time. redis-py's own pool and client
    cost more CPU per command (events, metrics, each socket step's timeout run as a task) than
    the round trip itself; here a command is one write and one read."""

    __slots__ = ("_factory", "_idle", "_free", "_closed")

    def __init__(self, factory: ConnectionPool, size: int) -> None:
        self._factory = factory
        self._idle: list[AbstractConnection] = []
        self._free = asyncio.Semaphore(size)
        self._closed = False

    async def call(self, command: bytes) -> Any:
        async with self._free:
            connection = await self._take()
            try:
                await connection.send_packed_command(command, check_health=False)
                reply = await connection.read_response()
            except ResponseError:
                # An error reply is a whole reply: the connection is still in step.
                await self._give_back(connection)
                raise
            except BaseException:
                # Cancelled or broken mid-command: a late reply must never answer the next one.
                await connection.disconnect(nowait=True)
                raise
            await self._give_back(connection)
            return reply

    async def _take(self) -> AbstractConnection:
        if self._idle:
            connection = self._idle.pop()
            try:
                if not await connection.can_read():
                    return connection
            except RedisConnectionError:
                pass
            # Bytes or EOF on an idle connection: the server closed it (a restart, say).
            await connection.disconnect(nowait=True)
        else:
            connection = self._factory.connection_class(**self._factory.connection_kwargs)
        # redis-py leaves connect() unannotated.
        connect: Callable[[], Awaitable[None]] = connection.connect
        try:
            await connect()
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        return connection

    async def _give_back(self, connection: AbstractConnection) -> None:
        if self._closed:
            await connection.disconnect()
        else:
            self._idle.append(connection)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


class RedisStore:
    __slots__ = ("_clock", "_timeout_s", "_connections", "_windows", "_budgets", "_secrets")

    def __init__(self, url: str, *, timeout_s: float, key_prefix: str = "tollway",
                 clock: Callable[[], float] | None = None, max_connections: int = 8) -> None:
        """clock None: the Redis server's clock, one for every replica."""
        self._clock = clock
        self._timeout_s = timeout_s
        self._secrets = _secrets_of(url)
        try:
            # Used only to make connections from the URL (redis://, rediss://, unix://). No retries:
            # a store that failed within timeout_s is reported, not waited on again. Reads have no
            # socket timeout of their own: one deadline bounds the whole command (see _run).
            factory = ConnectionPool.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=None,
                                              retry=Retry(NoBackoff(), 0))
        except ValueError:
            raise ValueError("limits.redis_url is not a valid Redis URL") from None
        self._connections = _Connections(factory, max_connections)
        self._windows = "{" + key_prefix + "}:w:"
        self._budgets = "{" + key_prefix + "}:b:"

    async def admit(self, call_id: str, windows: Sequence[WindowDemand],
                    budgets: Sequence[BudgetDemand]) -> Admission:
        if not windows and not budgets:
            return Admission(None, (), (), (), (), self._clock() if self._clock else time.time())
        prefix = self._windows
        keys = [prefix + demand.key for demand in windows]
        keys += [self._budgets + budget.key for budget in budgets]
        args: list[str | int | float] = [self._now_arg(), call_id, len(windows)]
        for demand in windows:
            args += (_or_empty(demand.requests_per_minute), _or_empty(demand.tokens_per_minute), demand.tokens,
                     _or_empty(demand.concurrent_streams))
        args += [budget.max_nano_usd for budget in budgets]
        reply = await self._run(_ADMIT_SCRIPT, keys, args)
        return _admission(reply, len(windows))

    async def settle(self, call_id: str, windows: Sequence[WindowSettlement],
                     charges: Sequence[BudgetCharge]) -> None:
        if not windows and not charges:
            return
        keys = [self._windows + settlement.key for settlement in windows]
        keys += [self._budgets + charge.key for charge in charges]
        args: list[str | int | float] = [self._now_arg(), call_id, len(windows)]
        for settlement in windows:
            args += (settlement.actual_tokens, "1" if settlement.release_stream else "")
        for charge in charges:
            args += (charge.nano_usd, "1" if charge.unpriced else "", int(charge.expires_at) + FIGURE_GRACE_S)
        await self._run(_SETTLE_SCRIPT, keys, args)

    async def seed_budget(self, key: str, spent_nano_usd: int, unpriced_calls: int, expires_at: float) -> None:
        await self._run(_SEED_SCRIPT, [self._budgets + key],
                        [spent_nano_usd, unpriced_calls, int(expires_at) + FIGURE_GRACE_S])

    async def renew_streams(self, leases: Sequence[tuple[str, str]]) -> None:
        if not leases:
            return
        args: list[str | int | float] = [self._now_arg()]
        args += [call_id for _, call_id in leases]
        await self._run(_RENEW_SCRIPT, [self._windows + key for key, _ in leases], args)

    async def usage(self, windows: Sequence[str],
                    budgets: Sequence[str]) -> tuple[list[WindowUsage], list[BudgetUsage]]:
        if not windows and not budgets:
            return [], []
        keys = [self._windows + key for key in windows] + [self._budgets + key for key in budgets]
        reply = await self._run(_USAGE_SCRIPT, keys, [self._now_arg(), len(windows)])
        window_usage = [WindowUsage(int(reply[i]), int(reply[i + 1]), int(reply[i + 2]),
                                    float(reply[i + 3]) if reply[i + 3] else None)
                        for i in range(0, 4 * len(windows), 4)]
        budget_usage = [BudgetUsage(int(reply[i]) if reply[i] else None, int(reply[i + 1]))
                        for i in range(4 * len(windows), len(reply), 2)]
        return window_usage, budget_usage

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._connections.call(_pack("PING"))
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._error(exc) from None

    async def close(self) -> None:
        await self._connections.close()

    def _now_arg(self) -> str | float:
        return "" if self._clock is None else self._clock()

    async def _run(self, script: _Script, keys: list[str], args: list[str | int | float]) -> Any:
        command = _pack("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            # One deadline for the whole call: waiting for a connection, connecting, the reply.
            async with asyncio.timeout(self._timeout_s):
                try:
                    return await self._connections.call(command)
                except NoScriptError:
                    # A restarted or flushed server forgot the script: load it once, run again.
                    await self._connections.call(_pack("SCRIPT", "LOAD", script.source))
                    return await self._connections.call(command)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> QuotaStoreError:
        if isinstance(exc, TimeoutError):
            return QuotaStoreError(f"the quota store did not answer within {self._timeout_s * 1000:g} ms")
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return QuotaStoreError(f"the quota store failed: {type(exc).__name__}: {text}")


_ADMIT_SCRIPT = _Script(_ADMIT)
_SETTLE_SCRIPT = _Script(_SETTLE)
_SEED_SCRIPT = _Script(_SEED)
_RENEW_SCRIPT = _Script(_RENEW)
_USAGE_SCRIPT = _Script(_USAGE)


def _pack(*parts: bytes | str | int | float) -> bytes:
    """One command in RESP. A float is written by repr, which reads back to the same double."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _or_empty(limit: int | None) -> int | str:
    return "" if limit is None else limit


def _admission(reply: list[Any], windows: int) -> Admission:
    kind = _KINDS.get(reply[1])
    refusal = None
    if kind is not None:
        retry = float(reply[3]) if reply[3] else None
        refusal = Refusal(kind, int(reply[2]), retry, int(reply[4]), int(reply[5]))
    missing = reply[7:7 + reply[6]]
    at = 7 + reply[6]
    remaining = reply[at:at + 2 * windows]
    return Admission(
        refusal,
        tuple(missing),
        tuple(None if value == b"" else value for value in remaining[0::2]),
        tuple(None if value == b"" else value for value in remaining[1::2]),
        tuple(int(spent) for spent in reply[at + 2 * windows:]),
        float(reply[0]),
    )


def _secrets_of(url: str) -> tuple[str, ...]:
    """What of the URL must never appear in a message: itself and any password in it."""
    secrets = {url}
    try:
        parts = urlsplit(url)
        for value in (parts.password, *parse_qs(parts.query).get("password", [])):
            if value:
                secrets.update((value, unquote(value)))
    except ValueError:
        pass
    # Longest first, so a password inside the URL does not leave the rest of the URL behind.
    return tuple(sorted(secrets, key=len, reverse=True))
