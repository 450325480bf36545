"""A serving benchmark in the manner of vLLM's ``benchmark_serving.py``, against a running server.

Requests stream from the native route (``POST .../predict?stream=1``, NDJSON), so the
client sees every token as it arrives: time to first token (TTFT), inter-token
latency (ITL), request latency, output tokens. Two ways to send them:

* ``closed``: ``--clients`` loops, each sending its next request when the last ends;
* ``poisson``: requests arrive at ``--rate`` per second (exponential gaps), each on its own.

Prompts are random token ids (``--prompt-len``), budgets ``--new`` (``a-b`` draws
uniformly), with ``ignore_eos`` so that each runs its whole budget. While the run
lasts, the model's ``sequences.running`` is sampled to give the mean running batch.

    python benchmarks/serving.py --url http://127.0.0.1:8765 --token T --model llm \\
        --mode poisson --rate 8 --requests 200 --prompt-len 16 --new 16-256
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Outcome:
    new: int
    sent: float
    first: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    done: float = 0.0
    tokens: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float:
        return self.first - self.sent

    @property
    def latency(self) -> float:
        return self.done - self.sent


def parse_range(text: str) -> tuple[int, int]:
    low, _, high = str(text).partition("-")
    return int(low), int(high or low)


def workload(count: int, prompt_len: tuple[int, int], new: tuple[int, int], vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"input_ids": [rng.randrange(3, vocab) for _ in range(rng.randint(*prompt_len))],
             "max_new_tokens": rng.randint(*new), "ignore_eos": True} for _ in range(count)]


async def one_request(client, url: str, body: dict) -> Outcome:
    outcome = Outcome(body["max_new_tokens"], time.perf_counter())
    try:
        async with client.stream("POST", url, params={"stream": "1"}, json=body) as response:
            if response.status_code != 200:
                outcome.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return outcome
            async for line in response.aiter_lines():
                if not line:
                    continue
                message = json.loads(line)
                now = time.perf_counter()
                if "partial" in message:
                    if not outcome.first:
                        outcome.first = now
                    outcome.arrivals.append(now)
                    outcome.tokens += 1
                elif "error" in message:
                    outcome.error = message["error"].get("message", "error")
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.done = time.perf_counter()
    return outcome


async def sample_running(client, base: str, model: str, stop: asyncio.Event, into: list[int]) -> None:
    while not stop.is_set():
        try:
            described = (await client.get(f"{base}lmserve/api/models/{model}")).json()
            into.append(described.get("sequences", {}).get("running", 0))
        except Exception:  # noqa: BLE001 - a missed sample is fine
            pass
        await asyncio.sleep(0.05)


async def run(url: str, token: str, model: str, bodies: list[dict], mode: str, clients: int = 16,
              rate: float = 8.0, seed: int = 0) -> dict:
    import httpx

    base = url.rstrip("/") + "/"
    predict = f"{base}lmserve/api/models/{model}/predict"
    headers = {"Authorization": f"token {token}"}
    limits = httpx.Limits(max_connections=max(clients, 64) + 8, max_keepalive_connections=max(clients, 64) + 8)
    async with httpx.AsyncClient(headers=headers, timeout=600, limits=limits) as client:
        stop, running = asyncio.Event(), []
        sampler = asyncio.ensure_future(sample_running(client, base, model, stop, running))
        started = time.perf_counter()
        if mode == "closed":
            queue = list(bodies)

            async def loop() -> list[Outcome]:
                done = []
                while queue:
                    done.append(await one_request(client, predict, queue.pop(0)))
                return done

            outcomes = [o for part in await asyncio.gather(*(loop() for _ in range(clients))) for o in part]
        else:
            rng = random.Random(seed)
            tasks = []
            for body in bodies:
                tasks.append(asyncio.ensure_future(one_request(client, predict, body)))
                await asyncio.sleep(rng.expovariate(rate))
            outcomes = list(await asyncio.gather(*tasks))
        elapsed = time.perf_counter() - started
        stop.set()
        await sampler
    return summarize(outcomes, elapsed, running)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(outcomes: list[Outcome], elapsed: float, running: list[int]) -> dict:
    good = [o for o in outcomes if o.error is None]
    itls = [b - a for o in good for a, b in zip(o.arrivals, o.arrivals[1:])]
    tokens = sum(o.tokens for o in good)
    busy = [r for r in running if r > 0]
    return {
        "requests": len(outcomes), "errors": len(outcomes) - len(good),
        "first_errors": [o.error for o in outcomes if o.error][:3],
        "seconds": round(elapsed, 3), "req_per_s": round(len(good) / elapsed, 3),
        "output_tok_per_s": round(tokens / elapsed, 1),
        "ttft_ms_p50": _ms(_pct([o.ttft for o in good], 0.5)), "ttft_ms_p99": _ms(_pct([o.ttft for o in good], 0.99)),
        "itl_ms_p50": _ms(_pct(itls, 0.5)), "itl_ms_p99": _ms(_pct(itls, 0.99)),
        "latency_s_p50": _round(_pct([o.latency for o in good], 0.5)),
        "mean_running": round(statistics.mean(busy), 2) if busy else 0,
        "by_budget": {str(n): {"count": len(group), "latency_s_p50": _round(_pct([o.latency for o in group], 0.5))}
                      for n, group in _by_budget(good).items()},
    }


def _by_budget(outcomes: list[Outcome]) -> dict[int, list[Outcome]]:
    groups: dict[int, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.new, []).append(o)
    return dict(sorted(groups.items()))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=["closed", "poisson"], default="closed")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-len", default="16")
    parser.add_argument("--new", default="128")
    parser.add_argument("--vocab", type=int, default=320)
    args = parser.parse_args(argv)
    bodies = workload(args.requests, parse_range(args.prompt_len), parse_range(args.new), args.vocab)
    print(json.dumps(asyncio.run(run(args.url, args.token, args.model, bodies, args.mode, args.clients, args.rate)),
                     indent=2))


if __name__ == "__main__":
    main()
