"""Readers of the two medical image formats CAMUS ships: MetaImage (.mhd + .raw) and NIfTI-1
(.nii, .nii.gz), for single 2D frames. Small and dependency-free (numpy, gzip, zlib), because
SimpleITK and nibabel are heavy and only these few header fields matter here.

Both formats store x fastest, so the pixels reshape to (rows, columns) = (y, x) in C order: the
orientation SimpleITK's ``GetArrayFromImage`` gives, which is how the study converted them.
Every failure raises RowError naming the file and the field. The limits of ``prompts.images`` hold here
too: a file over the size limit is refused before it is read, a frame over the pixel limit before its
pixels are allocated, and compressed data are inflated only up to the bytes the header declares.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from datasets.ingest.records import RowError
from prompts.images import ImageLimitError, check_pixels, read_image_file

METAIMAGE_TYPES = {
    "MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
    "MET_INT": "i4", "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
               1280: "u8"}
NIFTI1_HEADER = 348
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib reads the gzip wrapper


def read_frame(path: Path) -> np.ndarray:
    """One 2D frame from a .mhd, .nii or .nii.gz file, as (rows, columns)."""
    name = path.name.lower()
    if name.endswith(".mhd"):
        return read_metaimage(path)
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    raise RowError(f"{path}: not a .mhd, .nii or .nii.gz file")


def _single_frame(path: Path, pixels: np.ndarray) -> np.ndarray:
    # Drop trailing length-1 axes (a 2D image saved as x*y*1); anything else is a sequence.
    while pixels.ndim > 2 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise RowError(f"{path} holds an array of shape {pixels.shape}; a single 2D frame was expected")
    return pixels


def _read_bytes(path: Path) -> bytes:
    try:
        return read_image_file(path)
    except ImageLimitError as error:
        raise RowError(str(error)) from None
    except OSError as error:
        raise RowError(f"cannot read {path}: {error.strerror or error}") from None


def _check_frame(path: Path, dims: list[int] | tuple[int, ...]) -> int:
    """The number of pixels of a frame of ``dims`` (x fastest); RowError if a size is not positive or
    the frame is over the pixel limit, before anything of its size is allocated."""
    if not dims or any(d < 1 for d in dims):
        raise RowError(f"{path}: dimensions {list(dims)}; positive sizes were expected")
    try:
        check_pixels(dims[0], math.prod(dims[1:]), str(path))
    except ImageLimitError as error:
        raise RowError(str(error)) from None
    return math.prod(dims)


def _inflate(path: Path, data: bytes, wbits: int, size: int) -> bytes:
    """The first ``size`` bytes of zlib (wbits 15) or gzip (wbits 31) data, and no more: data that
    inflate beyond what the header declares are refused (a decompression bomb) without inflating them."""
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, size + 1)
    except zlib.error as error:
        raise RowError(f"{path}: compressed data do not decompress ({error})") from None
    if len(out) > size:
        raise RowError(f"{path}: compressed data inflate to more than the {size} bytes its header declares;"
                       " a decompression bomb or a damaged file")
    return out


def read_metaimage(path: Path) -> np.ndarray:
    """A MetaImage: text header ``Key = Value`` lines ending with ElementDataFile (a file beside the
    header, or LOCAL for data right after it); zlib-compressed data when CompressedData is True."""
    raw = _read_bytes(path)
    header: dict[str, str] = {}
    offset = 0
    for line in raw.split(b"\n"):
        offset += len(line) + 1
        if not line.strip():
            continue
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            raise RowError(f"{path}: header line {line[:60]!r} is not 'Key = Value'")
        header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        raise RowError(f"{path}: header has no ElementDataFile")
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        dtype = np.dtype(METAIMAGE_TYPES[header["ElementType"]])
    except KeyError as error:
        raise RowError(f"{path}: header field {error.args[0]} is missing or unknown"
                       f" (ElementType one of {', '.join(METAIMAGE_TYPES)})") from None
    except ValueError:
        raise RowError(f"{path}: DimSize {header['DimSize']!r} is not a list of integers") from None
    count = _check_frame(path, dims)
    if int(header.get("ElementNumberOfChannels", "1")) != 1:
        raise RowError(f"{path}: {header['ElementNumberOfChannels']} channels; one was expected")
    big_endian = any(header.get(k, "False").lower() == "true"
                     for k in ("ElementByteOrderMSB", "BinaryDataByteOrderMSB"))
    dtype = dtype.newbyteorder(">" if big_endian else "<")
    data_file = header["ElementDataFile"]
    if data_file == "LOCAL":
        data = raw[offset:]
    else:
        data_path = path.parent / data_file
        if not data_path.is_file():
            raise RowError(f"{path}: its data file {data_path} does not exist")
        data = _read_bytes(data_path)
    skip = int(header.get("HeaderSize", "0"))
    if not -1 <= skip < 2**31:
        raise RowError(f"{path}: HeaderSize {skip}; -1 or a byte count was expected")
    if header.get("CompressedData", "False").lower() == "true":
        data = _inflate(path, data, zlib.MAX_WBITS, max(skip, 0) + count * dtype.itemsize)
    if skip < 0:  # -1: the data are the last bytes of the file
        skip = len(data) - count * dtype.itemsize
    if len(data) - skip < count * dtype.itemsize:
        raise RowError(f"{path}: DimSize {header['DimSize']} needs {count * dtype.itemsize} bytes of"
                       f" {header['ElementType']}, the data hold {len(data) - skip}")
    pixels = np.frombuffer(data, dtype, count, skip).reshape(dims[::-1])
    return _single_frame(path, pixels.astype(dtype.newbyteorder("=")))


def read_nifti(path: Path) -> np.ndarray:
    """A NIfTI-1 single file (.nii, or gzipped .nii.gz): 348-byte header, dim[], datatype,
    vox_offset, scl_slope/scl_inter; magic ``n+1``."""
    data = _read_bytes(path)
    gzipped = path.name.lower().endswith(".gz")
    if gzipped:  # the header first: it says how many bytes the whole file may inflate to
        try:
            data, compressed = zlib.decompressobj(GZIP_WBITS).decompress(data, NIFTI1_HEADER), data
        except zlib.error as error:
            raise RowError(f"{path}: not a valid gzip file ({error})") from None
    if len(data) < NIFTI1_HEADER:
        raise RowError(f"{path}: {len(data)} bytes, shorter than a NIfTI-1 header ({NIFTI1_HEADER})")
    for endian in "<>":
        if struct.unpack(f"{endian}i", data[:4])[0] == NIFTI1_HEADER:
            break
    else:
        raise RowError(f"{path}: sizeof_hdr is not {NIFTI1_HEADER}; not a NIfTI-1 file (NIfTI-2 is not read)")
    if data[344:347] != b"n+1":
        raise RowError(f"{path}: magic {data[344:348]!r}; a single-file NIfTI-1 ('n+1') was expected")
    dim = struct.unpack(f"{endian}8h", data[40:56])
    datatype = struct.unpack(f"{endian}h", data[70:72])[0]
    vox_offset, slope, intercept = struct.unpack(f"{endian}3f", data[108:120])
    if not 1 <= dim[0] <= 7:
        raise RowError(f"{path}: dim[0] is {dim[0]}; 1 to 7 dimensions were expected")
    if datatype not in NIFTI_TYPES:
        raise RowError(f"{path}: datatype {datatype} is not read (known: {sorted(NIFTI_TYPES)})")
    shape = dim[1:1 + dim[0]]
    dtype = np.dtype(NIFTI_TYPES[datatype]).newbyteorder(endian)
    if not NIFTI1_HEADER <= vox_offset < 2**31:
        raise RowError(f"{path}: vox_offset {vox_offset}; at least {NIFTI1_HEADER} was expected")
    count, start = _check_frame(path, shape), int(vox_offset)
    if gzipped:
        data = _inflate(path, compressed, GZIP_WBITS, start + count * dtype.itemsize)
    if len(data) < start + count * dtype.itemsize:
        raise RowError(f"{path}: dims {list(shape)} need {count * dtype.itemsize} bytes after offset {start},"
                       f" the file holds {len(data) - start}")
    pixels = np.frombuffer(data, dtype, count, start).reshape(shape[::-1]).astype(dtype.newbyteorder("="))
    if slope not in (0.0, 1.0) or intercept != 0.0:
        pixels = pixels * slope + intercept
    return _single_frame(path, pixels)
