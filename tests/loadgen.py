"""A bounded HTTP load generator for 127.0.0.1 (edge zero-downtime tests and benchmarks).

    result = asyncio.run(run_load("http://127.0.0.1:8088/v1/x", seconds=20,
                                  max_requests=4000, concurrency=8))
    result.failed, result.longest_gap_s, result.versions_seen_in_order

`concurrency` clients each send GET requests back to back over keep-alive connections
(aiohttp, like a browser: an idempotent request on a reused connection that the server
closed before answering is retried once on a fresh one — RFC 9112 §9.3.1). The run stops at
whichever bound comes first: `seconds`, `max_requests` or the optional `stop` event; every
request has its own timeout.
A request is `ok` only when the status is 200; anything else is counted in `errors_by_kind`
(`status 503`, `ServerDisconnectedError`, `timeout`, ...). Only loopback URLs are accepted.

`longest_gap_s` is the longest time between two consecutive successful responses (across
all clients; the start of the run counts as a success, so a slow first answer shows too).
`versions_seen_in_order` is the `version` field of the JSON bodies in completion order with
consecutive repeats collapsed (`["1.0", "2.0"]` for a clean switch).

Run as a script for a quick look: `python -m tests.loadgen URL [seconds] [max_requests]`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

MAX_VERSIONS = 2000  # cap on the collapsed version sequence (alternating replicas)


@dataclass(frozen=True, slots=True)
class LoadResult:
    total: int
    ok: int
    failed: int
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    longest_gap_s: float = 0.0
    versions_seen_in_order: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # when the longest gap was (time.time() of the success before and after it), how many
    # requests failed outside it, and the longest any one request took (a request that
    # hangs, e.g. on a SYN or ARP retry, shows here)
    gap_window: tuple[float, float] = (0.0, 0.0)
    failed_outside_gap: int = 0
    slowest_request_s: float = 0.0
    outside_gap_at: list[float] = field(default_factory=list)  # when those failed (time.time)

    def summary(self) -> str:
        return (f"{self.total} requests in {self.seconds:.1f}s, {self.failed} failed "
                f"{dict(self.errors_by_kind) or ''}, longest gap between successes "
                f"{self.longest_gap_s * 1000:.0f} ms, versions "
                f"{_short(self.versions_seen_in_order)}").replace(" ,", ",")


def _short(versions: list[str]) -> str:
    if len(versions) <= 8:
        return " -> ".join(versions)
    return " -> ".join(versions[:4]) + f" ... ({len(versions)} switches) ... " + " -> ".join(
        versions[-3:])


def _check_loopback(url: str) -> None:
    hostname = urlsplit(url).hostname
    if hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load is only ever sent to 127.0.0.1, not {hostname!r}")


async def run_load(url: str, *, seconds: float, max_requests: int, concurrency: int = 8,
                   request_timeout: float = 10.0, headers: dict[str, str] | None = None,
                   stop: asyncio.Event | None = None, min_requests: int = 0) -> LoadResult:
    """Send GETs to `url` from `concurrency` clients until `seconds` or `max_requests`
    (or, earlier, once `stop` is set and at least `min_requests` were sent: for "until the
    rollout is done and N requests were made, at most S seconds")."""
    _check_loopback(url)
    started = time.monotonic()
    deadline = started + seconds
    budget = [max_requests]
    errors: Counter[str] = Counter()
    counts = {"total": 0, "ok": 0}
    last_ok = [started]
    gap = [0.0]
    window = [started, started]
    versions: list[str] = []
    failed_at: list[float] = []
    slowest = [0.0]

    def success(version: str | None) -> None:
        now = time.monotonic()
        if now - last_ok[0] > gap[0]:
            gap[0] = now - last_ok[0]
            window[:] = [last_ok[0], now]
        last_ok[0] = now
        counts["ok"] += 1
        if version is not None and (not versions or versions[-1] != version) and len(
                versions) < MAX_VERSIONS:
            versions.append(version)

    async def client(session: aiohttp.ClientSession) -> None:
        while budget[0] > 0 and time.monotonic() < deadline and not (
                stop is not None and stop.is_set() and counts["total"] >= min_requests):
            budget[0] -= 1
            counts["total"] += 1
            sent = time.monotonic()
            try:
                async with session.get(url, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        errors[f"status {resp.status}"] += 1
                        failed_at.append(time.monotonic())
                        continue
                    success(_version(body))
            except TimeoutError:
                errors["timeout"] += 1
                failed_at.append(time.monotonic())
            except aiohttp.ClientError as exc:
                errors[type(exc).__name__] += 1
                failed_at.append(time.monotonic())
            except OSError as exc:
                errors[type(exc).__name__] += 1
                failed_at.append(time.monotonic())
            finally:
                slowest[0] = max(slowest[0], time.monotonic() - sent)

    timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=min(5.0,
                                                                             request_timeout))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    end = time.monotonic()
    # the time from the last success to the end of the run is a gap as well
    if end - last_ok[0] > gap[0] or not counts["ok"]:
        gap[0], window[:] = end - last_ok[0], [last_ok[0], end]
    wall = time.time() - end  # monotonic -> wall clock
    outside = [t for t in failed_at if not window[0] <= t <= window[1]]
    return LoadResult(total=counts["total"], ok=counts["ok"],
                      failed=counts["total"] - counts["ok"], errors_by_kind=dict(errors),
                      longest_gap_s=gap[0], versions_seen_in_order=versions,
                      seconds=end - started, gap_window=(window[0] + wall, window[1] + wall),
                      failed_outside_gap=len(outside),
                      outside_gap_at=[t + wall for t in outside[:MAX_VERSIONS]],
                      slowest_request_s=slowest[0])


def _version(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return str(version) if version is not None else None


if __name__ == "__main__":
    target = sys.argv[1]
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    cap = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    print(asyncio.run(run_load(target, seconds=secs, max_requests=cap, concurrency=8)).summary())
