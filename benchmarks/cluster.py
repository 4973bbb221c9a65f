"""Cluster mode (issue 13): a >= 5 GB archive of rotated captures on local:1,
local:2 and the single-process engine, with a per-worker cost model.

    python3 benchmarks/cluster.py                      # build the archive if missing, run all three
    python3 benchmarks/cluster.py --gigabytes 1 --runs local:2   # a quicker look
    python3 benchmarks/cluster.py --json

The archive (benchmarks/data/cluster_archive/, gitignored) is rotated with
`editcap -c` from the `web` and `api` captures that benchmarks/bench.py
builds (benchmarks/data/web_1000000.pcap, api_2000000.pcap; `--sources DIR`
to take them from elsewhere), copied with `editcap -t` shifted by a day per
copy until the archive holds `--gigabytes` (default 5.2) -- one file per
100,000 (web) or 200,000 (api) packets, as a ring buffer would rotate.

Each cluster run starts a distributed.LocalCluster of N worker processes
(one thread each, --memory-limit each, ports from --ports) in this process, runs
analyzer.api.run_analysis(..., cluster=client) and records Dask's task
stream: the worker-seconds spent decoding (decode_piece), shuffling (the
P2P shuffle's transfer and unpack tasks) and dissecting (dissect_partition),
per GB of archive; the driver's time before the first task and after the
last (merge and reports); and each worker's peak RSS (sampled twice a
second).  The single-process run is `python -m analyzer analyze ARCHIVE
-j 1 -q` in a subprocess.  The three events.csv are compared (sorted, by
sha256) and the per-code counts printed.

Cost model: T(S GB, N workers) = startup + S * (decode + shuffle + dissect) / N
+ S * driver, with the per-GB figures measured on local:2 (the one with a
real shuffle between processes); it assumes the workers' disks and network
keep up as loopback did here, which a real cluster must check.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
ARCHIVE = DATA / "cluster_archive"
SOURCES = (("web_1000000.pcap", 100_000), ("api_2000000.pcap", 200_000))
DAY = 86_400


def sources_dir(given: str | None) -> Path:
    for folder in ([Path(given)] if given else [DATA, Path("/work/main/benchmarks/data")]):
        if all((folder / name).exists() for name, _ in SOURCES):
            return folder
    sys.exit("benchmarks/cluster.py: the web and api captures are missing: build them first with "
             "sudo python3 benchmarks/bench.py --profile web && sudo python3 benchmarks/bench.py --profile api "
             "(or give --sources DIR)")


def build(archive: Path, sources: Path, gigabytes: float) -> list[str]:
    marker = archive / "BUILT.json"
    if marker.exists():
        built = json.loads(marker.read_text())
        if built["gigabytes"] >= gigabytes:
            return sorted(str(p) for p in archive.glob("*.pcap"))
        shutil.rmtree(archive)
    if shutil.which("editcap") is None:
        sys.exit("benchmarks/cluster.py: editcap (Wireshark) is needed to rotate the captures")
    archive.mkdir(parents=True, exist_ok=True)
    per_copy = sum((sources / name).stat().st_size for name, _ in SOURCES)
    copies = math.ceil(gigabytes * 1e9 / per_copy)
    for copy in range(copies):
        for name, packets in SOURCES:
            stem = f"c{copy}_{Path(name).stem}"
            print(f"building {stem} (editcap -t {copy * DAY} -c {packets})", file=sys.stderr, flush=True)
            subprocess.run(["editcap", "-F", "pcap", "-t", str(copy * DAY), "-c", str(packets), str(sources / name),
                            str(archive / f"{stem}.pcap")], check=True)
    files = sorted(str(p) for p in archive.glob("*.pcap"))
    total = sum(os.path.getsize(f) for f in files)
    marker.write_text(json.dumps({"gigabytes": total / 1e9, "files": len(files), "copies": copies}))
    return files


def events_digest(outdir: Path) -> tuple[str, Counter, int]:
    """sha256 of events.csv's rows sorted (C locale, by sort(1): the file may be large)."""
    path = outdir / "events.csv"
    sort = subprocess.Popen(["sort", "-S", "512M"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=dict(os.environ, LC_ALL="C"))
    with open(path, "rb") as handle:
        header = handle.readline()
        threading.Thread(target=lambda: (shutil.copyfileobj(handle, sort.stdin), sort.stdin.close()),
                         daemon=True).start()
        digest = hashlib.sha256(header)
        for chunk in iter(lambda: sort.stdout.read(1 << 20), b""):
            digest.update(chunk)
    sort.wait()
    summary = json.loads((outdir / "summary.json").read_text())
    codes = Counter()
    for proto, block in summary.get("protocols", {}).items():
        for code, n in (block.get("codes") or {}).items():
            codes[f"{proto}:{code}"] += n
    return digest.hexdigest(), codes, summary.get("events", 0)


def single(files: list[str], outdir: Path) -> dict:
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "analyzer", "analyze", *files, "-j", "1", "-q", "-o", str(outdir)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads((outdir / "summary.json").read_text())
    return {"run": "single (-j 1)", "status": proc.returncode, "wall": wall,
            "packets": summary["coverage"]["packets_read"], "peak_rss_mb": [round(max(rss, before) / 1024)]}


class RssSampler(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        import psutil

        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = {pid: 0 for pid in pids}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            for pid, proc in self.procs.items():
                try:
                    self.peak[pid] = max(self.peak[pid], proc.memory_info().rss)
                except Exception:  # noqa: BLE001 - a worker restarting
                    pass


def classify(key) -> str:
    text = str(key)
    if "decode_piece" in text:
        return "decode"
    if "dissect_partition" in text:
        return "dissect"
    if "shuffle" in text or "p2p" in text:
        return "shuffle"
    return "other"


def clustered(files: list[str], outdir: Path, workers: int, ports: tuple[int, int], memory_limit: str) -> dict:
    import distributed

    from analyzer.api import run_analysis

    low, high = ports
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       scheduler_port=low, dashboard_address=f"127.0.0.1:{low + 1}",
                                       worker_dashboard_address=None, worker_port=f"{low + 2}:{high}",
                                       port=f"{low + 2}:{high}", silence_logs=logging.ERROR,
                                       memory_limit=memory_limit)
    client = distributed.Client(cluster)
    try:
        pids = list(client.run(os.getpid).values())
        sampler = RssSampler(pids)
        sampler.start()
        started = time.time()
        with distributed.get_task_stream(client) as stream:
            result, _ = run_analysis(files, outdir, lang="en", cluster=client,
                                     notify=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
        ended = time.time()
        sampler.stopping.set()
        sampler.join()
        spent, first, last = Counter(), ended, started
        for task in stream.data:
            for ss in task.get("startstops", ()):
                if ss["action"] == "compute":
                    spent[classify(task["key"])] += ss["stop"] - ss["start"]
                    first, last = min(first, ss["start"]), max(last, ss["stop"])
        return {"run": f"local:{workers}", "status": 0, "wall": ended - started, "packets": result.packets,
                "peak_rss_mb": [round(v / 2**20) for v in sampler.peak.values()],
                "worker_seconds": {k: round(v, 2) for k, v in spent.items()},
                "startup": first - started, "driver_tail": ended - last}
    finally:
        client.close()
        cluster.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gigabytes", type=float, default=5.2, help="archive size to build (default 5.2)")
    parser.add_argument("--sources", help="folder holding web_1000000.pcap and api_2000000.pcap")
    parser.add_argument("--runs", default="single,local:1,local:2", help="what to run, comma-separated")
    parser.add_argument("--ports", default="43600-43699", help="ports of the local clusters (LOW-HIGH)")
    parser.add_argument("--memory-limit", default="2GiB",
                        help="each worker's Dask memory limit (spilling starts at 60%%; default 2GiB)")
    parser.add_argument("--files", type=int, default=0, help="only the first N files of the archive (a quick look)")
    parser.add_argument("--keep", action="store_true", help="keep the output folders (under benchmarks/data)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    files = build(ARCHIVE, sources_dir(args.sources), args.gigabytes)
    if args.files:
        files = files[:args.files]
    size = sum(os.path.getsize(f) for f in files)
    gb = size / 1e9
    low, high = (int(p) for p in args.ports.split("-"))
    work = Path(tempfile.mkdtemp(prefix="cluster-bench-", dir=DATA))
    rows = []
    try:
        for run in args.runs.split(","):
            out = work / run.replace(":", "-")
            print(f"running {run} over {len(files)} files, {gb:.2f} GB", file=sys.stderr, flush=True)
            if run == "single":
                row = single(files, out)
            else:
                row = clustered(files, out, int(run.split(":")[1]), (low, high), args.memory_limit)
            row["events_sha256"], codes, row["events"] = events_digest(out)
            row["codes"] = dict(sorted(codes.items()))
            row["packets_per_s"] = row["packets"] / row["wall"]
            rows.append(row)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = next((r for r in rows if r["run"].startswith("single")), rows[0])
    for row in rows:
        row["speedup_vs_single"] = base["wall"] / row["wall"]
        row["same_events_as_single"] = row["events_sha256"] == base["events_sha256"]
    model = None
    reference = next((r for r in rows if r["run"] == "local:2"), next((r for r in rows if "worker_seconds" in r), None))
    if reference is not None:
        per_gb = {k: reference["worker_seconds"].get(k, 0.0) / gb for k in ("decode", "shuffle", "dissect", "other")}
        driver = reference["driver_tail"] / gb
        model = {"seconds_per_gb_per_worker": {k: round(v, 2) for k, v in per_gb.items()},
                 "driver_seconds_per_gb": round(driver, 2), "startup_seconds": round(reference["startup"], 1),
                 "100_gb_minutes": {n: round((reference["startup"] + 100 * sum(per_gb.values()) / n + 100 * driver) / 60, 1)
                                    for n in (1, 2, 4, 8, 16, 32)}}
    report = {"archive": {"files": len(files), "bytes": size, "packets": base["packets"]}, "runs": rows, "model": model,
              "cpus": os.cpu_count(), "load": os.getloadavg()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"archive: {len(files)} files, {gb:.2f} GB, {base['packets']:,} packets; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'run':<14}{'wall s':>9}{'packets/s':>12}{'speed-up':>10}{'peak RSS MB (per worker)':>28}  same events")
    for r in rows:
        print(f"{r['run']:<14}{r['wall']:>9.1f}{r['packets_per_s']:>12,.0f}{r['speedup_vs_single']:>10.2f}"
              f"{', '.join(map(str, r['peak_rss_mb'])):>28}  {r['same_events_as_single']}")
    for r in rows:
        if "worker_seconds" in r:
            print(f"{r['run']}: worker-seconds {r['worker_seconds']}, startup {r['startup']:.1f} s, "
                  f"driver after the last task {r['driver_tail']:.1f} s")
    if model:
        print("cost model (from local:2): per GB and worker", model["seconds_per_gb_per_worker"],
              f"driver {model['driver_seconds_per_gb']} s/GB, startup {model['startup_seconds']} s")
        print("100 GB would take (minutes, by workers):", model["100_gb_minutes"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
