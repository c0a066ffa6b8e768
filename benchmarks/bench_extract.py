"""Extraction throughput against a bare forward+backward loop of the same model, batch size and data.

For each model, in the same process and on the same in-memory images (two splits with per-layer
recording, so every batch gets a backward pass), alternately ``--repeats`` times:

* bare loop: iterate the same split source, move each batch to the device, forward, then the
  same single ``torch.autograd.grad`` of the uniform-target loss with respect to the recorded
  layers' outputs (held by hooks that only keep a reference), results discarded: the same
  network work as extraction (no weight gradients) without pooling, copies, checks or writes;
* extract: the real ``oodcache.extract.run.extract`` call with its default settings (shards,
  hooks, pooling, finiteness checks, HDF5 writes, merge into the final cache; ODIN is off by
  default and the script checks that the cache holds none), timed end to end (model build and
  weights loading included) and as recorded in the cache (``images_per_second``: the extraction
  loop);
* with ``--odin``, also extract with ``--odin`` (OpenOOD's grid of 4 temperatures × 2 steps,
  stored as scores), for comparison.

The best time of each is kept; overhead = bare images/s ÷ extract images/s − 1 (target ≤ 30 %,
i.e. default extraction at most 1.3x the bare loop); the ODIN column is bare ÷ (extract --odin).
Models: the digits ResNet (1×32×32) and a torchvision ResNet-18 (3×64×64 by default), both with
random weights. Writes only to a temporary folder.

CPU (shared cores: prefer one thread)::

    .venv/bin/python benchmarks/bench_extract.py --cores 1 --threads 1 [--odin]

GPU::

    .venv/bin/python benchmarks/bench_extract.py --device cuda --batch-size 256 --batches 40 \\
        --input-size 224 [--autocast bf16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def pin(cores: int) -> list[int]:
    """Run on ``cores`` CPUs (set before numpy/torch load)."""
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    os.sched_setaffinity(0, cpus)
    return cpus


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", type=int, default=2, help="CPU cores to run on (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--autocast", default="off", choices=("off", "bf16", "fp16"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=12, help="batches per split (two splits)")
    p.add_argument("--input-size", type=int, default=64, help="ResNet-18/50 input side")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--models",
        nargs="+",
        default=["digits", "resnet18"],
        help="digits, resnet18 and/or resnet50 (the GPU check: resnet50 at --input-size 224)",
    )
    p.add_argument(
        "--odin",
        action="store_true",
        help="also time extract --odin (OpenOOD grid) for comparison",
    )
    args = p.parse_args()
    cpus = pin(args.cores)
    threads = args.threads or len(cpus)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    print("bench_extract: extraction vs a bare forward+backward loop (same model, batch, data)")
    print(
        f"  device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
    )  # noqa: E501
    print(f"  cores {cpus} of {os.cpu_count()}, torch threads {torch.get_num_threads()}")
    print(f"  torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    print(
        f"  batch {args.batch_size}, {2 * args.batches} batches, autocast {args.autocast}, "
        f"best of {args.repeats}"
    )
    head = f"{'model':<22}{'bare img/s':>12}{'extract img/s':>15}{'overhead':>10}{'<=30%':>7}"
    head += f"{'loop img/s':>12}"
    if args.odin:
        head += f"{'+odin img/s':>13}{'odin cost':>11}"
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = run_model(name, args, Path(tmp), np, torch)
            overhead = r["bare"] / r["extract"] - 1
            line = (
                f"{r['label']:<22}{r['bare']:>12.1f}{r['extract']:>15.1f}"
                f"{100 * overhead:>9.1f}%{'PASS' if overhead <= 0.3 else 'FAIL':>7}"
                f"{r['recorded']:>12.1f}"
            )
            if args.odin:
                line += f"{r['odin']:>13.1f}{r['bare'] / r['odin']:>10.1f}x"
            print(line)
    print("extract: default settings (no ODIN recorded, checked in the cache);")
    print("overhead: bare img/s / extract img/s - 1 (extract timed end to end, model load incl.);")
    print("loop img/s: images_per_second recorded in the cache (the extraction loop only)")
    if args.odin:
        print(
            "+odin: extract --odin (OpenOOD grid, 8 (T, eps) pairs as scores); odin cost: bare /"
        )
        print("       (extract --odin) img/s, i.e. how many bare passes one ODIN extraction costs")
    return 0


def run_model(
    name: str, args: argparse.Namespace, tmp: Path, np: Any, torch: Any
) -> dict[str, Any]:  # noqa: E501
    import dataclasses

    import yaml

    import oodcache.extract.data as data_module
    from oodcache.cache import Cache
    from oodcache.config import OPENOOD_ODIN_GRID, load_arch, load_benchmark
    from oodcache.extract.digits import ImageSet
    from oodcache.extract.models import build_model, load_weights
    from oodcache.extract.recorder import LayerRecorder, kl_to_uniform
    from oodcache.extract.run import extract

    if name == "digits":
        arch, shape, k = load_arch("digits_resnet"), (1, 32, 32), 5
        label = "digits_resnet 32x32"
    elif name in ("resnet18", "resnet50"):  # ImageNet-200 / ImageNet-1K heads, random weights
        config = "resnet18_224x224" if name == "resnet18" else "resnet50"
        arch = dataclasses.replace(load_arch(config), input_size=args.input_size)
        shape, k = (3, args.input_size, args.input_size), 200 if name == "resnet18" else 1000
        label = f"{name} {args.input_size}x{args.input_size}"
    else:
        raise SystemExit(f"unknown model {name!r}: digits, resnet18 or resnet50")
    n = args.batches * args.batch_size
    rng = np.random.default_rng(0)
    sets = {
        s: ImageSet(
            images=rng.standard_normal(size=(n, *shape), dtype=np.float32),  # no float64 copy
            labels=np.full(n, -1 if s == "ood" else 0, dtype=np.int64),
            ids=[str(i) for i in range(n)],
            pixel_std=(0.5,) * shape[0],
        )
        for s in ("id", "ood")
    }
    data_module.LOADERS["bench"] = lambda cfg, data, **_: sets
    yaml_path = tmp / f"bench_{name}.yaml"
    yaml_path.write_text(
        yaml.safe_dump(
            {
                "name": f"bench_{name}",
                "loader": "bench",
                "num_classes": k,
                "seed": 0,
                "splits": {
                    "id": {"role": "id_val", "dataset": "noise", "source": {}},
                    "ood": {"role": "ood_val", "dataset": "noise", "source": {}},
                },
            }
        )
    )
    bench = load_benchmark(str(yaml_path))
    torch.manual_seed(0)
    model = build_model(arch)
    weights = tmp / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    dev = torch.device(args.device)
    load_weights(model, weights)
    model.eval().to(dev)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast]

    modules = {alias: spec.module for alias, spec in arch.layers.items()}

    def bare() -> float:
        t0 = time.perf_counter()
        with LayerRecorder(model, modules, arch.head) as rec:  # keeps references, nothing else
            for s in sets.values():
                for batch in s.batches(args.batch_size):
                    x = batch.to(dev, non_blocking=True)
                    with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                        loss = kl_to_uniform(model(x).float()).sum()
                        torch.autograd.grad(loss, list(rec.out.values()))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def full(i: int, odin: bool = False) -> tuple[float, float]:
        out = tmp / f"{name}{i}" / "cache.h5"
        extra: dict[str, Any] = {"odin_grid": OPENOOD_ODIN_GRID} if odin else {}
        t0 = time.perf_counter()
        extract(
            arch,
            bench,
            out,
            weights=weights,
            batch_size=args.batch_size,
            progress=False,
            workers=0,
            device=args.device,
            autocast=args.autocast,
            **extra,
        )
        seconds = time.perf_counter() - t0
        with Cache(out) as c:
            recorded = float(c.attrs["images_per_second"])
            has_odin = any("odin" in c.file[f"splits/{s}"] for s in c.roles)
            if (c.odin_grid != [], has_odin) != (odin, odin):
                raise SystemExit(f"{out}: ODIN grid {c.odin_grid}, ODIN data {has_odin}")
        out.unlink()
        return seconds, recorded

    bare()  # warm-up (allocator, kernels)
    bare_s, full_s, odin_s, recorded = [], [], [], []
    for i in range(args.repeats):
        bare_s.append(bare())
        s, r = full(i)
        full_s.append(s)
        recorded.append(r)
        if args.odin:
            odin_s.append(full(i, odin=True)[0])
    total = 2 * n
    return {
        "label": label,
        "bare": total / min(bare_s),
        "extract": total / min(full_s),
        "recorded": max(recorded),
        "odin": total / min(odin_s) if odin_s else float("nan"),
    }


if __name__ == "__main__":
    sys.exit(main())
