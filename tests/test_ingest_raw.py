"""Readers of the original public downloads, on tiny fakes of each distribution's format built here:
masks as the downloads store them (lossy JPEG, colour-coded, TIFF, label maps in .mhd/.raw and
.nii.gz, COCO RLE and polygons, several BUSI masks per image), and the problems each may hold."""

from __future__ import annotations

import csv
import gzip
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.ingest.raw import READERS, LayoutError
from datasets.ingest.raw.chexlocalize import decode_rle, rasterise_polygons, rle_counts
from datasets.ingest.raw.common import binary_mask, red_or_green_mask, seeded_split
from datasets.ingest.raw.volumes import read_metaimage, read_nifti
from datasets.ingest.records import Record, RowError, RowProblem
from datasets.shards import ShardStore
from prompts.generate import row_attributes, row_prompts
from prompts.metadata import CAMUS_STRUCTURES

REPO = Path(__file__).resolve().parents[1]


# --- writing fakes -------------------------------------------------------------------------------


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def blob(height: int, width: int, index: int) -> np.ndarray:
    """A boolean ellipse whose place and size depend on index, so masks differ between images."""
    rows, cols = np.mgrid[:height, :width]
    cy, cx = height * (0.3 + 0.05 * (index % 5)), width * (0.35 + 0.04 * (index % 6))
    ry, rx = height * (0.15 + 0.02 * (index % 3)), width * (0.2 + 0.02 * (index % 4))
    return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1


def photo(height: int, width: int, index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def grey(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def records_of(name: str, folder: Path, seed: int = 0) -> tuple[dict[str, Record], list[RowProblem]]:
    records, problems = {}, []
    for item in READERS[name].records(folder, seed):
        if isinstance(item, Record):
            assert item.sample_id not in records, item.sample_id
            records[item.sample_id] = item
        else:
            problems.append(item)
    return records, problems


def splits_of(records: dict[str, Record]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records.values():
        counts[record.split] = counts.get(record.split, 0) + 1
    return counts


def decoded(record: Record) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record.load_image())))


def make_kvasir(root: Path, n: int = 10) -> dict[str, np.ndarray]:
    """Kvasir-SEG/Kvasir-SEG/{images,masks}/*.jpg; masks saved as (lossy) JPEG."""
    base = root / "Kvasir-SEG" / "Kvasir-SEG"
    truth = {}
    for i in range(n):
        stem = f"cju{i:04d}"
        truth[stem] = blob(48, 64, i)
        save(base / "images" / f"{stem}.jpg", photo(48, 64, i), quality=90)
        save(base / "masks" / f"{stem}.jpg", grey(truth[stem]), quality=60)
    return truth


def make_busi(root: Path) -> dict[str, np.ndarray]:
    base = root / "Dataset_BUSI_with_GT"
    truth = {}
    for kind, count in (("benign", 6), ("malignant", 3)):
        for i in range(1, count + 1):
            stem = f"{kind} ({i})"
            save(base / kind / f"{stem}.png", photo(40, 50, i)[..., 0])
            first, second = blob(40, 50, i), np.zeros((40, 50), bool)
            save(base / kind / f"{stem}_mask.png", grey(first))
            if kind == "benign" and i == 1:  # a second tumour drawn in a second file
                second[30:36, 5:12] = True
                save(base / kind / f"{stem}_mask_1.png", grey(second))
            truth[stem] = first | second
    for i in range(1, 3):
        save(base / "normal" / f"normal ({i}).png", photo(40, 50, 50 + i)[..., 0])
        save(base / "normal" / f"normal ({i})_mask.png", np.zeros((40, 50), np.uint8))
        truth[f"normal ({i})"] = np.zeros((40, 50), bool)
    return truth


