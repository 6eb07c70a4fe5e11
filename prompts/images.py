"""Opening untrusted images within limits: the one place every floor (prompts, datasets, trainables)
opens an encoded image, so a decompression bomb or a huge file is refused by name everywhere.

A PNG of a few kilobytes can claim 13,000 x 13,000 pixels: decoded, it costs 169 MB per channel in
every thread that decodes it. Our limits replace Pillow's own (``Image.MAX_IMAGE_PIXELS``, which warns
above 89 MP and refuses above twice that whatever our limit says), so this module turns Pillow's off:

- pixels: ``MAX_PIXELS`` (64 million, ``$VLSM_MAX_IMAGE_PIXELS``). The study's largest images (ISIC's
  dermoscopy photos, up to about 30 MP) fit twice over; a decode at the limit costs at most 192 MB
  (RGB) per thread, which a decoding pool of a few threads can afford.
- file size: ``MAX_BYTES`` (256 MiB, ``$VLSM_MAX_IMAGE_BYTES``): an uncompressed RGBA image at the
  pixel limit. A larger file is refused before it is read into memory.

Both are read from the environment at each call, so a legitimate larger dataset only needs the
variable set (for ingest, and on every node that decodes it). Readers that allocate pixels from sizes
they parse themselves (annotation JSON, volume headers) call ``check_pixels`` before allocating.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

MAX_PIXELS_ENV = "VLSM_MAX_IMAGE_PIXELS"
MAX_BYTES_ENV = "VLSM_MAX_IMAGE_BYTES"
MAX_PIXELS = 64_000_000
MAX_BYTES = 4 * MAX_PIXELS  # an uncompressed RGBA image at the pixel limit

# Our per-call limit (check_pixels, read from the environment at each call) replaces Pillow's global
# one: left on, Pillow refuses anything above twice its 89 MP inside Image.open, whatever
# $VLSM_MAX_IMAGE_PIXELS says, and warns through the process-wide warnings filters, which threads
# (decoding pools) cannot safely change. Set once, here, where every floor opens its images.
Image.MAX_IMAGE_PIXELS = None


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


def check_pixels(width: int, height: int, what: str) -> None:
    """Refuse (ImageLimitError naming ``what``) an image of width x height pixels over the pixel limit,
    before anything of that size is allocated."""
    limit = _limit(MAX_PIXELS_ENV, MAX_PIXELS)
    pixels = width * height
    if pixels > limit:
        raise ImageLimitError(
            f"{what}: {width}x{height} pixels, {pixels / 1e6:.0f} MP, over the limit of {limit / 1e6:g} megapixels "
            f"({MAX_PIXELS_ENV}): a decompression bomb, or an image larger than any the study used; if it is "
            f"legitimate, set {MAX_PIXELS_ENV} to {pixels} or more")


def open_image(source: bytes | str | Path, what: str) -> Image.Image:
    """The image (header read, pixels not yet decoded), refused with ImageLimitError naming ``what``
    when its file or its pixel count is over the limit. Undecodable data raises what Pillow raises
    (OSError, ValueError, SyntaxError)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        check_file_size(len(source), what)
        stream = io.BytesIO(source)
    else:
        check_file_size(Path(source).stat().st_size, what)
        stream = source
    image = Image.open(stream)
    try:
        check_pixels(image.width, image.height, what)
    except ImageLimitError:
        image.close()
        raise
    return image
