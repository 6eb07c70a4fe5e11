"""Per-model train-step time and peak memory at the study's input sizes.

    python -m benchmarks.models [--models clipseg unet ...] [--size full] [--batch-size 2] [--steps 5]

Each model runs in a fresh process, so its peak memory is its own: on CUDA the peak allocated by
PyTorch, on the CPU the process's peak resident set. Steps are forward + backward + optimizer at
the model's input size, in the mode the study trained it (VLSMs frozen, CNNs end to end) unless
``--mode`` says otherwise; the median of the timed steps is printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time

import torch

from datasets.cli import DefaultsHelpFormatter
from trainables.losses import dice_bce_loss
from trainables.models import build_model, model_inputs, model_names


def measure(name: str, mode: str, size: str, batch: int, steps: int, device: str) -> dict:
    torch.manual_seed(0)
    model = build_model(name, mode, size).to(device)
    inputs = model_inputs(name, size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    pixels = torch.randn(batch, 3, inputs.input_size, inputs.input_size, device=device)
    ids = torch.randint(1, 1000, (batch, inputs.context_length), device=device)
    mask = torch.ones_like(ids)
    target = (torch.rand(batch, 1, inputs.input_size, inputs.input_size, device=device) > 0.5).float()
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 1):  # the first step warms up and is not timed
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            logits = model(pixels, ids, mask)
        loss = dice_bce_loss(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": name, "mode": mode, "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in params), "input": inputs.input_size,
            "step_s": statistics.median(times), "peak_gib": peak / 2**30}


def _child(queue, *args) -> None:
    try:
        queue.put(measure(*args))
    except Exception as e:  # report and go on with the next model
        queue.put({"model": args[0], "error": f"{type(e).__name__}: {e}"})


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.split("\n\n")[0],
                                  formatter_class=DefaultsHelpFormatter)
    top.add_argument("--models", nargs="+", choices=model_names(), default=model_names(study_only=True),
                     help="models to measure")
    top.add_argument("--size", choices=("full", "small"), default="full", help="architecture size")
    top.add_argument("--mode", choices=("frozen", "finetune"),
                     help="training mode for the VLSMs (none: frozen, as the study); CNNs always finetune")
    top.add_argument("--batch-size", dest="batch", type=int, default=2, help="batch size")
    top.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    top.add_argument("--device", choices=("cpu", "cuda"),
                     help="where to run (none: cuda when available, else cpu)")
    args = top.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.size} models, batch {args.batch}, median of {args.steps} steps on {name}")
    print(f"{'model':<16} {'mode':<9} {'input':>5} {'params':>12} {'trainable':>12} {'step (s)':>9} {'peak GiB':>9}")
    context = multiprocessing.get_context("spawn")
    for model in args.models:
        mode = "finetune" if model in ("unet", "unetpp", "deeplabv3plus") else (args.mode or "frozen")
        queue = context.Queue()
        process = context.Process(target=_child, args=(queue, model, mode, args.size, args.batch, args.steps, device))
        process.start()
        row = queue.get()
        process.join()
        if "error" in row:
            print(f"{model:<16} failed: {row['error']}")
            continue
        print(f"{row['model']:<16} {row['mode']:<9} {row['input']:>5} {row['params']:>12,} {row['trainable']:>12,} "
              f"{row['step_s']:>9.3f} {row['peak_gib']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
