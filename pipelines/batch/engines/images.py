"""Batch scoring of image files: a folder or glob of images -> one table row per image.

The job is one input (the folder or glob) and one output table (.parquet or .csv): ``path``,
every score, p-value and ``is_anomaly``, model name and version. With ``--maps-dir`` each
image's anomaly map is also written as an 8-bit PNG (white = :data:`MAP_WHITE` times the average
error of a normal pixel), mirroring the input's sub-folders.

Images are decoded :data:`IMAGE_CHUNK` at a time. With ``decode_workers`` > 0 the next chunk is
decoded by that many threads while the current one is scored (Pillow releases the GIL while
it decodes and resizes), so at most two chunks are held at once; 0 decodes in the scoring
thread. Either way the output rows, and which unreadable file a job fails on, are the same.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.batch.io import AtomicTableWriter, Reject, RejectsWriter
from pipelines.batch.model import MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN, BatchModel, result_arrays
from pipelines.batch.options import ScoreOptions
from pipelines.batch.plan import _prepare_output, is_image_input, writable_folder
from pipelines.batch.results import InputResult, ScoreSample
from training.data.images import image_files
from training.errors import DataError
from training.preprocessing.images import IMAGE_SUFFIXES, to_png

log = logging.getLogger(__name__)

IMAGE_CHUNK = 256  # images decoded and scored at a time
DECODE_TASK = 16  # images per decoding task of a worker thread
MAP_WHITE = 8.0  # map value drawn white in map PNGs (1 = a normal pixel's average error)


@dataclass
class ImageJob:
    """One image job: its files, where they are relative to, its output, and how many
    threads decode the next chunk while one is scored (0: none)."""

    src: Path
    out: Path
    files: list[Path]
    root: Path
    maps_dir: Path | None
    schema: pa.Schema
    decode_workers: int = 0


def prepare(model: BatchModel, src: Path, out: Path, opts: ScoreOptions) -> ImageJob:
    """List the images ``src`` names and check the output; nothing is decoded yet."""
    if not is_image_input(str(src)):
        raise DataError(f"{src}: model {model.name} scores images; give a folder of images or "
                        "a glob of image files ('shots/*.png')")
    if src.is_dir():
        files, root = image_files(src), src
    else:
        files = sorted(Path(f) for f in glob.glob(str(src), recursive=True) if Path(f).is_file())
        root = Path(os.path.commonpath([str(f.parent) for f in files])) if files else src.parent
    if not files:
        raise DataError(f"{src}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    out = _prepare_output(out)
    maps_dir = Path(opts.maps_dir) if opts.maps_dir else None
    if maps_dir is not None:
        writable_folder(maps_dir, f"{maps_dir}: cannot write anomaly maps there",
                        "; choose a writable --maps-dir")
    pre = model.detector.preprocessor_
    probe = model.detector.score(np.zeros((1, *pre.shape), dtype=np.float32), source="probe")
    fields = [pa.field("path", pa.string())]
    fields += list(pa.Table.from_pandas(probe, preserve_index=False).schema)
    fields += [pa.field(MODEL_NAME_COLUMN, pa.string()), pa.field(MODEL_VERSION_COLUMN,
                                                                    pa.string())]
    return ImageJob(src, out, files, root, maps_dir, pa.schema(fields), opts.decode_workers)


def _decode(pre, files: list[Path]) -> list[np.ndarray | DataError]:
    """Each file's (C, H, W) pixels, or the DataError that names why it cannot be read."""
    out: list[np.ndarray | DataError] = []
    for f in files:
        try:
            out.append(pre.image(f, str(f)))
        except DataError as e:
            out.append(e)
    return out


