"""Throughput of the local API server: addMessage requests of ~4 KB from a concurrent client.

The server runs as `memos-etl serve` in its own process; this process is the client (a
minimal keep-alive HTTP/1.1 client on asyncio streams, one connection per worker). Each
configuration gets a fresh store; figures are printed side by side with their ratio to the
first one. The last row drives the default server with `httpx.AsyncClient` instead, to show
how much of a run such a client costs.

    .venv/bin/python tests/bench/bench_localapi.py [--requests 3000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

TARGET_RPS = 500
VOCABULARY = """
the of and to a in is it you that he was for on are with as his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her
long make thing see him two has look more day could go come did number sound no most people my
over know water than call first who may down side been now find any new work part take get
place made live where after back little only round man year came show every good me give our
under name very through just form sentence great think say help low line differ turn cause much
mean before move right boy old too same tell does set three want air well also play small end
put home read hand port large spell add even land here must big high such follow act why ask
men change went light kind off need house picture try us again animal point mother world near
build self earth father head stand own page should country found answer school grow study still
learn plant cover food sun four between state keep eye never last let thought city tree cross
farm hard start might story saw far sea draw left late run while press close night real life
few north open seem together next white children begin got walk example ease paper group always
music those both mark often letter until mile river car feet care second book carry took science
eat room friend began idea fish mountain stop once base hear horse cut sure watch color face
wood main enough plain girl usual young ready above ever red list though feel talk bird soon
body dog family direct pose leave song measure door product black short numeral class wind
question happen complete ship area half rock order fire south problem piece told knew pass since
top whole king space heard best hour better true during hundred five remember step early hold
west ground interest reach fast verb sing listen six table travel less morning ten simple
several vowel toward war lay against pattern slow center love person money serve appear road map
rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark
machine note wait plan figure star box noun field rest correct able pound done beauty drive
refund invoice account password login error server deploy release budget meeting schedule
"""


def make_bodies(n: int, size: int, seed: int = 7) -> list[bytes]:
    """`n` addMessage bodies of about `size` bytes: 4 messages of English-like text."""
    rng = random.Random(seed)
    words = VOCABULARY.split() + [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(300)
    ]
    bodies = []
    for i in range(n):
        messages = []
        for j in range(4):
            text = " ".join(rng.choices(words, k=size // 4 // 6))[: size // 4 - 40]
            messages.append(
                {
                    "role": "user" if j % 2 == 0 else "assistant",
                    "content": text,
                    "chat_time": "2025-06-01T10:00:00Z",
                }
            )
        body = {
            "user_id": f"user-{i % 20}",
            "conversation_id": f"conv-{i % 200}",
            "messages": messages,
            "tags": ["bench"],
        }
        bodies.append(orjson.dumps(body))
    return bodies


def start(db: Path, extra: list[str]) -> tuple[subprocess.Popen[str], str]:
    exe = Path(sys.executable).with_name("memos-etl")
    proc = subprocess.Popen(
        [str(exe), "serve", "--db", str(db), "--port", "0", "-q", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = line.split()[2]
    return proc, url


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, so the client costs far less
    CPU than the server it measures (httpx's async client needs ~5 ms of CPU per request
    here, which on 2 cores would measure the client, not the server)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_and_headers = await self.reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(v)
            for k, _, v in (ln.partition(":") for ln in lines[1:])
            if k.lower() == "content-length"
        )
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


class HttpxClient:
    """The same interface on one shared `httpx.AsyncClient` (for comparison only)."""

    def __init__(self, shared: httpx.AsyncClient) -> None:
        self.shared = shared

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        r = await self.shared.post(path, content=body, headers=JSON_HEADERS)
        return r.status_code, r.content

    async def close(self) -> None:
        pass


JSON_HEADERS = {"content-type": "application/json"}


async def drive(
    url: str, bodies: list[bytes], concurrency: int, client: str = "raw"
) -> tuple[float, dict[str, int]]:
    """Send every body to /add/message over `concurrency` keep-alive connections, then one
    search (which first indexes whatever the background indexer has not yet)."""
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as shared:
            return await _drive([HttpxClient(shared)] * concurrency, bodies)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await _drive([RawClient(host, int(port)) for _ in range(concurrency)], bodies)


async def _drive(
    clients: list[RawClient] | list[HttpxClient], bodies: list[bytes]
) -> tuple[float, dict[str, int]]:
    await asyncio.gather(*(c.post("/get/status", b'{"task_id":"warm-up"}') for c in clients))
    outcomes: dict[str, int] = {}
    queue = list(reversed(bodies))

    async def worker(client: RawClient | HttpxClient) -> None:
        while queue:
            status, body = await client.post("/add/message", queue.pop())
            key = f"http{status}/code{orjson.loads(body)['code']}"
            outcomes[key] = outcomes.get(key, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    # a search brings the search index up to date: count that work in, too
    status, body = await clients[0].post("/search/memory", b'{"user_id":"user-0","query":"refund"}')
    assert status == 200 and orjson.loads(body)["code"] == 0
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in clients))
    return elapsed, outcomes


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    bodies = make_bodies(args.requests, args.size)
    mean = sum(map(len, bodies)) / len(bodies)
    print(
        f"{args.requests} addMessage requests, mean body {mean:.0f} B, "
        f"concurrency {args.concurrency}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} before (other work on the machine)"
    )
    configs = [
        ("sync=normal (default)", [], "raw"),
        ("sync=full", ["--sync", "full"], "raw"),
        ("sync=normal, httpx client", [], "httpx"),
    ]
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra, client) in enumerate(configs):
            proc, url = start(Path(tmp) / f"store{i}.sqlite", extra)
            try:
                cpu0 = cpu_seconds(proc.pid)
                client0 = time.process_time()
                elapsed, outcomes = asyncio.run(drive(url, bodies, args.concurrency, client))
                server_cpu = (cpu_seconds(proc.pid) - cpu0) / args.requests * 1000
                client_cpu = (time.process_time() - client0) / args.requests * 1000
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            rps = args.requests / elapsed
            first = first or rps
            print(
                f"{name:26s} {rps:8.0f} req/s  {elapsed:6.2f} s  x{rps / first:.2f}  "
                f"server CPU {server_cpu:.2f} ms/req  client CPU {client_cpu:.2f} ms/req  "
                f"{'OK' if rps >= TARGET_RPS else 'BELOW'} target {TARGET_RPS}  {outcomes}"
            )


if __name__ == "__main__":
    main()