# CAMUS: MetaImage and NIfTI-1 writers, the fields the readers read and nothing more.
def write_metaimage(path: Path, pixels: np.ndarray, compressed: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    types = {np.dtype("uint8"): "MET_UCHAR", np.dtype("int16"): "MET_SHORT", np.dtype("uint16"): "MET_USHORT"}
    data = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    raw_name = path.with_suffix(".zraw" if compressed else ".raw").name
    header = ["ObjectType = Image", "NDims = 2", f"DimSize = {pixels.shape[1]} {pixels.shape[0]}",
              f"ElementType = {types[pixels.dtype]}", "ElementSpacing = 0.154 0.308",
              "ElementByteOrderMSB = False", f"CompressedData = {compressed}", f"ElementDataFile = {raw_name}"]
    path.write_text("\n".join(header) + "\n")
    (path.parent / raw_name).write_bytes(zlib.compress(data) if compressed else data)


def write_nifti(path: Path, pixels: np.ndarray, third_axis: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    codes = {np.dtype("uint8"): 2, np.dtype("int16"): 4, np.dtype("uint16"): 512}
    height, width = pixels.shape
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    dims = [3, width, height, 1] if third_axis else [2, width, height]
    struct.pack_into("<8h", header, 40, *(dims + [1] * (8 - len(dims))))
    struct.pack_into("<2h", header, 70, codes[pixels.dtype], pixels.dtype.itemsize * 8)
    struct.pack_into("<8f", header, 76, 1, 0.154, 0.308, 1, 1, 1, 1, 1)
    struct.pack_into("<3f", header, 108, 352.0, 1.0, 0.0)
    header[344:348] = b"n+1\0"
    body = bytes(header) + b"\0" * 4 + np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    path.write_bytes(gzip.compress(body))


def camus_label_map(height: int, width: int, index: int) -> np.ndarray:
    labels = np.zeros((height, width), np.uint8)
    labels[8:20, 10 + index % 3:22] = 1  # LV cavity
    labels[6:22, 6:10] = 2  # myocardium
    labels[24:30, 8:24 - index % 4] = 3  # left atrium
    return labels


CAMUS_INFO = {"patient0001": ("F", 56, "Good"), "patient0002": ("M", 73, "Medium"), "patient0003": ("F", 40, "Poor"),
              "patient0004": ("M", 61, "Good"), "patient0005": ("F", 84, "Medium")}


def make_camus(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Patients 1-3 as the 2019 MetaImage release (one compressed), 4-5 as the NIfTI release."""
    truth = {}
    for number, (patient, (sex, age, quality)) in enumerate(CAMUS_INFO.items()):
        nifti = number >= 3
        folder = root / ("database_nifti" if nifti else "training") / patient
        for view in ("2CH", "4CH"):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"Info_{view}.cfg").write_text(
                f"ED: 1\nES: 12\nNbFrame: 12\nSex: {sex}\nAge: {age}\nImageQuality: {quality}\nLVef: 55.1\n")
            for phase in ("ED", "ES"):
                stem = f"{patient}_{view}_{phase}"
                index = len(truth)
                image = np.random.default_rng(index).integers(0, 256, (32, 28), dtype=np.uint8)
                labels = camus_label_map(32, 28, index)
                if nifti:
                    write_nifti(folder / f"{stem}.nii.gz", image, third_axis=True)
                    write_nifti(folder / f"{stem}_gt.nii.gz", labels.astype(np.int16))
                else:
                    write_metaimage(folder / f"{stem}.mhd", image, compressed=(number == 1))
                    write_metaimage(folder / f"{stem}_gt.mhd", labels)
                truth[stem] = (image, labels)
            if not nifti:  # the whole cycle, which the study did not use: not a frame to read
                write_metaimage(folder / f"{patient}_{view}_sequence.mhd", np.zeros((32, 28), np.uint8))
    return truth


def rle_encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a boolean mask (column-major runs, background first)."""
    flat = mask.T.reshape(-1)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat.astype(np.int8))) + 1, [flat.size]])
    runs = ([0] if flat[0] else []) + np.diff(bounds).tolist()
    text = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            text.append(chr((group | (0x20 if more else 0)) + 48))
    return {"size": list(mask.shape), "counts": "".join(text)}


CHEX_IMAGES = {  # image id -> part, findings with masks
    "patient64541_study1_view1_frontal": ("val", ("Airspace Opacity", "Cardiomegaly")),
    "patient64541_study1_view2_lateral": ("val", ("Support Devices",)),
    "patient64542_study1_view1_frontal": ("val", ()),
    "patient64543_study1_view1_frontal": ("val", ("Edema",)),
    "patient64741_study1_view1_frontal": ("test", ("Pleural Effusion", "Lung Lesion")),
    "patient64742_study2_view1_frontal": ("test", ("Atelectasis",)),
}


