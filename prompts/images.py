"""Opening untrusted images within limits: the one place every floor (prompts, datasets, trainables)
opens an encoded image, so a decompression bomb or a huge file is refused by name everywhere.

A PNG of a few kilobytes can claim 13,000 x 13,000 pixels: decoded, it costs 169 MB per channel in
every thread that decodes it. Pillow warns only above ``Image.MAX_IMAGE_PIXELS`` (89 MP) and refuses
only above twice that, raising an error nothing here expected. Our limits come first:

- pixels: ``MAX_PIXELS`` (64 million, ``$VLSM_MAX_IMAGE_PIXELS``). The study's largest images (ISIC's
  dermoscopy photos, up to about 30 MP) fit twice over; a decode at the limit costs at most 192 MB
  (RGB) per thread, which a decoding pool of a few threads can afford.
- file size: ``MAX_BYTES`` (256 MiB, ``$VLSM_MAX_IMAGE_BYTES``): an uncompressed RGBA image at the
  pixel limit. A larger file is refused before it is read into memory.

Both are read from the environment at each call, so a legitimate larger dataset only needs the
variable set (for ingest, and on every node that decodes it).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image

MAX_PIXELS_ENV = "VLSM_MAX_IMAGE_PIXELS"
MAX_BYTES_ENV = "VLSM_MAX_IMAGE_BYTES"
MAX_PIXELS = 64_000_000
MAX_BYTES = 4 * MAX_PIXELS  # an uncompressed RGBA image at the pixel limit


class ImageLimitError(ValueError):
    """An image over a limit. A ValueError, like Pillow's other refusals of a bad file, so every
    caller that turns a bad image into a row error does so for this one too."""


def _limit(env: str, default: int) -> int:
    text = os.environ.get(env)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ImageLimitError(f"${env}={text!r} is not a whole number") from None


def check_file_size(size: int, what: str) -> None:
    limit = _limit(MAX_BYTES_ENV, MAX_BYTES)
    if size > limit:
        raise ImageLimitError(f"{what}: {size} bytes, over the limit of {limit} bytes ({MAX_BYTES_ENV}); if "
                              f"the image is legitimate, set {MAX_BYTES_ENV}={size} or more")


def read_image_file(path: Path) -> bytes:
    """A file's bytes, refused (ImageLimitError) before reading when it is over the size limit."""
    check_file_size(Path(path).stat().st_size, str(path))
    return Path(path).read_bytes()


def open_image(source: bytes | Path, what: str) -> Image.Image:
    """The image (header read, pixels not yet decoded), refused with ImageLimitError naming ``what``
    when its file or its pixel count is over the limit. Undecodable data raises what Pillow raises
    (OSError, ValueError, SyntaxError)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        check_file_size(len(source), what)
        stream = io.BytesIO(source)
    else:
        check_file_size(Path(source).stat().st_size, what)
        stream = source
    limit = _limit(MAX_PIXELS_ENV, MAX_PIXELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides, below
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError as e:  # over twice Pillow's own limit (and ours, by default)
            raise ImageLimitError(_over_pixels(what, limit, f"Pillow: {e}",
                                               "and Pillow's Image.MAX_IMAGE_PIXELS above its size")) from None
    width, height = image.size
    if width * height > limit:
        image.close()
        raise ImageLimitError(_over_pixels(what, limit, f"{width}x{height} pixels, {width * height / 1e6:.0f} MP",
                                           f"to {width * height} or more"))
    return image


def _over_pixels(what: str, limit: int, size: str, raise_how: str) -> str:
    return (f"{what}: {size}, over the limit of {limit / 1e6:g} megapixels ({MAX_PIXELS_ENV}): a decompression "
            f"bomb, or an image larger than any the study used; if it is legitimate, set {MAX_PIXELS_ENV} "
            f"{raise_how}")
