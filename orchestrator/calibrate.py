"""``plan --calibrate``: measure this machine's step times through the real Trainer, for ``plan`` to read
(stored in this user's step-time file, ``search_spaces.estimates.user_step_times``, never the shipped table)."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from search_spaces.estimates import load_step_times, save_step_times, ship_hint


def calibrate(specs: list[dict], data: str, device: str, path: str | None, threads: int,
              epochs: int = 3) -> list[str]:
    """Measure each (model, mode, size) of ``specs`` here through the real Trainer, on the spec's data,
    with a private feature cache (so the grid that follows builds its own); store the entries under
    ``device`` in ``path``, or with None in this user's step-time file (never the shipped table)."""
    import torch  # costly (PyTorch ~2 s, the Trainer and models more): only --calibrate trains

    from trainables.experiment import prepare

    load_step_times(path)  # a table that cannot be read stops here, before the measuring
    entries = {}
    lines = []
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import trainables.tune_trainable"], check=True,
                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    start_s = time.perf_counter() - start
    grid_start_s = _ray_start_seconds()
    torch.set_num_threads(threads)
    done = set()
    for spec in specs:
        key = f"{spec['model']}/{spec['mode']}/{spec['size']}"
        if key in done or spec["mode"] == "zeroshot":
            continue
        done.add(key)
        with tempfile.TemporaryDirectory(prefix="plan_calibrate_") as cache:
            previous = os.environ.get("VLSM_CACHE")
            os.environ["VLSM_CACHE"] = cache
            try:
                t0 = time.perf_counter()
                trainer, _ = prepare({**spec, "max_epochs": epochs + 1}, data)
                setup_s = time.perf_counter() - t0
                first, train_times, val_times = None, [], []
                for epoch in range(epochs + 1):
                    t0 = time.perf_counter()
                    trainer.train_epoch()
                    t1 = time.perf_counter()
                    trainer.evaluate(trainer.val_set)
                    t2 = time.perf_counter()
                    trainer.epoch += 1
                    if epoch == 0:
                        first = t2 - t0
                    else:
                        train_times.append(t1 - t0)
                        val_times.append(t2 - t1)
            finally:
                if previous is None:
                    os.environ.pop("VLSM_CACHE", None)
                else:
                    os.environ["VLSM_CACHE"] = previous
        batch = spec["batch_size"]
        train_rows, val_rows = len(trainer.train_set), len(trainer.val_set)
        train_batches = train_rows // batch + (train_rows % batch > 1)  # a last batch of one is dropped
        steady = statistics.median(train_times) + statistics.median(val_times)
        entries[key] = {
            "batch": batch,
            "step_ms": round(statistics.median(train_times) / max(1, train_batches) * 1000, 2),
            "eval_step_ms": round(statistics.median(val_times) / max(1, math.ceil(val_rows / batch)) * 1000, 2),
            "setup_s": round(setup_s, 2), "start_s": round(start_s, 2),
            "cache_build_ms_per_row": round(max(0.0, first - steady) / (train_rows + val_rows) * 1000, 3),
            "source": f"plan --calibrate on {device} ({os.cpu_count()} cores), {threads} torch thread(s), "
                      f"{time.strftime('%Y-%m-%d')}",
        }
        lines.append(f"{key}: step {entries[key]['step_ms']} ms, eval step {entries[key]['eval_step_ms']} ms at "
                     f"batch {batch}; setup {setup_s:.1f} s; first epoch {first:.1f} s, later {steady:.1f} s")
    lines.append(f"trial process start {start_s:.1f} s; Ray start {grid_start_s:.1f} s")
    saved = save_step_times({"devices": {device: entries}, "grid_start_s": {device: round(grid_start_s, 2)}}, path)
    lines.append(f"stored under {device!r} in {saved}" + ("" if path else f" {ship_hint(device)}"))
    return lines


def _ray_start_seconds() -> float:
    import ray  # costly (~0.5 s): only --calibrate starts Ray

    start = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ray.shutdown()
    return time.perf_counter() - start