def make_chexlocalize(root: Path) -> dict[str, np.ndarray]:
    """Val part with RLE masks (and a labels CSV), test part with polygons only."""
    findings = ("Airspace Opacity", "Atelectasis", "Cardiomegaly", "Edema", "Lung Lesion", "Pleural Effusion",
                "Support Devices")
    segmentations, annotations, truth = {}, {}, {}
    for index, (image_id, (part, positive)) in enumerate(CHEX_IMAGES.items()):
        patient, study, view = image_id.split("_", 2)
        save(root / "CheXpert" / part / patient / study / f"{view}.jpg", photo(36, 30, index)[..., 0], quality=90)
        if part == "val":
            entry = {}
            for j, finding in enumerate(findings):
                mask = blob(36, 30, index + j) if finding in positive else np.zeros((36, 30), bool)
                entry[finding] = rle_encode(mask)
                if finding in positive:
                    truth[f"{image_id}_{finding.lower().replace(' ', '_')}"] = mask
            segmentations[image_id] = entry
        else:
            entry = {"img_size": [36, 30]}
            for j, finding in enumerate(findings):
                if finding in positive:
                    x0, y0 = 3 + j, 4 + index
                    entry[finding] = [[[x0, y0], [x0 + 10, y0], [x0 + 10, y0 + 8], [x0, y0 + 8]]]
                    mask = np.zeros((36, 30), bool)
                    mask[y0:y0 + 9, x0:x0 + 11] = True
                    truth[f"{image_id}_{finding.lower().replace(' ', '_')}"] = mask
                else:
                    entry[finding] = []
            annotations[image_id] = entry
    (root / "CheXlocalize").mkdir(parents=True, exist_ok=True)
    (root / "CheXlocalize" / "gt_segmentations_val.json").write_text(json.dumps(segmentations))
    (root / "CheXlocalize" / "gt_annotations_test.json").write_text(json.dumps(annotations))
    with (root / "CheXpert" / "val_labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "No Finding", "Cardiomegaly", "Lung Opacity", "Edema", "Support Devices"])
        writer.writerow(["CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg", "0", "1.0", "1.0", "0", "1.0"])
    return truth


def make_mimic(root: Path, n: int = 10) -> dict[str, np.ndarray]:
    truth = {}
    root.mkdir(parents=True, exist_ok=True)
    with (root / "reports.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dicom_id", "subject_id", "study_id", "report"])
        for i in range(n):
            dicom = f"d{i:03d}"
            truth[dicom] = blob(40, 40, i)
            save(root / "images" / f"{dicom}.jpg", photo(40, 40, i)[..., 0], quality=90)
            save(root / "masks" / f"{dicom}.png", grey(truth[dicom]))
            writer.writerow([dicom, f"s{i // 2}", f"t{i}", f"FINDINGS: report {i}, lungs clear.\nIMPRESSION: none."])
    return truth


# --- shared pieces -------------------------------------------------------------------------------


def test_seeded_split_has_the_studys_counts_and_depends_only_on_the_seed():
    for n, expected in ((1000, (800, 100, 100)), (612, (490, 61, 61)), (780, (624, 78, 78))):
        split = seeded_split((f"k{i}" for i in range(n)), seed=3, val_fraction=0.1, test_fraction=0.1)
        counts = [sum(1 for s in split.values() if s == name) for name in ("train", "val", "test")]
        assert tuple(counts) == expected
    keys = [f"k{i}" for i in range(50)]
    assert seeded_split(keys, 1, 0.1, 0.1) == seeded_split(list(reversed(keys)), 1, 0.1, 0.1)
    assert seeded_split(keys, 1, 0.1, 0.1) != seeded_split(keys, 2, 0.1, 0.1)


def test_grey_masks_threshold_jpeg_noise_and_refuse_colour(tmp_path):
    truth = blob(48, 64, 1)
    path = save(tmp_path / "m.jpg", grey(truth), quality=50)
    stored = np.asarray(Image.open(path))
    assert len(np.unique(stored)) > 2  # the JPEG really is noisy
    assert (binary_mask(path) != truth).mean() < 0.01
    colour = np.zeros((48, 64, 3), np.uint8)
    colour[truth] = (255, 0, 0)
    with pytest.raises(RowError, match="colour mask"):
        binary_mask(save(tmp_path / "c.png", colour))
    zero_one = save(tmp_path / "01.png", truth.astype(np.uint8))
    assert np.array_equal(binary_mask(zero_one), truth)


