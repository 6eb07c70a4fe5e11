"""Tiny released-layout datasets (data/<name>/{anns,images,masks}) for the ingest tests."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.cli import REPO, require_reference

RELEASED = Path(__file__).resolve().parents[2] / "shared/reference/medvlsm_anns"
SIZE = (32, 40)  # height, width


def released(dataset: str, split: str) -> list[dict]:
    path = RELEASED / dataset / f"{split}.json"
    require_reference(path)
    return json.loads(path.read_text())


def mask_for(name: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A rectangle whose place depends on the name: every file's mask differs, and is known."""
    h, w = size
    seed = zlib.crc32(name.encode())
    top, left = seed % (h // 2), (seed // 7) % (w // 2)
    mask = np.zeros(size, bool)
    mask[top:top + h // 3, left:left + w // 3] = True
    return mask


def image_for(name: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path)


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def make_layout(root: Path, name: str, anns: dict[str, list[dict]], split_folders: dict[str, str] | None = None,
                seed_by_folder: bool = False) -> Path:
    """Write anns/<split>.json and an image and a mask for every entry's names.

    ``split_folders`` maps a split to the sub-folder of images/ and masks/ its files live in (CAMUS:
    val -> train, test -> test); ``seed_by_folder`` makes same-named files in two folders differ.
    """
    folder = root / name
    (folder / "anns").mkdir(parents=True, exist_ok=True)
    for split, entries in anns.items():
        (folder / "anns" / f"{split}.json").write_text(json.dumps(entries))
        sub = (split_folders or {}).get(split, "")
        for entry in entries:
            key = f"{sub}/" if seed_by_folder else ""
            image = folder / "images" / sub / entry["img_name"]
            mask = folder / "masks" / sub / entry["mask_name"]
            if not image.exists():
                save(image_for(key + entry["img_name"]), image)
            if not mask.exists():
                save(mask_for(key + entry["mask_name"]), mask)
    return folder


def polyp_entry(name: str, **extra) -> dict:
    """An entry shaped like the released Kvasir ones, with made-up prompts."""
    return {"bbox": [1, 2, 3, 4], "cat": 0, "segment_id": name, "img_name": f"{name}.png",
            "mask_name": f"{name}.png", "prompts": {"p0": "", "p1": "polyp", "p2": f"round polyp {name}",
                                                    "p7": [f"polyp {name} a", f"polyp {name} b"]}, **extra}


def run_ingest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m datasets.ingest ARGS`` in a child process (the real command line)."""
    return subprocess.run([sys.executable, "-m", "datasets.ingest", *args, "--quiet"], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
