"""Request bodies -> images, in memory only (nothing is ever spooled to disk), with every refusal a
`RequestError` carrying its HTTP status.

Three body forms: multipart/form-data (one or more file parts, plus optional fields such as `top_k`),
JSON {"images": [base64, ...], ...}, or the raw bytes of one image (image/*, application/octet-stream).
Decoding runs in the server's thread pool; it reads the header first and refuses an image whose pixel
count exceeds the limit before a single pixel is decoded (a decompression bomb).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings

from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import MultipartParser, parse_options_header

from resnetkit._helpers import to_mode


class RequestError(Exception):
    """A refused request: an HTTP status, one line saying what was wrong, and optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def parse_body(body: bytes, content_type: str, *, max_images: int) -> tuple[list[tuple[str, bytes]], dict]:
    """(images as [(name, bytes)], the other fields as {name: str or value}) from a request body."""
    kind, params = parse_options_header(content_type or "")
    kind = kind.decode("latin-1").lower()
    if kind == "multipart/form-data":
        images, fields = _multipart(body, params.get(b"boundary"))
    elif kind == "application/json":
        images, fields = _json(body)
    elif kind.startswith("image/") or kind in ("application/octet-stream", ""):
        images, fields = [("<body>", body)], {}
    else:
        raise RequestError(415, f"content type {kind!r}: send multipart/form-data (file fields), application/json "
                                "({\"images\": [base64, ...]}) or the image bytes (image/*)")
    if not images:
        raise RequestError(400, "no image in the request: send at least one file field (multipart) or one "
                                "base64 string in \"images\" (JSON)")
    if len(images) > max_images:
        raise RequestError(413, f"{len(images)} images in one request; the limit is {max_images} (--max-images): "
                                "split the request")
    return images, fields


def _multipart(body: bytes, boundary: bytes | None) -> tuple[list[tuple[str, bytes]], dict]:
    if not boundary:
        raise RequestError(400, "multipart/form-data without a boundary in its Content-Type")
    parts: list[dict] = []
    header: dict[str, bytearray] = {}

    def begin():
        parts.append({"headers": {}, "data": bytearray()})

    def header_field(data, start, end):
        header.setdefault("field", bytearray()).extend(data[start:end])

    def header_value(data, start, end):
        header.setdefault("value", bytearray()).extend(data[start:end])

    def header_end():
        parts[-1]["headers"][bytes(header.pop("field", b"")).lower()] = bytes(header.pop("value", b""))

    def part_data(data, start, end):
        parts[-1]["data"].extend(data[start:end])

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_header_field": header_field,
                                        "on_header_value": header_value, "on_header_end": header_end,
                                        "on_part_data": part_data})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as e:  # noqa: BLE001  (python-multipart raises several error types for a malformed body)
        raise RequestError(400, f"malformed multipart body ({e})") from None
    images, fields = [], {}
    for p in parts:
        _, disp = parse_options_header(p["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disp:
            images.append((disp[b"filename"].decode("utf-8", "replace") or name, bytes(p["data"])))
        else:
            fields[name] = bytes(p["data"]).decode("utf-8", "replace")
    return images, fields


def _json(body: bytes) -> tuple[list[tuple[str, bytes]], dict]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise RequestError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise RequestError(400, "a JSON body must be an object with \"images\": [base64 strings]")
    images = []
    for i, s in enumerate(doc["images"]):
        if not isinstance(s, str):
            raise RequestError(400, f"images[{i}] is not a base64 string")
        try:
            images.append((f"images[{i}]", base64.b64decode(s.split(",", 1)[-1] if s.startswith("data:") else s,
                                                            validate=True)))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"images[{i}] is not valid base64") from None
    return images, {k: v for k, v in doc.items() if k != "images"}


def decode_image(name: str, data: bytes, mode: str, max_pixels: int) -> Image.Image:
    """Image bytes -> a fully decoded PIL image in `mode` ('RGB' or 'L'), or a RequestError (400)."""
    if not data:
        raise RequestError(400, f"{name}: zero bytes; send the image file's contents")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # reads the header only
            pixels = im.width * im.height * getattr(im, "n_frames", 1)
            if pixels > max_pixels:  # before decoding: a small PNG can claim 10^10 pixels of zeros
                raise RequestError(400, f"{name}: refused as a decompression bomb: {im.width}x{im.height} is "
                                        f"{pixels:,} pixels, over the limit of {max_pixels:,} (--max-pixels)")
            im.load()
            return to_mode(im, mode).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RequestError(400, f"{name}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise RequestError(400, f"{name}: not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise RequestError(400, f"{name}: truncated or corrupt image ({e})") from None