def decoded_chunks(pre, files: list[Path], workers: int
                   ) -> Iterator[tuple[int, list[np.ndarray | DataError]]]:
    """``(first index, decoded images or errors)`` per chunk of :data:`IMAGE_CHUNK` files, in
    order; with ``workers`` > 0 the next chunk decodes in threads while this one is used."""
    starts = range(0, len(files), IMAGE_CHUNK)
    if workers <= 0:
        for i in starts:
            yield i, _decode(pre, files[i : i + IMAGE_CHUNK])
        return

    def submit(pool: ThreadPoolExecutor, i: int) -> list[Future]:
        chunk = files[i : i + IMAGE_CHUNK]
        return [pool.submit(_decode, pre, chunk[k : k + DECODE_TASK])
                for k in range(0, len(chunk), DECODE_TASK)]

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending = submit(pool, 0) if files else []
        for i in starts:
            current = pending
            pending = submit(pool, i + IMAGE_CHUNK) if i + IMAGE_CHUNK < len(files) else []
            try:
                yield i, [image for task in current for image in task.result()]
            except BaseException:
                for task in current + pending:
                    task.cancel()
                raise


def score_images(model: BatchModel, job: ImageJob, on_error: str, sample: ScoreSample
                 ) -> InputResult:
    """Score every image of the job into its output; all or nothing.

    A file that cannot be decoded (or has the wrong channel count) fails the job naming it,
    or with ``on_error="skip"`` is counted, logged and listed in ``<output>.rejects.csv``.
    """
    res = InputResult(str(job.src), str(job.out))
    start = time.perf_counter()
    rejects = RejectsWriter(job.out)
    pre = model.detector.preprocessor_
    try:
        with (AtomicTableWriter(job.out, job.schema) as writer,
              closing(decoded_chunks(pre, job.files, job.decode_workers)) as chunks):
            for i, images in chunks:
                chunk = job.files[i : i + IMAGE_CHUNK]
                good, bad = [], []
                for k, (f, image) in enumerate(zip(chunk, images)):
                    if not isinstance(image, DataError):
                        good.append((str(f), image))
                        continue
                    if on_error == "fail":
                        raise DataError(f"{image}; fix or remove the file, or rerun with "
                                        "--on-error skip") from None
                    bad.append(Reject(record=i + k, reason=str(image), row=str(f)))
                if bad:
                    rejects.write(bad)
                    log.warning("%s: skipped %d unreadable image(s), first: %s", job.src,
                                len(bad), bad[0].reason)
                if good:
                    writer.write(_scored(model, job, good, sample, res))
                del images, good  # the next chunk decodes meanwhile: hold two, not three
            rejects.commit()
    except BaseException:
        rejects.abort()
        raise
    res.rejected = rejects.count
    res.rejects_file = str(rejects.path) if rejects.count else None
    res.seconds = time.perf_counter() - start
    log.info("%s -> %s: %d images in %.1fs, %d anomalies", job.src, job.out, res.rows,
             res.seconds, res.anomalies)
    return res


def _scored(model: BatchModel, job: ImageJob, named: list[tuple[str, np.ndarray]], sample,
            res) -> pa.RecordBatch:
    batch = np.stack([image for _, image in named])  # decoded and checked by score_images
    frame = model.detector.score(batch, source=str(job.src))
    maps = model.detector.anomaly_maps(batch) if job.maps_dir is not None else None
    n = len(frame)
    arrays = [pa.array([name for name, _ in named], type=pa.string())]
    arrays += result_arrays(model, list(job.schema)[1:], frame)
    if maps is not None:
        for (name, _), m in zip(named, maps):
            _write_map(job, Path(name), m)
    res.rows += n
    res.anomalies += int(frame["is_anomaly"].sum())
    sample.add(frame["score"].to_numpy())
    return pa.RecordBatch.from_arrays(arrays, schema=job.schema)


def _write_map(job: ImageJob, path: Path, anomaly_map: np.ndarray) -> None:
    """``<maps_dir>/<path relative to the input>.map.png``, written under a temporary name."""
    try:
        rel = path.relative_to(job.root)
    except ValueError:
        rel = Path(path.name)
    target = job.maps_dir / rel.with_suffix(".map.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_bytes(to_png(np.clip(anomaly_map / MAP_WHITE, 0.0, 1.0)))
    os.replace(tmp, target)
