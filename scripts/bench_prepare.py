"""Data preparation against its limit: where llmjax-prepare's time goes, its tokenizing
throughput per core against the raw speed of the same tokenizer, and the peak memory of a large
input.

    TOKENIZERS_PARALLELISM=false .venv/bin/python scripts/bench_prepare.py [--big_gb 1] [--workers 2]

On the standard library's source (the default corpus), in one run:
  1. a full preparation (tokenizer training included, --workers processes): seconds and MB/s;
  2. the raw limit: the trained tokenizer's `encode_batch` over the same documents in this one
     process, one thread (TOKENIZERS_PARALLELISM=false), best of --repeats;
  3. llmjax-prepare with that tokenizer given (no training) and one worker: the per-core
     throughput, and its ratio to (2), the figure the performance issue sets at >= 70%;
  4. with --big_gb N, a JSONL input of about N GB (the corpus's documents repeated) prepared with
     --workers processes: MB/s and the peak resident memory of the whole process tree (sampled
     every 50 ms), which must stay bounded whatever the input's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
PREPARE = str(ROOT / ".venv" / "bin" / "llmjax-prepare")


def stdlib_documents() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from llmjax.data import sources  # noqa: PLC0415

    root = sources.stdlib_root()
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.rglob("*.py"))
            if "site-packages" not in p.parts]


def run_measured(command: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in bytes of the command and all its children together)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, root = 0, psutil.Process(process.pid)

    def sample():
        nonlocal peak
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    seconds = time.perf_counter() - start
    sampler.join()
    if process.returncode:
        sys.exit(f"error: {' '.join(command)} failed:\n{output[-3000:]}")
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big_gb", type=float, default=0.0)
    args = parser.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer  # noqa: PLC0415

    docs = stdlib_documents()
    mb = sum(len(d.encode()) for d in docs) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "stdlib.jsonl"
        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        seconds, peak = run_measured([PREPARE, "--input", str(corpus), "--out", str(tmp / "full"),
                                      "--workers", str(args.workers)])
        print(f"1. full preparation of {mb:.1f} MB ({len(docs):,} documents), tokenizer training included, "
              f"{args.workers} workers: {seconds:.1f}s = {mb / seconds:.2f} MB/s (peak RSS {peak / 2**20:,.0f} MB)")
        tokenizer_file = tmp / "full" / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        raw = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for i in range(0, len(docs), 256):  # llmjax's batch size of documents.
                tokenizer.encode_batch(docs[i:i + 256])
            raw.append(time.perf_counter() - start)
        raw_mbs = mb / min(raw)
        print(f"2. raw tokenizer limit, one process, one thread (encode_batch): {raw_mbs:.2f} MB/s "
              f"(best of {args.repeats}: {min(raw):.1f}s)")
        seconds, peak = run_measured([PREPARE, "--input", str(corpus), "--out", str(tmp / "given"), "--tokenizer",
                                      str(tokenizer_file), "--workers", "1"])
        print(f"3. llmjax-prepare, tokenizer given, 1 worker: {seconds:.1f}s = {mb / seconds:.2f} MB/s per core "
              f"= {mb / seconds / raw_mbs:.0%} of the raw limit (start-up and writing included; "
              f"peak RSS {peak / 2**20:,.0f} MB)")
        if args.big_gb:
            big = tmp / "big.jsonl"
            copies = max(1, round(args.big_gb * 2**30 / corpus.stat().st_size))
            with big.open("w") as out:
                for copy in range(copies):
                    out.writelines(json.dumps({"text": f"# copy {copy}\n{d}"}) + "\n" for d in docs)
            size = big.stat().st_size / 2**20
            seconds, peak = run_measured([PREPARE, "--input", str(big), "--out", str(tmp / "big"), "--tokenizer",
                                          str(tokenizer_file), "--workers", str(args.workers)])
            print(f"4. {size:,.0f} MB JSONL ({copies} copies of the corpus), tokenizer given, {args.workers} workers: "
                  f"{seconds:.1f}s = {size / seconds:.2f} MB/s; peak RSS of all processes {peak / 2**20:,.0f} MB")


if __name__ == "__main__":
    main()
