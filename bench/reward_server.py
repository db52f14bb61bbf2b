"""Reward server throughput: dynamic batching on vs off, many concurrent clients on 127.0.0.1.

Model: a tiny random Qwen2.5-VL reward model (scalar head, VQ + TA, normalised; built offline in a temp
dir) or `--model DIR`. Media: `--images` random 84 x 56 PNGs in a temporary media root.

The same server (`python -m mmreward.serve`) runs as two subprocesses, started once:

* batched:   --max_batch 32 --max_wait_ms 10 (the defaults: items of concurrent requests share a forward);
* unbatched: --max_batch 1 --max_wait_ms 0 (every item scored on its own, as it arrives).

A phase: `--clients` concurrent clients (asyncio + aiohttp, the library OpenRLHF's remote reward client
uses; one connection each) send `--requests` requests of one image item each, with an Idempotency-Key
per request, until all are answered or `--time-limit` seconds have passed (then they stop sending;
throughput counts what was answered). Items/s = answered items / wall time of the phase; items per
server CPU-second (the server process's user + system time, from /proc) are printed beside it. Phases
alternate between the two servers `--repeats` times, so both see the same machine load; the medians are
compared. Every phase must answer every request it sent exactly once with a 200 (the server's own
response count is checked against the requests sent), and the servers' rewards must agree request by
request (|difference| <= 1e-4), or the benchmark fails. torch gets `--threads` threads in both servers
(1 by default: on a shared CPU, spinning multi-threaded kernels slow small batches more than large
ones). The client load runs on the same CPU as the servers; uvicorn uses uvloop and httptools (pinned).

On an oversubscribed CPU the wall-clock ratio falls below the CPU-time one: the unbatched server, busy
all the time, takes a larger share of the machine, while the batched one waits on thread wake-ups.

    python bench/reward_server.py [--clients 32] [--requests 512] [--repeats 3] [--time-limit 180] [--threads 1]
        [--model DIR] [--device cuda:0]

Prints `RESULT reward_server ratio=<median batched items/s over median unbatched items/s> target=3`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from PIL import Image

from mmreward.cli import ArgParser, run
from mmreward.serve.process import ServerProcess

TARGET = 3.0
RUNS = {"batched": ["--max_batch", "32", "--max_wait_ms", "10"],
        "unbatched": ["--max_batch", "1", "--max_wait_ms", "0"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgParser(__doc__)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=512, help="requests per phase (one item each)")
    parser.add_argument("--repeats", type=int, default=3, help="phases per server, interleaved (medians reported)")
    parser.add_argument("--time-limit", type=float, default=180.0, help="seconds a run may send requests")
    parser.add_argument("--images", type=int, default=16, help="distinct images in the media root")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in the server")
    parser.add_argument("--model", default=None, help="reward model checkpoint (default: a tiny random one)")
    parser.add_argument("--device", default=None, help="the servers' device, e.g. cuda:0 (default: theirs)")
    return parser.parse_args(argv)


def build_tiny_checkpoint(out: Path) -> Path:
    from mmreward.backbones.tiny import build_tiny_vlm
    from mmreward.model import RewardModel, ScoringSettings

    backbone = build_tiny_vlm(out / "backbone")
    model = RewardModel.from_backbone(backbone, dimensions=["VQ", "TA"], head_options={"init_std": 0.5},
                                      settings=ScoringSettings(overall="sum", normalize=True))
    model.set_reward_stats({"VQ": {"mean": 0.0, "std": 1.0}, "TA": {"mean": 0.0, "std": 1.0}})
    return model.save_pretrained(out / "model")


def write_images(root: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(root / f"img_{k:03d}.png")
        names.append(f"img_{k:03d}.png")
    return names


async def load(url: str, bodies: list[dict], clients: int, time_limit: float, run: str) -> tuple[dict, float]:
    """Send every body once from `clients` concurrent clients; the answers by request index and the wall time."""
    answers: dict[int, list] = {}
    pending = iter(range(len(bodies)))
    deadline = time.monotonic() + time_limit

    async def client(http: aiohttp.ClientSession) -> None:
        for index in pending:
            if time.monotonic() > deadline:
                return
            headers = {"Idempotency-Key": f"{run}-{index}"}
            async with http.post(f"{url}/reward", json=bodies[index], headers=headers) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"request {index}: {response.status} {body}")
            answers.setdefault(index, []).append(body["rewards"][0])

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return answers, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(name: str, args: argparse.Namespace, checkpoint: Path, media: Path) -> ServerProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    server = ServerProcess(["--model", str(checkpoint), "--media_root", str(media), "--port", "0",
                            "--log_level", "warning", *RUNS[name], *(["--device", args.device] if args.device else [])],
                           env=env)
    server.wait_ready()
    return server


def check_phase(name: str, answers: dict[int, list], before: dict, after: dict) -> str:
    """Fail unless every request sent was answered exactly once with a 200, by the client's and the server's
    count; the phase's batch sizes from the server's histogram."""
    sent = len(answers)
    served = after["responses"].get("/reward 200", 0) - before["responses"].get("/reward 200", 0)
    twice = [i for i, got in answers.items() if len(got) != 1]
    if twice or served != sent or set(after["responses"]) != {"/reward 200"}:
        raise SystemExit(f"{name}: {sent} requests answered, the server counted {served} ({after['responses']}); "
                         f"answered more than once: {twice[:10]}")
    earlier = before["batch_size"]["histogram"]
    sizes = {int(k): n - earlier.get(k, 0) for k, n in after["batch_size"]["histogram"].items()}
    batches = sum(sizes.values())
    mean = sum(k * n for k, n in sizes.items()) / batches
    return f"{batches} forwards, mean batch {mean:.1f}, max {max(k for k, n in sizes.items() if n)}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_reward_server_") as tmp:
        tmp_path = Path(tmp)
        checkpoint = Path(args.model) if args.model else build_tiny_checkpoint(tmp_path)
        media = tmp_path / "media"
        media.mkdir()
        names = write_images(media, args.images)
        bodies = [{"items": [{"prompt": f"a picture, variant {i % 7}", "image": names[i % len(names)]}]}
                  for i in range(args.requests)]
        print(f"{args.requests} one-item requests per phase from {args.clients} clients, {args.threads} torch "
              f"thread(s) per server", flush=True)
        servers: dict[str, ServerProcess] = {}
        rates: dict[str, list[float]] = {name: [] for name in RUNS}
        cpu_rates: dict[str, list[float]] = {name: [] for name in RUNS}
        reference: dict[int, list] | None = None
        worst = 0.0
        try:
            for name in RUNS:
                servers[name] = start_server(name, args, checkpoint, media)
                asyncio.run(load(servers[name].url, bodies[:args.clients], args.clients, args.time_limit, "warm-up"))
            for repeat in range(args.repeats):  # interleaved, so both see the same machine load
                for name, server in servers.items():
                    before, cpu = httpx.get(f"{server.url}/metrics").json(), cpu_seconds(server.proc.pid)
                    answers, wall = asyncio.run(load(server.url, bodies, args.clients, args.time_limit,
                                                     f"{name}-{repeat}"))
                    cpu = cpu_seconds(server.proc.pid) - cpu
                    after = httpx.get(f"{server.url}/metrics").json()
                    batches = check_phase(name, answers, before, after)
                    rates[name].append(len(answers) / wall)
                    cpu_rates[name].append(len(answers) / cpu)
                    print(f"{name:>9} #{repeat}: {len(answers)}/{len(bodies)} answered once each in {wall:.2f} s = "
                          f"{rates[name][-1]:.1f} items/s ({cpu_rates[name][-1]:.0f} per server CPU-second); "
                          f"{batches}; "
                          f"recent latency ms {after['latency_ms']}", flush=True)
                    reference = reference or answers
                    common = set(reference) & set(answers)
                    worst = max([worst] + [abs(reference[i][0][k] - answers[i][0][k])
                                           for i in common for k in answers[i][0]])
            for name, server in servers.items():
                if server.terminate() != 0:
                    raise SystemExit(f"{name}: the server did not exit cleanly:\n{server.log()[-2000:]}")
        finally:
            for server in servers.values():
                server.close()
    print(f"rewards agree request by request across all phases to {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit(f"rewards differ between phases by {worst:.2e} > 1e-4")
    batched_rate, unbatched_rate = statistics.median(rates["batched"]), statistics.median(rates["unbatched"])
    batched_cpu, unbatched_cpu = statistics.median(cpu_rates["batched"]), statistics.median(cpu_rates["unbatched"])
    print(f"median items/s: batched {batched_rate:.1f}, unbatched {unbatched_rate:.1f}; items per server CPU-second: "
          f"batched {batched_cpu:.0f}, unbatched {unbatched_cpu:.0f} (ratio {batched_cpu / unbatched_cpu:.2f})")
    print(f"RESULT reward_server ratio={batched_rate / unbatched_rate:.2f} target={TARGET:g}")


if __name__ == "__main__":
    run(main)
