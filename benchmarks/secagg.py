"""Secure-aggregation benchmark: masking, unmasking, traffic, and the cost against raw AES-CTR.

For each number of hospitals K, all measured in one run (ratios are what to compare; the
machine is shared and noisy, so every timing is the best of --repeats):

- client_mask_s: one hospital's mask_encoded (K mask expansions, signing), as on its own machine;
- coordinator_unmask_s: the coordinator's close_masking + consistency check + unmask answers + finish, with 0 and 1
  dropouts (a dropout before masking makes it re-expand that hospital's K-1 pairwise masks);
- bytes per hospital, uploaded and downloaded, by message;
- raw_aes_ctr_s: AES-256-CTR alone for the bytes a round expands, (K^2 + K) masks of 4d bytes
  (K per hospital, K self masks at the coordinator), into one reused buffer, on one thread;
- raw_aes_ctr_all_cores_s: the same split over every core (as the protocol now expands masks), and
  round_ratio_all_cores = round_s / that: what is left besides the cipher when both use every core;
- round_s: a whole in-memory round (every message through its wire bytes) on encoded inputs,
  each pairwise mask expanded once for both hospitals of the pair; round_ratio = round_s / raw;
- round_separate_s: the same with each hospital expanding its own masks (as on K machines);
- round_float_s: the same as round_s from float inputs (adds fixed-point encoding);
- vector_hashing_s: 2K digests (vector_digest) of one masked vector, the signature cost inside round_s.

Usage: python benchmarks/secagg.py [--out benchmarks/results/secagg.json] [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from core.secagg import (  # noqa: E402
    RoundParams,
    SecAggClient,
    SecAggServer,
    cores,
    encode,
    fixed_point_for_bound,
    parse_message,
    run_round,
)
from core.secagg.crypto import ed25519_public_bytes  # noqa: E402
from core.secagg.messages import vector_digest  # noqa: E402
from core.secagg.prg import keystream  # noqa: E402
from core.secagg.simulate import hospital_ids  # noqa: E402

SQUEEZENET_PARAMETERS = 725_061
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "secagg.json"


def _time(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _best(function, repeats: int) -> float:
    return min(_time(function) for _ in range(repeats))


def raw_aes_ctr(masks: int, length: int) -> float:
    """AES-256-CTR alone, one thread: ``masks`` whole keystreams of 4 * length bytes into one reused buffer."""
    zeros = np.zeros(4 * length, np.uint8)
    buffer = np.empty(4 * length + 16, np.uint8)
    seeds = [os.urandom(32) for _ in range(masks)]
    start = time.perf_counter()
    for seed in seeds:
        keystream(seed).update_into(zeros.data, buffer.data)
    return time.perf_counter() - start


def raw_aes_ctr_all_cores(masks: int, length: int) -> float:
    """raw_aes_ctr with the masks shared out over every core, one buffer per core."""
    buffers = {}
    seeds = [os.urandom(32) for _ in range(masks)]

    def expand(first: int, end: int) -> None:
        zeros, buffer = np.zeros(4 * length, np.uint8), np.empty(4 * length + 16, np.uint8)
        buffers[first] = buffer
        for seed in seeds[first:end]:
            keystream(seed).update_into(zeros.data, buffer.data)

    start = time.perf_counter()
    cores.split(expand, masks)
    return time.perf_counter() - start


def manual_round(params: RoundParams, inputs: list[np.ndarray], drop: set[int]) -> dict:
    """One round through the state machines, timing each party's work and counting bytes."""
    ids = hospital_ids(len(inputs))
    keys = [Ed25519PrivateKey.generate() for _ in ids]
    peers = {h: ed25519_public_bytes(k) for h, k in zip(ids, keys, strict=True)}
    server = SecAggServer(params, peers)
    clients = [SecAggClient(params, h, k, peers) for h, k in zip(ids, keys, strict=True)]
    up: dict[str, int] = {}
    down: dict[str, int] = {}

    def send(message, counter):
        data = message.to_bytes()
        counter[message.TYPE] = counter.get(message.TYPE, 0) + len(data)
        return parse_message(data)

    for client in clients:
        server.receive_advertise(send(client.advertise(), up))
    roster = server.close_advertise()
    for client in clients:
        server.receive_shares(send(client.share_keys(send(roster, down)), up))
    bundles = server.close_sharing()
    mask_times = []
    coordinator = 0.0
    for index, client in enumerate(clients):
        if index in drop:
            continue
        bundle = send(bundles[client.hospital_id], down)
        start = time.perf_counter()
        masked = client.mask_encoded(bundle, inputs[index])
        mask_times.append(time.perf_counter() - start)
        masked = send(masked, up)
        start = time.perf_counter()
        server.receive_masked_input(masked)
        coordinator += time.perf_counter() - start
    start = time.perf_counter()
    survivor_set = server.close_masking()
    unmask = time.perf_counter() - start
    signatures = [
        send(client.sign_survivors(send(survivor_set, down)), up) for i, client in enumerate(clients) if i not in drop
    ]
    start = time.perf_counter()
    for signature in signatures:
        server.receive_survivor_signature(signature)
    request = server.close_consistency()
    unmask += time.perf_counter() - start
    answers = [
        send(client.unmask(send(request, down)), up) for i, client in enumerate(clients) if i not in drop
    ]
    start = time.perf_counter()
    for answer in answers:
        server.receive_unmask(answer)
    server.finish()
    unmask += time.perf_counter() - start
    per = len(inputs)
    return {
        "client_mask_s": float(np.mean(mask_times)),
        "client_mask_max_s": float(np.max(mask_times)),
        "coordinator_receive_s": coordinator,
        "coordinator_unmask_s": unmask,
        "upload": {kind: size // per for kind, size in up.items()},
        "download": {kind: size // per for kind, size in down.items()},
    }


def bench_hospitals(k: int, length: int, repeats: int) -> dict:
    encoding = fixed_point_for_bound(1.0, k)
    params = RoundParams(f"bench:k{k}", k // 2 + 1, length, encoding)
    rng = np.random.default_rng(k)
    rings = [rng.integers(0, 2**32, length, dtype=np.uint32) for _ in range(k)]
    floats = [rng.uniform(-1, 1, length) for _ in range(k)]
    masks = k * k + k

    raw, raw_all, round_s, separate_s, float_s = (float("inf"),) * 5
    runs = {0: [], 1: []}
    for _ in range(repeats):  # interleaved, so load changes hit every measurement alike
        raw = min(raw, raw_aes_ctr(masks, length))
        raw_all = min(raw_all, raw_aes_ctr_all_cores(masks, length))
        round_s = min(round_s, _time(lambda: run_round(params, rings, encoded=True)))
        separate_s = min(
            separate_s, _time(lambda: run_round(params, rings, encoded=True, pairwise_once=False))
        )
        float_s = min(float_s, _time(lambda: run_round(params, floats)))
        for drops in (0, 1):
            runs[drops].append(manual_round(params, rings, set(range(drops))))

    def best(drops: int, key: str) -> float:
        return min(run[key] for run in runs[drops])

    vector = rings[0]
    digest = _best(lambda: vector_digest(vector), max(3, repeats))
    encode_s = _best(lambda: encode(floats[0], encoding), max(3, repeats))
    upload, download = runs[0][0]["upload"], runs[0][0]["download"]
    return {
        "hospitals": k,
        "threshold": params.threshold,
        "client_mask_s": best(0, "client_mask_s"),
        "client_mask_max_s": best(0, "client_mask_max_s"),
        "coordinator_receive_s": best(0, "coordinator_receive_s"),
        "coordinator_unmask_s": {"0": best(0, "coordinator_unmask_s"), "1": best(1, "coordinator_unmask_s")},
        "bytes_per_hospital": {
            "upload": sum(upload.values()),
            "download": sum(download.values()),
            "upload_by_message": upload,
            "download_by_message": download,
        },
        "prg_masks": masks,
        "prg_bytes": masks * 4 * length,
        "raw_aes_ctr_s": raw,
        "round_s": round_s,
        "round_ratio": round_s / raw,
        "raw_aes_ctr_all_cores_s": raw_all,
        "round_ratio_all_cores": round_s / raw_all,
        "round_separate_s": separate_s,
        "round_separate_ratio": separate_s / raw,
        "round_float_s": float_s,
        "round_float_ratio": float_s / raw,
        "vector_digest_s": digest,
        # Each masked vector is hashed twice per round (signed by its hospital, checked by the
        # coordinator): the part of round_s that is neither mask expansion nor key handling.
        "vector_hashing_s": 2 * k * digest,
        "encode_s": encode_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="small smoke run (short vectors, K = 3 and 5)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    length = 20_000 if args.quick else SQUEEZENET_PARAMETERS
    hospitals = (3, 5) if args.quick else (3, 10, 30)
    repeats = args.repeats or (1 if args.quick else 3)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    run_round(RoundParams("bench:warmup", 2, length, fixed_point_for_bound(1.0, 3)), [np.zeros(length)] * 3)
    results = []
    for k in hospitals:
        results.append(bench_hospitals(k, length, repeats))
        r = results[-1]
        print(
            f"K={k:3d}  client mask {r['client_mask_s'] * 1e3:7.1f} ms  coordinator unmask "
            f"{r['coordinator_unmask_s']['0'] * 1e3:7.1f} / {r['coordinator_unmask_s']['1'] * 1e3:7.1f} ms  "
            f"raw AES {r['raw_aes_ctr_s'] * 1e3:7.1f} ms  round {r['round_s'] * 1e3:7.1f} ms "
            f"({r['round_ratio']:.2f}x; {r['round_ratio_all_cores']:.2f}x all-core AES)  separate "
            f"{r['round_separate_ratio']:.2f}x  floats {r['round_float_ratio']:.2f}x",
            flush=True,
        )
    report = {
        "benchmark": "secagg",
        "vector_length": length,
        "bits": 32,
        "quick": args.quick,
        "repeats": repeats,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "cores_used": cores.available(),
            # The 1-minute load average before and after: other work on the machine skews every timing.
            "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