def test_layout_errors_say_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    for name, expected in (("kvasir_polyp", "images"), ("isic", "training_data"), ("camus", "CAMUS frames"),
                           ("busi", "benign"), ("chexlocalize", "gt_segmentations"),
                           ("mimic_cxr_lungs", "reports.csv")):
        with pytest.raises(LayoutError, match=expected):
            records_of(name, tmp_path / "empty")


# --- endoscopy, skin, foot -----------------------------------------------------------------------


def test_kvasir_jpeg_masks_splits_and_problems(tmp_path):
    truth = make_kvasir(tmp_path)
    base = tmp_path / "Kvasir-SEG" / "Kvasir-SEG"
    save(base / "images" / "orphan.jpg", photo(48, 64, 99))
    save(base / "masks" / "stray.jpg", grey(blob(48, 64, 3)))
    records, problems = records_of("kvasir_polyp", tmp_path, seed=5)
    assert sorted(records) == sorted(truth)
    assert splits_of(records) == {"train": 8, "val": 1, "test": 1}
    assert {Path(p.source).name: p.reason for p in problems} == {
        "orphan.jpg": "no mask for this image (looked for orphan with any image suffix)",
        "stray.jpg": "mask without an image"}
    for stem, record in records.items():
        assert record.class_name == "polyp" and record.metadata == {}
        assert record.load_image() == (base / "images" / f"{stem}.jpg").read_bytes()  # original bytes
        assert (record.load_mask() != truth[stem]).mean() < 0.01
    again, _ = records_of("kvasir_polyp", tmp_path, seed=5)
    assert {k: r.split for k, r in again.items()} == {k: r.split for k, r in records.items()}
    others = [records_of("kvasir_polyp", tmp_path, seed=s)[0] for s in range(6, 12)]
    assert any({k: r.split for k, r in o.items()} != {k: r.split for k, r in records.items()} for o in others)


def test_bkai_colour_coded_masks_keep_red_and_green(tmp_path):
    red, green = blob(40, 48, 0), np.zeros((40, 48), bool)
    green[30:38, 30:46] = True
    colour = np.zeros((40, 48, 3), np.uint8)
    colour[red] = (255, 0, 0)
    colour[green] = (0, 255, 0)
    for i in range(3):
        save(tmp_path / "train" / "train" / f"img{i}.jpeg", photo(40, 48, i))
        save(tmp_path / "train_gt" / "train_gt" / f"img{i}.jpeg", colour, quality=75)
    assert not (np.asarray(Image.fromarray(colour).convert("L"))[red] > 127).any()  # a grey threshold loses red
    records, problems = records_of("bkai_polyp", tmp_path)
    assert not problems and len(records) == 3
    mask = records["img0"].load_mask()
    assert (mask != (red | green)).mean() < 0.01
    assert np.array_equal(red_or_green_mask(tmp_path / "train_gt" / "train_gt" / "img0.jpeg"), mask)


def test_clinicdb_tiff_pixel_exact_and_test_only_benchmarks(tmp_path):
    clinic = tmp_path / "clinic" / "CVC-ClinicDB"
    for i in range(1, 11):
        save(clinic / "PNG" / "Original" / f"{i}.png", photo(30, 36, i))
        save(clinic / "TIF" / "Original" / f"{i}.tif", photo(30, 36, i))
        save(clinic / "TIF" / "Ground Truth" / f"{i}.tif", grey(blob(30, 36, i)))
        save(clinic / "PNG" / "Ground Truth" / f"{i}.png", grey(blob(30, 36, i)))
    colour = np.zeros((30, 36, 3), np.uint8)
    colour[blob(30, 36, 5)] = (0, 200, 0)
    save(clinic / "PNG" / "Ground Truth" / "5.png", colour)  # a colour mask where binary is expected
    records, problems = records_of("clinicdb_polyp", tmp_path / "clinic")
    assert not problems and splits_of(records) == {"train": 8, "val": 1, "test": 1}
    assert records["3"].source.endswith("Ground Truth/3.png")  # the PNG copy of the Kaggle archive
    assert np.array_equal(records["3"].load_mask(), blob(30, 36, 3))
    with pytest.raises(RowError, match=r"Ground Truth/5.png is a colour mask \(\d+% of pixels coloured\)"):
        records["5"].load_mask()

    etis = tmp_path / "etis" / "ETIS-LaribPolypDB"
    for i in range(1, 5):
        save(etis / "ETIS-LaribPolypDB" / f"{i}.tif", photo(30, 36, i))
        save(etis / "Ground Truth" / f"p{i}.tif", grey(blob(30, 36, i)))
    records, problems = records_of("etis_polyp", tmp_path / "etis")
    assert not problems and splits_of(records) == {"test": 4}
    assert np.array_equal(records["4"].load_mask(), blob(30, 36, 4))
    for name in ("cvc300_polyp", "colondb_polyp"):
        folder = tmp_path / name / "TestDataset" / name
        for i in range(3):
            save(folder / "images" / f"{i}.png", photo(30, 36, i))
            save(folder / "masks" / f"{i}.png", grey(blob(30, 36, i)))
        records, problems = records_of(name, tmp_path / name)
        assert not problems and splits_of(records) == {"test": 3}


