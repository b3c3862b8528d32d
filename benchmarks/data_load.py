"""Loading a large hospital collection: decode throughput, the warm cache, and memory while training.

Issue 14's goal: a hospital with 35,000 images at 224 px trains with a resident set of at most 2 GB
(the whole uint8 tensor alone is 5.3 GB), and the first decode pass uses both cores.

The collection is generated, then each measurement runs in a fresh child process (so a peak resident set,
VmHWM from /proc/self/status, is that phase's own, and the warm start finds nothing in memory but the
operating system's page cache):

- decode_1 / decode_pool: the first decode (hash, decode, resize; core.data.cache.load_tensors with no
  cache folder) of the same subset of ``--decode-images`` files, in one process and in the pool of
  core.data.decode.decode_workers() processes; images/s, their ratio, and cores_used (CPU seconds of the
  process and its workers over wall seconds: what a shared machine cannot fake). Run ``--repeats`` times,
  interleaved; the median run is reported.
- validate_1 / validate_pool: core.data.validation.validate on the same subset (it decodes every file once
  too), in one process and in the pool.
- build: the first core.data.cache.load_images of the whole collection into a fresh image cache (pool
  decode, per-image entries and the collection's stack file): seconds, images/s, this process's peak RSS
  and the largest decode worker's.
- warm: load_images again (hash every file, open the stack, decode nothing): seconds.
- epoch: a warm load_images, then every batch of one epoch through the training loop's data path (the
  DataLoader over the store, shuffled batches of ``--batch``, the flip and normalize train_local applies),
  without the model, then ``--dp-steps`` real DP-SGD steps of ``--model`` through core.training.loop.train_local
  (Poisson sampling over a subset of dp_steps * batch images of the store, so one epoch is that many steps):
  peak RSS of the whole. Every image of the collection is read once; one epoch of real DP training over
  35,000 images at 224 px would take hours on 2 cores, and reads the data the same way.
- in_memory: the old way for comparison: load_tensors from the warm cache (the whole tensor): peak RSS.

Generated collection: ``--distinct`` synthetic fundus photographs (core.data.synthetic, ``--source-px`` px,
PNG) written as five grade folders; the other files are copies of them with one PNG tEXt chunk naming the
copy added, so every file's bytes, and so its content hash and cache key, differ (nothing is deduplicated
by the cache or reported as a duplicate by validation) while its pixels and its decode cost are those of its
base image. Re-encoding a changed pixel per copy would cost 20 ms a file (12 minutes for 35,000).

    python benchmarks/data_load.py [--quick] [--images 35000] [--size 224] [--keep DIR]
                                   [--out benchmarks/results/data_load.json]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "data_load.json"
GRADES = 5
RSS_TARGET_MB = 2048


# -- the generated collection -----------------------------------------------------------------------

def _text_chunk(keyword: str, text: str) -> bytes:
    body = keyword.encode("latin-1") + b"\0" + text.encode("latin-1")
    return struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))


def _with_copy_number(png: bytes, copy: int) -> bytes:
    """The same image with a tEXt chunk after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + _text_chunk("Copy", str(copy)) + png[33:]


def generate(folder: Path, *, images: int, distinct: int, source_px: int) -> dict:
    import numpy as np

    from core.data.synthetic import generate_fundus, hospital_style

    marker = folder / "complete.json"
    wanted = {"images": images, "distinct": distinct, "source_px": source_px}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return {"seconds": 0.0, "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    bases = []
    for index in range(distinct):
        grade = index % GRADES
        image = generate_fundus(grade, size=source_px, rng=np.random.default_rng(index),
                                style=hospital_style(index % 3, 0))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=3)
        bases.append((grade, buffer.getvalue()))
    for grade in range(GRADES):
        (folder / str(grade)).mkdir(parents=True, exist_ok=True)
    for number in range(images):
        grade, png = bases[number % distinct]
        data = png if number < distinct else _with_copy_number(png, number)
        (folder / str(grade) / f"img_{number:05d}.png").write_bytes(data)
    marker.write_text(json.dumps(wanted))
    return {"seconds": round(time.perf_counter() - started, 2), "reused": False}


