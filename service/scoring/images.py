"""Scoring uploaded images: plain functions from a served image model and named files to the
answer. Routes call these; tests call them directly."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from service.model import ServedModel
from service.scoring.records import Scored
from service.scoring.render import render_results
from training.detector.image_files import image_file_columns
from training.errors import DataError, TooLargeError
from training.preprocessing.images import image_size, to_png

MAX_IMAGE_PIXELS = 4096 * 4096
MAX_REQUEST_PIXELS = 2**28


# A request of at most this many pixels (its images' as stored, and as many of the model's
# input) is scored on the event loop: one small image's scoring is a fraction of a millisecond,
# less than handing it to a worker thread and back.
INLINE_PIXELS = 4096


def is_small(model: ServedModel, files: list[tuple[str, bytes]], maps: bool = False) -> bool:
    """Whether an image request is small enough to score inline (:data:`INLINE_PIXELS`,
    read from the files' headers), with no networks to load first. A file whose header does
    not read is not small: the worker thread's path reports it."""
    if not is_image_model(model) or (maps and not model.networks_loaded):
        return False
    if len(files) * int(np.prod(model.scorer.preprocessor_.shape)) > INLINE_PIXELS:
        return False
    try:
        return sum(w * h for w, h in (image_size(d, n) for n, d in files)) <= INLINE_PIXELS
    except (DataError, TooLargeError):
        return False


def is_image_model(model: ServedModel) -> bool:
    """Whether the model scores images (else records)."""
    return model.data_kind == "images"


def require_records(model: ServedModel) -> None:
    """Refuse a record route for an image model, naming the routes to use."""
    if is_image_model(model):
        raise DataError(f"model '{model.name}' scores images: send them as multipart files to "
                         f"POST /v1/models/{model.name}/score-images, or base64 in the column "
                         f"'image' to POST /v1/models/{model.name}/invocations")


def map_png(anomaly_map: np.ndarray) -> tuple[str, float]:
    """An (H, W) map as a base64 8-bit grayscale PNG scaled to its maximum, and that maximum."""
    top = float(anomaly_map.max()) if anomaly_map.size else 0.0
    scaled = anomaly_map / top if top > 0 else np.zeros_like(anomaly_map)
    return base64.b64encode(to_png(scaled)).decode("ascii"), top


def check_pixels(files: list[tuple[str, bytes]], max_image_pixels: int,
                 max_request_pixels: int) -> None:
    """Refuse, from the headers alone, an image or a request that would cost too much to
    decode (413): a small compressed file can hold a huge image."""
    total = 0
    for name, data in files:
        width, height = image_size(data, name)
        pixels = width * height
        if pixels > max_image_pixels:
            raise TooLargeError(f"{name}: {width}x{height} = {pixels} pixels; at most "
                                f"{max_image_pixels} per image (ANOMALY_MAX_IMAGE_PIXELS)")
        total += pixels
        if total > max_request_pixels:
            raise TooLargeError(f"more than {max_request_pixels} pixels in one request "
                                "(ANOMALY_MAX_REQUEST_PIXELS); send fewer images per request")


def image_columns(model: ServedModel, files: list[tuple[str, bytes]], maps: bool = False,
                  max_images: int = 10_000, max_image_pixels: int = MAX_IMAGE_PIXELS,
                  max_request_pixels: int = MAX_REQUEST_PIXELS
                  ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The score columns of named image files (and their anomaly maps), after the request's
    limits: at most ``max_images`` images and ``max_image_pixels`` / ``max_request_pixels``
    pixels, read from the files' headers before anything is decoded (413 beyond). An
    undecodable file, a wrong format or a wrong channel count raises a 422 naming the file."""
    if not is_image_model(model):
        raise DataError(f"model '{model.name}' scores records, not images: POST "
                         f"/v1/models/{model.name}/score")
    if len(files) > max_images:
        raise TooLargeError(f"{len(files)} images in one request; at most {max_images}")
    check_pixels(files, max_image_pixels, max_request_pixels)
    # the maps (and many images of some kinds) take the networks; else the graph, if any
    return image_file_columns(model.scorer_for(len(files), maps), files, maps)


def score_images(model: ServedModel, files: list[tuple[str, bytes]], maps: bool = False,
                 max_images: int = 10_000, max_image_pixels: int = MAX_IMAGE_PIXELS,
                 max_request_pixels: int = MAX_REQUEST_PIXELS) -> Scored:
    """Score uploaded image files with an image model.

    Args:
        files: ``(file name, bytes)`` per upload, in order.
        maps: add each image's anomaly map (``anomaly_map_png``, base64 PNG, white = the map's
            maximum ``anomaly_map_max``; 1 is the average error of a normal pixel).
        max_images, max_image_pixels, max_request_pixels: the request's limits
            (:func:`image_columns`).

    Returns:
        the answer (see ``schemas.ImageScoreResponse``).
    """
    if not files and is_image_model(model):
        raise DataError("no images: send one or more files in the multipart field 'files'")
    scored, anomaly_maps = image_columns(model, files, maps, max_images, max_image_pixels,
                                         max_request_pixels)
    cols: dict[str, Any] = {"file": [name for name, _ in files], **scored}
    if anomaly_maps is not None:
        pngs = [map_png(m) for m in anomaly_maps]
        cols["anomaly_map_png"] = [png for png, _ in pngs]
        cols["anomaly_map_max"] = np.asarray([top for _, top in pngs])
    flagged = int(cols["is_anomaly"].sum())
    body = {"model": model.metadata(), "n_images": len(files), "n_anomalies": flagged,
            "image_shape": list(model.scorer.preprocessor_.shape)}
    return Scored(body=body, primary=cols["score"], flagged=flagged,
                  rendered_results=render_results(cols))