def test_isic_official_test_set_and_val_from_training(tmp_path):
    truth = {}
    for part, ids in (("Training", range(10)), ("Test", range(100, 104))):
        for i in ids:
            stem = f"ISIC_{i:07d}"
            truth[stem] = blob(30, 40, i)
            save(tmp_path / f"ISBI2016_ISIC_Part1_{part}_Data" / f"{stem}.jpg", photo(30, 40, i))
            save(tmp_path / f"ISBI2016_ISIC_Part1_{part}_GroundTruth" / f"{stem}_Segmentation.png", grey(truth[stem]))
    records, problems = records_of("isic", tmp_path)
    assert not problems and splits_of(records) == {"train": 9, "val": 1, "test": 4}
    assert {k for k, r in records.items() if r.split == "test"} == {f"ISIC_{i:07d}" for i in range(100, 104)}
    assert all(np.array_equal(r.load_mask(), truth[k]) for k, r in records.items())
    assert records["ISIC_0000100"].class_name == "skin melanoma"


def test_dfu_pairs_images_and_masks(tmp_path):
    base = tmp_path / "DFUC2022_train_release"
    for i in range(10):
        save(base / "DFUC2022_train_images" / f"1000{i:02d}.jpg", photo(32, 32, i))
        save(base / "DFUC2022_train_masks" / f"1000{i:02d}.png", grey(blob(32, 32, i)))
    save(base / "DFUC2022_train_masks" / "100099.png", np.dstack([grey(blob(32, 32, 0))] * 3))
    records, problems = records_of("dfu", tmp_path)
    assert splits_of(records) == {"train": 8, "val": 1, "test": 1}
    assert [(Path(p.source).name, p.reason) for p in problems] == [("100099.png", "mask without an image")]
    assert np.array_equal(records["100007"].load_mask(), blob(32, 32, 7))
    assert records["100007"].class_name == "foot ulcer"


# --- radiology -----------------------------------------------------------------------------------