def _samples(folder: Path, limit: int | None = None):
    from core.data.dataset import Sample

    files = sorted(folder.glob("*/*.png"))
    if limit is not None:
        # every grade, spread over the collection
        step = max(1, len(files) // limit)
        files = files[::step][:limit]
    return [Sample(path, int(path.parent.name)) for path in files]


# -- the phases, each in a child process ------------------------------------------------------------

def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KB on Linux


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the decode workers, once the pool is shut)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _decode_worker_rss(samples, spec) -> float:
    """A decode worker's own peak RSS after decoding a chunk (asked of the worker itself: a spawned child's
    ru_maxrss counts the parent's pages it held between fork and exec)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from core.data.decode import ChunkOutput, DecodeTask, decode_chunk

    tasks = [DecodeTask(str(s.path), hashlib.sha256(s.path.read_bytes()).hexdigest(), (0,), (i,), ("-",))
             for i, s in enumerate(samples)]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(decode_chunk, spec, tasks, ChunkOutput()).result()
        return pool.submit(_peak_rss_mb).result()


def phase(name: str, args: argparse.Namespace) -> dict:
    from core.data.preprocess import Preprocessing

    spec = Preprocessing(size=args.size)
    data, cache = Path(args.data), Path(args.cache)
    if name in ("decode_1", "decode_pool"):
        from core.data.cache import load_tensors
        from core.data.decode import decode_workers

        samples = _samples(data, args.decode_images)
        workers = 1 if name == "decode_1" else decode_workers()
        cpu = _cpu_s()
        started = time.perf_counter()
        images, _ = load_tensors(samples, spec, workers=workers)
        seconds = time.perf_counter() - started
        cpu = _cpu_s() - cpu
        assert images.shape[0] == len(samples)
        return {"images": len(samples), "workers": workers, "seconds": round(seconds, 3),
                "images_per_s": round(len(samples) / seconds, 1), "cpu_s": round(cpu, 2),
                "cores_used": round(cpu / seconds, 2)}
    if name in ("validate_1", "validate_pool"):
        from core.data.decode import decode_workers
        from core.data.validation import validate

        samples = _samples(data, args.decode_images)
        subset = Path(tempfile.mkdtemp(prefix="validate-", dir=cache.parent))
        for sample in samples:  # links: validate reads a folder
            target = subset / sample.path.parent.name / sample.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(sample.path, target)
            except OSError:  # another file system
                shutil.copyfile(sample.path, target)
        try:
            workers = 1 if name == "validate_1" else decode_workers()
            cpu = _cpu_s()
            started = time.perf_counter()
            report = validate(subset, min_size=args.size, workers=workers)
            seconds = time.perf_counter() - started
            cpu = _cpu_s() - cpu
        finally:
            shutil.rmtree(subset, ignore_errors=True)
        return {"images": len(report.usable_samples), "workers": workers, "seconds": round(seconds, 3),
                "images_per_s": round(len(samples) / seconds, 1), "cpu_s": round(cpu, 2),
                "cores_used": round(cpu / seconds, 2)}
    if name in ("build", "warm"):
        from core.data.cache import load_images

        samples = _samples(data)
        started = time.perf_counter()
        store, _ = load_images(samples, spec, cache_dir=cache, on_disk=True)
        seconds = time.perf_counter() - started
        result = {"images": len(store), "on_disk": store.on_disk, "decoded": store.decoded,
                  "seconds": round(seconds, 2), "peak_rss_mb": _peak_rss_mb()}
        if name == "build":
            result["images_per_s"] = round(store.decoded / seconds, 1)
            result["decode_worker_peak_rss_mb"] = _decode_worker_rss(samples[:64], spec)
            from core.home import image_cache_usage

            entries, size = image_cache_usage(cache)
            result["cache_entries"], result["cache_gb"] = entries, round(size / 1e9, 2)
        return result
    if name == "epoch":
        return _epoch(args, spec, data, cache)
    if name == "in_memory":
        from core.data.cache import load_tensors

        samples = _samples(data)
        started = time.perf_counter()
        images, _ = load_tensors(samples, spec, cache_dir=cache)
        return {"images": int(images.shape[0]), "gb": round(images.numel() / 1e9, 2),
                "seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": _peak_rss_mb()}
    raise SystemExit(f"unknown phase {name}")


def _epoch(args: argparse.Namespace, spec, data: Path, cache: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from core.data.cache import load_images
    from core.data.preprocess import normalize
    from core.models import build_model
    from core.training.loop import DPSettings, _augment, train_local

    torch.set_num_threads(args.threads)
    samples = _samples(data)
    started = time.perf_counter()
    store, labels = load_images(samples, spec, cache_dir=cache, on_disk=True)
    loaded = time.perf_counter()
    after_load = _peak_rss_mb()
    loader = DataLoader(store.dataset(labels), batch_size=args.batch, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    flips = torch.Generator().manual_seed(1)
    seen = 0
    for batch, _ in loader:
        x = normalize(_augment(batch, flips), spec)
        seen += int(x.shape[0])
    passed = time.perf_counter()
    after_pass = _peak_rss_mb()
    subset = store.subset(torch.arange(min(len(store), args.dp_steps * args.batch)))
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=GRADES)
    stats = train_local(model, subset, labels[: len(subset)], spec, epochs=1, batch_size=args.batch, lr=0.05,
                        dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0))
    done = time.perf_counter()
    return {"images": len(store), "on_disk": store.on_disk, "decoded": store.decoded,
            "load_s": round(loaded - started, 2), "images_read_in_epoch": seen,
            "epoch_data_path_s": round(passed - loaded, 2), "dp_steps": stats.steps, "model": args.model,
            "dp_steps_s": round(done - passed, 2), "peak_rss_mb_after_load": after_load,
            "peak_rss_mb_after_epoch": after_pass, "peak_rss_mb": _peak_rss_mb()}


THROUGHPUT_PHASES = ("decode_1", "decode_pool", "validate_1", "validate_pool")


def _throughput(args: argparse.Namespace, data: Path, cache: Path) -> dict:
    """The one-process and pool phases, ``--repeats`` times interleaved in a rotating order (a shared machine
    then disturbs them alike); each phase is reported by its median run, with every run's images/s."""
    runs: dict[str, list[dict]] = {name: [] for name in THROUGHPUT_PHASES}
    for repeat in range(args.repeats):
        order = THROUGHPUT_PHASES[repeat % 4:] + THROUGHPUT_PHASES[:repeat % 4]
        for name in order:
            runs[name].append(_run_phase(name, args, data, cache))
    phases = {}
    for name, results in runs.items():
        ranked = sorted(results, key=lambda r: r["images_per_s"])
        phases[name] = {**ranked[len(ranked) // 2], "images_per_s_runs": [r["images_per_s"] for r in results],
                        "cores_used_runs": [r["cores_used"] for r in results]}
    return phases


def _paired(one: dict, pool: dict) -> float:
    """Median over repetitions of pool images/s over one-process images/s in the same repetition."""
    ratios = sorted(p / o for o, p in zip(one["images_per_s_runs"], pool["images_per_s_runs"], strict=True))
    return round(ratios[len(ratios) // 2], 2)


def _run_phase(name: str, args: argparse.Namespace, data: Path, cache: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--data", str(data), "--cache",
               str(cache), "--size", str(args.size), "--decode-images", str(args.decode_images), "--batch",
               str(args.batch), "--dp-steps", str(args.dp_steps), "--model", args.model, "--threads",
               str(args.threads)]
    print(f"[data_load] {name} ...", file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"[data_load] {name}: {report}", file=sys.stderr, flush=True)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 images at 64 px, small_cnn")
    parser.add_argument("--images", type=int, default=None, help="collection size (default 35000; 300 quick)")
    parser.add_argument("--size", type=int, default=None, help="model input px (default 224; 64 quick)")
    parser.add_argument("--source-px", type=int, default=None, help="generated image px (default 256; 80 quick)")
    parser.add_argument("--distinct", type=int, default=None, help="distinct generated images (default 300)")
    parser.add_argument("--decode-images", type=int, default=None,
                        help="subset for the 1-process vs pool decode and validation (default 3000; 200 quick)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved runs of each one-process / pool phase (default 3; 1 quick)")
    parser.add_argument("--dp-steps", type=int, default=None, help="real DP-SGD steps (default 8; 2 quick)")
    parser.add_argument("--model", default=None, help="default squeezenet1_1 (small_cnn quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the DP steps")
    parser.add_argument("--keep", type=Path, default=None,
                        help="generate the collection here and keep it (reused when it matches); default: a temp folder")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"images": 300 if quick else 35000, "size": 64 if quick else 224,
                "source_px": 80 if quick else 256, "distinct": 40 if quick else 300,
                "decode_images": 200 if quick else 3000, "dp_steps": 2 if quick else 8,
                "model": "small_cnn" if quick else "squeezenet1_1", "repeats": 1 if quick else 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase is not None:
        print(json.dumps(phase(args.phase, args)))
        return 0
    from core.data.decode import decode_workers

    work = Path(tempfile.mkdtemp(prefix="dopamine-data-load-"))
    data = args.keep if args.keep is not None else work / "data"
    cache = work / "cache"
    began = time.perf_counter()
    try:
        generated = generate(data, images=args.images, distinct=args.distinct, source_px=args.source_px)
        phases = _throughput(args, data, cache)
        phases.update({name: _run_phase(name, args, data, cache) for name in ("build", "warm", "epoch", "in_memory")})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, pool = phases["decode_1"], phases["decode_pool"]
    epoch = phases["epoch"]
    report = {
        "benchmark": "data_load",
        "quick": args.quick,
        "settings": {"images": args.images, "image_size": args.size, "source_px": args.source_px,
                     "distinct_images": args.distinct, "decode_subset": args.decode_images,
                     "batch_size": args.batch, "dp_steps": args.dp_steps, "model": args.model,
                     "repeats": args.repeats,
                     "format": "PNG (compress_level 3), copies differ by one tEXt chunk"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "decode_workers": decode_workers(),
                    "load_average": [round(v, 2) for v in os.getloadavg()]},
        "generate": generated,
        "phases": phases,
        "decode_pool_speedup": round(pool["images_per_s"] / one["images_per_s"], 2),
        "decode_pool_speedup_paired": _paired(one, pool),
        "validate_pool_speedup": round(phases["validate_pool"]["images_per_s"]
                                       / phases["validate_1"]["images_per_s"], 2),
        "validate_pool_speedup_paired": _paired(phases["validate_1"], phases["validate_pool"]),
        "warm_vs_build": round(phases["warm"]["seconds"] / phases["build"]["seconds"], 3),
        "epoch_rss_vs_in_memory": round(epoch["peak_rss_mb"] / phases["in_memory"]["peak_rss_mb"], 3),
        "targets": {"training_peak_rss_mb": RSS_TARGET_MB,
                    "training_peak_rss_ok": epoch["peak_rss_mb"] <= RSS_TARGET_MB,
                    "decode_uses_more_than_one_core": pool["workers"] > 1 and pool["cores_used"] > 1.3},
        "total_s": round(time.perf_counter() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("decode_pool_speedup", "warm_vs_build", "targets")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
