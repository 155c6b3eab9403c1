"""Throughput of the input pipeline alone (records -> normalised 176x176 batches), images/s.

Builds ``synth_au`` (default ``bp4d_small``) if needed, then times full training epochs of
``DataSource.train_batches`` (``data_pipelines.pipeline.make_source``, records read by random access
from array_record shards) at the paper size (aligned 200, crop 176, random crop + flip, JPEG decode of
the crop window, normalisation to [-1, 1]), on the whole training split of fold 1 (``data.val_fraction``
0, as before the validation split existed). Reports the median of several timed epochs after a warm-up
epoch, both steady state (from the first batch to the last) and end to end (including the epoch's
tf.data construction), the time of ``make_source`` (once per run: dataset checks, subjects and labels
of the training parts), and writes JSON.

    python -m experiments.bench_pipeline --config bp4d_small --batch-size 32 --runs 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from algrnet_jax import configs
from data_pipelines import builders, pipeline


def bench(data_dir: str, builder_config: str, batch_size: int, runs: int, size: str = "paper") -> dict:
    """Times ``runs`` epochs (after one warm-up epoch); returns a JSON-able dict."""
    builder = builders.get_builder("synth_au", builder_config, data_dir)
    if not builder.is_prepared():
        t0 = time.perf_counter()
        builder.download_and_prepare()
        print(f"built synth_au/{builder_config} in {time.perf_counter() - t0:.1f}s")
    config = configs.get_config("algrnet", size)
    config.data.data_dir = data_dir
    config.data.builder_config = builder_config
    config.data.batch_size = batch_size
    config.data.val_fraction = 0.0
    t0 = time.perf_counter()
    source = pipeline.make_source(config)
    make_source_s = time.perf_counter() - t0
    steady, total, cpu_ms = [], [], []
    images = 0
    for epoch in range(runs + 1):
        t0 = time.perf_counter()
        it = source.train_batches(epoch)
        first = next(it)
        t1, c1 = time.perf_counter(), time.process_time()
        n_after_first = 0
        for b in it:
            n_after_first += len(b["image"])
        t2, c2 = time.perf_counter(), time.process_time()
        images = len(first["image"]) + n_after_first
        if epoch == 0:
            continue                       # warm-up
        steady.append(n_after_first / (t2 - t1))
        total.append(images / (t2 - t0))
        cpu_ms.append(1000 * (c2 - c1) / n_after_first)
        print(f"epoch {epoch}: {steady[-1]:.0f} images/s steady, {total[-1]:.0f} images/s end to end, "
              f"{cpu_ms[-1]:.2f} CPU ms/image")
    shape = list(first["image"].shape)
    return {
        "what": "input pipeline alone: records -> normalised training batches (crop + flip + decode + [-1,1])",
        "dataset": f"synth_au/{builder_config}", "train_examples_per_epoch": images,
        "batch_shape": shape, "batch_size": batch_size, "runs": runs,
        "make_source_s": make_source_s, "record_format": builder.info.file_format.value,
        "images_per_s_steady_median": statistics.median(steady),
        "images_per_s_end_to_end_median": statistics.median(total),
        "images_per_s_steady_runs": steady, "images_per_s_end_to_end_runs": total,
        # CPU time (all threads) per image in steady state: less sensitive to other load on the
        # machine than wall time; cpu_count / cpu_s_per_image bounds images/s on an idle machine.
        "cpu_ms_per_image_median": statistics.median(cpu_ms),
        "cpu_count": os.cpu_count(), "load_average_1m_after": os.getloadavg()[0],
        "machine": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="bp4d_small", help="synth_au builder config")
    p.add_argument("--data-dir", default=None, help="tfds data dir (default: $ALGRNET_DATA_DIR or ./data/tfds)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runs", type=int, default=5, help="timed epochs after one warm-up epoch")
    p.add_argument("--out", default=os.path.join("experiments", "results", "bench_pipeline.json"))
    args = p.parse_args(argv)
    result = bench(args.data_dir or builders.default_data_dir(), args.config, args.batch_size, args.runs)
    print(f"median: {result['images_per_s_steady_median']:.0f} images/s steady, "
          f"{result['images_per_s_end_to_end_median']:.0f} images/s end to end, "
          f"{result['cpu_ms_per_image_median']:.2f} CPU ms/image "
          f"({result['batch_shape']}, load average {result['load_average_1m_after']:.1f})")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