def test_volume_readers_read_what_the_writers_wrote(tmp_path):
    pixels = np.arange(12 * 7, dtype=np.uint16).reshape(12, 7) * 300
    write_metaimage(tmp_path / "a.mhd", pixels)
    write_metaimage(tmp_path / "b.mhd", pixels, compressed=True)
    write_nifti(tmp_path / "c.nii.gz", pixels, third_axis=True)
    for read, name in ((read_metaimage, "a.mhd"), (read_metaimage, "b.mhd"), (read_nifti, "c.nii.gz")):
        assert np.array_equal(read(tmp_path / name), pixels)
    (tmp_path / "a.raw").write_bytes(b"\0" * 10)
    with pytest.raises(RowError, match="a.mhd: DimSize 7 12 needs 168 bytes"):
        read_metaimage(tmp_path / "a.mhd")
    (tmp_path / "d.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(RowError, match="d.nii.gz: not a valid gzip file"):
        read_nifti(tmp_path / "d.nii.gz")


def test_camus_three_rows_per_frame_metadata_and_patient_split(tmp_path):
    truth = make_camus(tmp_path)
    records, problems = records_of("camus", tmp_path, seed=1)
    assert not problems
    assert len(records) == 3 * len(truth) == 60
    for stem, (image, labels) in truth.items():
        for label, structure in CAMUS_STRUCTURES.items():
            record = records[f"{stem}_{label}"]
            assert record.class_name == structure
            assert np.array_equal(record.load_mask(), labels == int(label))
            assert np.array_equal(decoded(record), image)
    patient, view, phase = "patient0002", "4CH", "ES"
    assert records[f"{patient}_{view}_{phase}_2"].metadata == {
        "view": "4CH", "phase": "ES", "sex": "M", "age": "73", "image_quality": "Medium", "patient": patient,
        "label": "2"}
    by_patient: dict[str, set[str]] = {}
    for record in records.values():
        by_patient.setdefault(record.metadata["patient"], set()).add(record.split)
    assert all(len(splits) == 1 for splits in by_patient.values())  # a patient never spans two splits
    assert sorted(s for (s,) in by_patient.values()) == ["test", "train", "train", "train", "val"]
    again, _ = records_of("camus", tmp_path, seed=1)
    assert {k: r.split for k, r in again.items()} == {k: r.split for k, r in records.items()}


def test_camus_problems_missing_label_map_cfg_and_bad_labels(tmp_path):
    make_camus(tmp_path)
    folder = tmp_path / "training" / "patient0001"
    (folder / "patient0001_2CH_ED_gt.mhd").unlink()
    (folder / "Info_4CH.cfg").unlink()
    write_metaimage(folder / "patient0001_2CH_ES_gt.mhd", np.full((32, 28), 7, np.uint8))
    (tmp_path / "training" / "patient0003" / "patient0003_2CH_ED.raw").write_bytes(b"short")
    records, problems = records_of("camus", tmp_path)
    reasons = {(Path(p.source).name, p.reason) for p in problems}
    assert ("patient0001_2CH_ED.mhd", "no label map patient0001_2CH_ED_gt next to this image") in reasons
    assert [p.reason for p in problems if Path(p.source).name == "Info_4CH.cfg"] == [
        f"cannot read {folder / 'Info_4CH.cfg'}: No such file or directory"] * 2
    assert len(records) == 60 - 3 * 3
    with pytest.raises(RowError, match=r"label map holds values \[7\]"):
        records["patient0001_2CH_ES_1"].load_mask()
    with pytest.raises(RowError, match="patient0003_2CH_ED.mhd: DimSize 28 32 needs 896 bytes"):
        records["patient0003_2CH_ED_1"].load_image()


def test_busi_mask_union_normals_and_problems(tmp_path):
    truth = make_busi(tmp_path)
    base = tmp_path / "Dataset_BUSI_with_GT"
    save(base / "normal" / "normal (3).png", photo(40, 50, 9)[..., 0])  # a normal image without a mask file
    save(base / "benign" / "benign (7).png", photo(40, 50, 7)[..., 0])  # a tumour image without one
    save(base / "malignant" / "malignant (9)_mask.png", grey(blob(40, 50, 9)))
    records, problems = records_of("busi", tmp_path, seed=2)
    assert sorted(records) == sorted([*truth, "normal (3)"])
    assert {(Path(p.source).name, p.reason) for p in problems} == {
        ("benign (7).png", "no mask for this benign image (looked for benign (7)_mask*.png)"),
        ("malignant (9)_mask.png", f"mask without an image (no malignant (9).png in {base / 'malignant'})")}
    assert np.array_equal(records["benign (1)"].load_mask(), truth["benign (1)"])
    assert records["benign (1)"].load_mask()[30:36, 5:12].all()  # the second mask file counts
    assert not records["normal (3)"].load_mask().any() and records["normal (3)"].load_mask().shape == (40, 50)
    assert {r.metadata["tumor_type"] for r in records.values()} == {"benign", "malignant", "normal"}
    assert all(r.class_name == "tumor" for r in records.values())
    assert splits_of(records) == {"train": 10, "val": 1, "test": 1}


def test_rle_decoding_known_values_and_round_trip():
    assert rle_counts("121") == [1, 2, 1]
    assert rle_counts("1213") == [1, 2, 1, 5]  # the fourth run is stored as 5 - 2
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": "121"}), np.array([[False, True], [True, False]]))
    mask = blob(37, 23, 4) | (np.arange(37 * 23).reshape(37, 23) % 97 == 0)
    assert np.array_equal(decode_rle(rle_encode(mask)), mask)
    with pytest.raises(ValueError, match="a 5x5 mask needs 25"):
        decode_rle({"size": [5, 5], "counts": "121"})
    square = rasterise_polygons([[[2, 3], [6, 3], [6, 5], [2, 5]]], 8, 9)
    expected = np.zeros((8, 9), bool)
    expected[3:6, 2:7] = True
    assert np.array_equal(square, expected)


def test_chexlocalize_one_row_per_positive_finding(tmp_path):
    truth = make_chexlocalize(tmp_path)
    records, problems = records_of("chexlocalize", tmp_path, seed=4)
    assert not problems
    assert sorted(records) == sorted(truth) and len(records) == 7
    for sample_id, record in records.items():
        assert np.array_equal(record.load_mask(), truth[sample_id]), sample_id
    lateral = records["patient64541_study1_view2_lateral_support_devices"]
    assert lateral.class_name == "Support Devices" and lateral.metadata["view"] == "lateral"
    frontal = records["patient64541_study1_view1_frontal_cardiomegaly"].metadata
    assert frontal == {"finding": "Cardiomegaly", "view": "frontal", "patient": "patient64541",
                       "positive_findings": "Cardiomegaly, Lung Opacity, Support Devices"}  # from the labels CSV
    polygon_row = records["patient64741_study1_view1_frontal_lung_lesion"].metadata
    assert polygon_row["positive_findings"] == "Lung Lesion, Pleural Effusion"  # from the masks
    by_patient: dict[str, set[str]] = {}
    for record in records.values():
        by_patient.setdefault(record.metadata["patient"], set()).add(record.split)
    assert all(len(splits) == 1 for splits in by_patient.values())


def test_chexlocalize_missing_image_and_unknown_finding(tmp_path):
    make_chexlocalize(tmp_path)
    (tmp_path / "CheXpert" / "test" / "patient64742" / "study2" / "view1_frontal.jpg").unlink()
    path = tmp_path / "CheXlocalize" / "gt_annotations_test.json"
    annotations = json.loads(path.read_text())
    annotations["patient64741_study1_view1_frontal"]["Broken Rib"] = [[[1, 1], [5, 1], [5, 5]]]
    path.write_text(json.dumps(annotations))
    records, problems = records_of("chexlocalize", tmp_path)
    assert len(records) == 6
    reasons = sorted(p.reason.split(" (")[0] for p in problems)
    assert reasons == [f"no image patient64742/study2/view1_frontal.jpg below {tmp_path}", "unknown finding"]
    assert any(p.source.endswith("patient64741_study1_view1_frontal/Broken Rib") for p in problems)


def test_mimic_reports_verbatim_and_problems(tmp_path):
    truth = make_mimic(tmp_path)
    save(tmp_path / "images" / "nope.jpg", photo(40, 40, 1)[..., 0])
    save(tmp_path / "masks" / "nope.png", grey(blob(40, 40, 1)))
    records, problems = records_of("mimic_cxr_lungs", tmp_path)
    assert sorted(records) == sorted(truth)
    assert [(p.reason, p.sample_id) for p in problems] == [("no report for this dicom_id", "nope")]
    assert records["d003"].metadata == {"report": "FINDINGS: report 3, lungs clear.\nIMPRESSION: none.",
                                        "subject_id": "s1", "study_id": "t3"}
    assert records["d003"].class_name == "lungs"
    assert np.array_equal(records["d003"].load_mask(), truth["d003"])
    assert records["d002"].split == records["d003"].split  # one patient (s1), one split


# --- prompts and the command line ----------------------------------------------------------------


def test_rows_have_what_each_prompt_family_needs(tmp_path):
    """prompts.generate renders every prompt type from one row of each family."""
    make_kvasir(tmp_path / "k")
    make_busi(tmp_path / "b")
    make_camus(tmp_path / "c")
    make_chexlocalize(tmp_path / "x")
    make_mimic(tmp_path / "m")
    for name, folder, count in (("kvasir_polyp", "k", 10), ("busi", "b", 7), ("camus", "c", 8),
                                ("chexlocalize", "x", 6), ("mimic_cxr_lungs", "m", 7)):
        family = READERS[name].family
        records, _ = records_of(name, tmp_path / folder)
        for record in list(records.values())[:count:3]:
            buffer = io.BytesIO()
            Image.fromarray(grey(record.load_mask())).save(buffer, format="PNG")
            row = {"mask": buffer.getvalue(), "image": record.load_image(), "class_name": record.class_name,
                   "metadata": record.metadata}
            prompts = row_prompts(family, row_attributes(family, row))
            assert prompts["p1"][0], (name, record.sample_id)
    camus = records_of("camus", tmp_path / "c")[0]["patient0001_2CH_ED_3"]
    buffer = io.BytesIO()
    Image.fromarray(grey(camus.load_mask())).save(buffer, format="PNG")
    row = {"mask": buffer.getvalue(), "image": camus.load_image(), "class_name": camus.class_name,
           "metadata": camus.metadata}
    assert row_prompts("camus", row_attributes("camus", row))["p6"] == [
        "Left atrium cavity in two-chamber view of the heart at end of the diastole cycle of a fifty-six-year-old"
        " female with good image quality.",
        "Left atrium cavity in two-chamber view in the cardiac ultrasound at end of the diastole cycle of a"
        " fifty-six-year-old female with good image quality."]


def ingest_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datasets.ingest", "raw", *args, "--quiet"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, make, rows", [
    ("kvasir_polyp", make_kvasir, {"train": 8, "val": 1, "test": 1}),
    ("busi", make_busi, {"train": 9, "val": 1, "test": 1}),
    ("camus", make_camus, {"train": 36, "val": 12, "test": 12}),
    ("chexlocalize", make_chexlocalize, None),
    ("mimic_cxr_lungs", make_mimic, {"train": 6, "val": 2, "test": 2}),  # two images per patient
])
def test_cli_ingests_each_family_into_shards(tmp_path, name, make, rows):
    truth = make(tmp_path / "download")
    result = ingest_cli(name, str(tmp_path / "download"), "--to", str(tmp_path / "shards"), "--seed", "7")
    assert result.returncode == 0, result.stderr
    store = ShardStore(str(tmp_path / "shards"), cache=False)
    manifest = store.manifest(name)
    family = READERS[name].family
    written = {split: manifest.rows(split) for split in ("train", "val", "test") if manifest.rows(split)}
    if rows is not None:
        assert written == rows
    assert sum(written.values()) == (3 * len(truth) if name == "camus" else len(truth))
    for split in written:
        for row in store.iter_rows(name, split):
            mask = np.asarray(Image.open(io.BytesIO(row["mask"]))) > 0
            if name == "camus":
                stem, label = row["sample_id"].rsplit("_", 1)
                assert np.array_equal(mask, truth[stem][1] == int(label))
            elif name == "kvasir_polyp":
                assert (mask != truth[row["sample_id"]]).mean() < 0.01
            else:
                assert np.array_equal(mask, truth[row["sample_id"]]), row["sample_id"]
            assert row["p1"] and row["p1"][0], row["sample_id"]
            assert row["dataset"] == name and row["split"] == split
    assert (tmp_path / "shards" / name / "quarantine.json").is_file()
    assert family in ("non_radiology", "busi", "camus", "chexlocalize", "mimic")


