"""Progress lines of long work: a meter's format, and the real download, decode and ingest paths printing them."""

import io

import datasets.progress as progress
from datasets.cache import NodeCache
from datasets.progress import Meter
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardStore
from datasets.synthetic import synthetic_rows
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES


def test_a_meter_reports_done_of_total_rate_eta_and_the_end():
    out = io.StringIO()
    meter = Meter("downloading s3://b/x.parquet", total=4e6, unit="MB", scale=1e6, every_s=0, stream=out)
    meter.update(1e6)
    meter.update(1e6, retries=1)
    meter.finish()
    first, second, last = out.getvalue().splitlines()
    assert first.startswith("downloading s3://b/x.parquet: 1.0/4.0 MB (25%), ") and " MB/s, ETA " in first
    assert second.startswith("downloading s3://b/x.parquet: 2.0/4.0 MB (50%), ") and ", 1 retries, ETA" in second
    assert last.startswith("downloading s3://b/x.parquet: 2.0/4.0 MB (50%), ") and last.endswith(" s") \
        and "done in" in last


def test_short_work_prints_nothing():
    out = io.StringIO()
    meter = Meter("decoding tiny/train", total=3, every_s=60, stream=out)
    for _ in range(3):
        meter.update()
    meter.finish()
    assert out.getvalue() == ""


def test_downloads_and_decodes_report_progress(s3_bucket, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "EVERY_S", 0)  # a line at every step
    root = f"{s3_bucket}/shards"
    ShardStore(root, cache=False).write_dataset("tiny", synthetic_rows("tiny", "train", 5, 0.5, seed=2),
                                                NON_RADIOLOGY_PROMPT_TYPES)
    SegmentationSplit(ShardStore(root, cache=NodeCache(str(tmp_path / "node"))), "tiny", "train", "p1", 64, True)
    err = capsys.readouterr().err.splitlines()
    downloads = [line for line in err if line.startswith(f"downloading {root}/tiny/train-00000.parquet")]
    assert downloads and "(100%)" in downloads[-1] and "done in" in downloads[-1]
    decodes = [line for line in err if line.startswith("decoding tiny/train at 64px: ")]
    assert [line.split(": ")[1].split(" rows")[0] for line in decodes] == ["1/5", "2/5", "3/5", "4/5", "5/5", "5/5"]
    assert "done in" in decodes[-1]