def test_cli_quarantines_bad_files_and_keeps_the_rest(tmp_path):
    make_camus(tmp_path / "download")
    write_metaimage(tmp_path / "download" / "training" / "patient0001" / "patient0001_4CH_ES_gt.mhd",
                    np.full((32, 28), 9, np.uint8))
    (tmp_path / "download" / "training" / "patient0002" / "patient0002_2CH_ED_gt.mhd").unlink()
    result = ingest_cli("camus", str(tmp_path / "download"), "--to", str(tmp_path / "shards"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "shards" / "camus" / "quarantine.json").read_text())
    reasons = [entry["reason"] for entry in report["quarantined"]]
    assert reasons.count("no label map patient0002_2CH_ED_gt next to this image") == 1
    assert sum("label map holds values [9]" in reason for reason in reasons) == 3
    manifest = ShardStore(str(tmp_path / "shards"), cache=False).manifest("camus")
    assert sum(manifest.rows(s) for s in ("train", "val", "test")) == 60 - 3 - 3
    missing = ingest_cli("camus", str(tmp_path / "nothing"), "--to", str(tmp_path / "shards"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = ingest_cli("camus", str(tmp_path / "empty"), "--to", str(tmp_path / "shards2"))
    assert empty.returncode == 2 and "no CAMUS frames" in empty.stderr
