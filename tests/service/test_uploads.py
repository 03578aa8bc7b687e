"""Uploads that would cost the service far more than their size: refused from their headers,
quickly, while ``/healthz`` keeps answering. A real uvicorn process serves two models saved in
folders (a table model and an image model), through the real app and model store."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.servers import free_port, stop_process, wait_http
from tests.training.image_data import normal_images
from training.detector import Detector
from training.detector.image import ImageDetector

_SERVER = """
import sys
from pathlib import Path

import uvicorn

from pipelines.registry.download import ModelSource
from service.app import create_app
from service.model import ServedModel
from service.settings import load_settings
from service.store import ModelStore

port, cache, *models = sys.argv[1:]
pairs = [m.split("=", 1) for m in models]
settings = load_settings(models=[f"models:/{n}@champion" for n, _ in pairs], port=int(port),
                         cache_dir=cache)
store = ModelStore(settings, f"sqlite:///{cache}/unused.db")
for name, path in pairs:
    source = ModelSource(uri=f"models:/{name}@champion", name=name, version="1",
                         alias="champion", run_id="r1")
    store.slots[name].current = ServedModel.load(source, Path(path), settings.max_records)
uvicorn.run(create_app(settings, store), host="127.0.0.1", port=int(port), log_level="warning")
"""


@pytest.fixture(scope="module")
def models(table, tmp_path_factory):
    """A table model and an image model saved in folders (quick fits)."""
    folder = tmp_path_factory.mktemp("uploads")
    det = Detector(kind="ae", max_epochs=2, seed=0).fit(table.iloc[:180])
    tab = det.calibrate(table.iloc[180:]).save(folder / "table")
    images = normal_images(40)
    img = ImageDetector(kind="conv_ae", max_epochs=2, seed=0).fit(images[:30])
    pic = img.calibrate(images[30:]).save(folder / "image")
    return folder, tab, pic


@contextmanager
def _serving(models, table, env: dict[str, str] | None = None):
    folder, tab, pic = models
    port = free_port()
    log = open(folder / f"server-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(port), str(folder / "cache"),
                             f"t={tab}", f"img={pic}"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc, timeout=120)
        with httpx.Client(base_url=url, timeout=60) as c:  # first requests import lazily
            small = io.BytesIO()
            Image.new("L", (16, 16)).save(small, format="PNG")
            assert c.post("/v1/models/t/score-file", files={"file": (
                "ok.csv", table.head(3).to_csv(index=False), "text/csv")}).status_code == 200
            assert c.post("/v1/models/img/score-images", files=[(
                "files", ("ok.png", small.getvalue(), "image/png"))]).status_code == 200
        yield url, proc
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def server(models, table):
    with _serving(models, table) as running:
        yield running


def _peak_rss_kb(proc) -> int:
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _while_polling_healthz(url: str, request) -> tuple[httpx.Response, float, list[float]]:
    """Send ``request(client)`` while another thread times ``/healthz`` every 20 ms."""
    latencies: list[float] = []
    done = threading.Event()

    def poll():
        with httpx.Client(base_url=url, timeout=30) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.1)
        t0 = time.perf_counter()
        with httpx.Client(base_url=url, timeout=300) as c:
            answer = request(c)
        seconds = time.perf_counter() - t0
    finally:
        done.set()
        poller.join()
    return answer, seconds, latencies


def test_a_million_column_header_is_refused_at_once_and_healthz_answers(server):
    url, proc = server
    header = ",".join(f"c{i}" for i in range(1_000_000)).encode() + b"\n"
    assert 7.5e6 < len(header) < 8e6
    answer, seconds, latencies = _while_polling_healthz(url, lambda c: c.post(
        "/v1/models/t/score-file", files={"file": ("wide.csv", header + b"1" * 10, "text/csv")}))
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["type"] == "too_large" and "header is longer than 1048576 bytes" in \
        error["message"]
    print(f"1M-column header: {answer.status_code} in {seconds:.2f}s; /healthz "
          f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} polls")
    assert seconds < 10  # before: 164 s
    assert max(latencies) < 0.1, latencies


def test_too_many_columns_in_a_short_header_or_a_parquet_schema(server, table):
    url, _ = server
    names = ",".join([*table.columns, *(f"x{i}" for i in range(1_001))])
    with httpx.Client(base_url=url, timeout=60) as c:
        csv = c.post("/v1/models/t/score-file",
                     files={"file": ("w.csv", f"{names}\n".encode(), "text/csv")})
        assert csv.status_code == 413, csv.text
        assert csv.json()["error"]["message"] == (
            f"w.csv: {len(table.columns) + 1001} columns; at most {len(table.columns) + 1000} "
            f"(the model's {len(table.columns)} and 1000 more, ANOMALY_MAX_FILE_COLUMNS)")
        # a schema of 30,000 columns: its footer alone is refused, before it is parsed
        wide = pa.table({f"x{i}": pa.array([0.0]) for i in range(30_000)})
        buf = io.BytesIO()
        pq.write_table(wide, buf)
        parquet = c.post("/v1/models/t/score-file",
                         files={"file": ("w.parquet", buf.getvalue(), "application/x-parquet")})
        assert parquet.status_code == 413, parquet.text
        assert "a Parquet schema of" in parquet.json()["error"]["message"]
        # not Parquet, though it ends like it: its footer length is garbage, not a large schema
        junk = c.post("/v1/models/t/score-file",
                      files={"file": ("j.parquet", b"PAR1junkPAR1", "application/x-parquet")})
        assert junk.status_code == 422, junk.text
        assert "not a Parquet file" in junk.json()["error"]["message"]


def test_a_column_named_like_an_output_is_left_out_with_keep(server, table, tmp_path):
    from service.client import AnomalyClient

    url, _ = server
    body = table.head(30).assign(score=1.0).to_csv(index=False)  # a column called 'score'
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/t/score-file", files={"file": ("s.csv", body, "text/csv")})
        assert r.status_code == 422 and r.json()["error"]["column"] == "score", r.text
        assert "keep=" in r.json()["error"]["message"]
        r = c.post("/v1/models/t/score-file", params={"keep": "b,a,b"},
                   files={"file": ("s.csv", body, "text/csv")})
        assert r.status_code == 200, r.text
        scored = pd.read_csv(io.BytesIO(r.content))
        assert list(scored.columns[:3]) == ["b", "a", "score"] and len(scored) == 30
        pd.testing.assert_series_equal(scored["a"], table.head(30)["a"].reset_index(drop=True),
                                       check_exact=False)
        r = c.post("/v1/models/t/score-file", params={"keep": "a,nope"},
                   files={"file": ("s.csv", body, "text/csv")})
        assert r.status_code == 422 and "keep column(s) ['nope'] not in the file" in r.text
    src = tmp_path / "s.csv"
    src.write_text(body)
    with AnomalyClient(url) as client:  # the Python client passes keep the same way
        scored = client.score_file(src, "t", keep=["c"])
        assert list(scored.columns[:2]) == ["c", "score"]


def test_duplicate_and_nested_columns_are_named(server, table):
    url, _ = server
    df = table.head(20)
    body = df.to_csv(index=False).replace("a,b,c", "a,b,a", 1)
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/t/score-file", files={"file": ("d.csv", body, "text/csv")})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["column"] == "a"
        assert "appears more than once in the header" in r.json()["error"]["message"]
        t = pa.Table.from_pandas(df, preserve_index=False)
        t = t.append_column("a", pa.array(df["a"].to_numpy()))
        buf = io.BytesIO()
        pq.write_table(t, buf)
        r = c.post("/v1/models/t/score-file", files={"file": ("d.parquet", buf.getvalue())})
        assert r.status_code == 422 and r.json()["error"]["column"] == "a", r.text
        nested = pa.Table.from_pandas(df, preserve_index=False)
        i = nested.schema.get_field_index("color")
        nested = nested.set_column(i, "color", pa.array([["red", "blue"]] * len(df)))
        buf = io.BytesIO()
        pq.write_table(nested, buf)
        r = c.post("/v1/models/t/score-file", files={"file": ("n.parquet", buf.getvalue())})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["column"] == "color"
        assert "has type list<element: string>" in r.json()["error"]["message"]
        latin1 = df.to_csv(index=False).replace("red", "r\xe9d", 1).encode("latin-1")
        r = c.post("/v1/models/t/score-file", files={"file": ("l.csv", latin1, "text/csv")})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["record"] is not None
        assert "not UTF-8 text (byte 0xe9)" in r.json()["error"]["message"]


def test_the_answer_file_name_keeps_no_folders(server, table):
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/t/score-file", files={"file": (
            "../../etc/passwd.csv", table.head(5).to_csv(index=False), "text/csv")})
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="passwd-scored.csv"'


def test_a_huge_image_in_a_small_file_is_refused_before_decoding(server):
    url, proc = server
    buf = io.BytesIO()
    Image.new("L", (7_900, 7_900)).save(buf, format="PNG")
    png = buf.getvalue()
    assert len(png) < 100_000
    before = _peak_rss_kb(proc)
    answer, seconds, latencies = _while_polling_healthz(url, lambda c: c.post(
        "/v1/models/img/score-images", files=[("files", ("big.png", png, "image/png"))]))
    grown = _peak_rss_kb(proc) - before
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["message"] == (
        "big.png: 7900x7900 = 62410000 pixels; at most 16777216 per image "
        "(ANOMALY_MAX_IMAGE_PIXELS)")
    print(f"7900x7900 PNG of {len(png)} bytes: {answer.status_code} in {seconds:.2f}s, peak "
          f"RSS +{grown / 1024:.0f} MiB; /healthz max {max(latencies) * 1000:.0f} ms")
    assert grown < 50 * 1024  # decoding it: +480 MB
    assert max(latencies) < 0.1, latencies


def test_too_many_pixels_in_one_request(server):
    url, _ = server
    buf = io.BytesIO()
    Image.new("L", (4_096, 4_096)).save(buf, format="PNG")
    files = [("files", (f"p{i}.png", buf.getvalue(), "image/png")) for i in range(17)]
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/img/score-images", files=files)
    assert r.status_code == 413, r.text
    assert "more than 268435456 pixels in one request" in r.json()["error"]["message"]


def test_an_undecodable_image_names_no_heap_address(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/img/score-images",
                   files=[("files", ("x.png", b"not a png at all", "image/png"))])
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert " at 0x" not in message and "BytesIO" not in message, message
    assert message == ("x.png: not a readable image (not an image format Pillow knows); use "
                       "PNG or JPEG")


def test_a_body_declared_as_other_than_json_is_refused(server, table):
    url, _ = server
    records = table.head(2).to_json(orient="records")
    body = f'{{"records": {records}}}'.encode()
    with httpx.Client(base_url=url, timeout=60) as c:
        for ctype, status in (("text/plain", 415), ("application/x-www-form-urlencoded", 415),
                              ("application/json; charset=utf-8", 200), (None, 200)):
            headers = {"content-type": ctype} if ctype else {}
            for route in ("score", "encode", "reconstruct"):
                r = c.post(f"/v1/models/t/{route}", content=body, headers=headers)
                assert r.status_code == status, (ctype, route, r.text)
        r = c.post("/v1/models/t/score", content=body, headers={"content-type": "text/plain"})
        assert r.json()["error"] == {
            "type": "unsupported_media_type",
            "message": "Content-Type text/plain: send the records as JSON with Content-Type: "
                       "application/json (files: score-file)"}


def test_a_request_past_its_timeout_is_a_504_and_leaves_nothing(models, table, tmp_path):
    """A file scored one row at a time takes seconds; the timeout answers at its deadline."""
    env = {"ANOMALY_REQUEST_TIMEOUT_S": "0.5", "ANOMALY_FILE_CHUNK_ROWS": "1",
           "TMPDIR": str(tmp_path)}
    body = pd.concat([table] * 2).to_csv(index=False)  # 480 chunks of one row
    with _serving(models, table, env) as (url, _):
        answer, seconds, latencies = _while_polling_healthz(url, lambda c: c.post(
            "/v1/models/t/score-file", files={"file": ("slow.csv", body, "text/csv")}))
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"] == {
            "type": "timeout", "message": "no answer within 0.5 seconds; send less per request "
            "or raise the limit (ANOMALY_REQUEST_TIMEOUT_S)"}
        assert seconds < 3 and max(latencies) < 0.1, (seconds, latencies)
        with httpx.Client(base_url=url, timeout=60) as c:  # quick requests still answer
            assert c.post("/v1/models/t/score-file", files={"file": (
                "ok.csv", table.head(3).to_csv(index=False), "text/csv")}).status_code == 200
            deadline = time.monotonic() + 60  # the abandoned work ends and cleans up
            while list(tmp_path.glob("scored-*")) and time.monotonic() < deadline:
                time.sleep(0.2)
        assert not list(tmp_path.glob("scored-*"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature and header chunk claiming ``width`` x ``height`` pixels, no pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                             0, 0, 0)) + chunk(b"IEND", b""))


def test_a_header_past_pillows_own_bomb_limit_is_a_413_naming_the_file(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/img/score-images",
                   files=[("files", ("bomb.png", _png_header(100_000, 100_000), "image/png"))])
    assert r.status_code == 413, r.text
    assert r.json()["error"]["message"].startswith("bomb.png: its header gives more than")


def test_more_files_than_a_request_may_score_is_the_services_413(server):
    url, _ = server
    png = io.BytesIO()
    Image.new("L", (2, 2)).save(png, format="PNG")
    files = [("files", (f"{i}.png", png.getvalue(), "image/png")) for i in range(10_001)]
    with httpx.Client(base_url=url, timeout=120) as c:
        r = c.post("/v1/models/img/score-images", files=files)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["message"] == "10001 images in one request; at most 10000"


def test_images_sent_as_a_text_field_are_named(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/img/score-images", data={"files": "not a file"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == ("files.0: expected files (multipart parts with a "
                                            "file name), got a text field")


def test_a_field_past_the_header_is_named_not_shifted(server, table):
    """A delimiter ending every line is a trailing empty field, not a row index that shifts
    every value one column left; a value past the header is refused, naming its record."""
    url, _ = server
    plain = table.head(3).to_csv(index=False)
    trailing = "".join(line + ",\n" for line in plain.splitlines())
    extra = plain.replace("\n", ",9\n", 2).replace(",9\n", "\n", 1)  # record 0 only
    with httpx.Client(base_url=url, timeout=60) as c:
        def scores(body: str, route: str) -> httpx.Response:
            if route == "file":
                return c.post("/v1/models/t/score-file", params={"summary": "false"},
                              files={"file": ("t.csv", body, "text/csv")})
            return c.post("/v1/models/t/invocations", content=body,
                          headers={"content-type": "text/csv"})

        for route in ("file", "invocations"):
            want, got = scores(plain, route), scores(trailing, route)
            assert want.status_code == got.status_code == 200, got.text
            if route == "file":
                want = pd.read_csv(io.BytesIO(want.content))["score"]
                got = pd.read_csv(io.BytesIO(got.content))["score"]
                pd.testing.assert_series_equal(got, want)
            else:
                assert got.json() == want.json()
            r = scores(extra, route)
            assert r.status_code == 422, r.text
            assert "record 0" in r.text and "more fields than the header" in r.text


def test_categories_that_look_like_numbers_stay_text_in_a_csv(server, table):
    url, _ = server
    df = table.head(3).copy()
    df["color"] = ["007", "012", "red"]
    body = df.iloc[:2].to_csv(index=False)  # a chunk where every category reads as a number
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/t/score-file", files={"file": ("c.csv", body, "text/csv")})
        assert r.status_code == 200, r.text
        assert pd.read_csv(io.BytesIO(r.content), dtype={"color": str})["color"].tolist() == \
            ["007", "012"]


def test_csv_and_parquet_bodies_are_held_to_the_upload_limits(server, table):
    """An /invocations body of a CSV or Parquet table is held to the same header limits as an
    upload, and a Parquet body's record count is read from its footer, not by decoding it."""
    url, proc = server
    names = ",".join([*table.columns, *(f"x{i}" for i in range(5_000))])
    many = pa.table({"a": pa.array([0.0] * 2_000_000)})
    buf = io.BytesIO()
    pq.write_table(many, buf, compression="zstd")
    before = _peak_rss_kb(proc)
    with httpx.Client(base_url=url, timeout=60) as c:
        wide = c.post("/v1/models/t/invocations", content=f"{names}\n",
                      headers={"content-type": "text/csv"})
        assert wide.status_code == 413 and "ANOMALY_MAX_FILE_COLUMNS" in wide.text, wide.text
        rows = c.post("/v1/models/t/invocations", content=buf.getvalue(),
                      headers={"content-type": "application/vnd.apache.parquet"})
        assert rows.status_code == 413 and "ANOMALY_MAX_RECORDS" in rows.text, rows.text
    assert _peak_rss_kb(proc) - before < 50_000


def test_a_map_column_the_scored_file_cannot_hold_is_named(server, table):
    url, _ = server
    t = pa.Table.from_pandas(table.head(5), preserve_index=False).append_column(
        "extra", pa.array([[("k", i)] for i in range(5)], pa.map_(pa.string(), pa.int64())))
    buf = io.BytesIO()
    pq.write_table(t, buf)
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/t/score-file", files={"file": ("m.parquet", buf.getvalue())})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["column"] == "extra" and "summary" in r.text
        r = c.post("/v1/models/t/score-file", params={"summary": "true"},
                   files={"file": ("m.parquet", buf.getvalue())})
        assert r.status_code == 200 and r.json()["n_records"] == 5, r.text


def test_a_long_text_repeated_in_a_small_parquet_file_is_read_in_bounded_chunks(server, table):
    """One 30 KB text on each of 30,000 rows is a few kilobytes of Parquet (one dictionary
    entry) and 900 MB decoded: the upload is decoded in chunks of about 64 MB."""
    url, proc = server
    n, part = 30_000, 1_000
    rows = pd.concat([table] * (part // len(table) + 1)).head(part)
    t = pa.Table.from_pandas(rows, preserve_index=False).append_column(
        "note", pa.array(["x" * 30_000] * part))  # text, as a writer of plain strings stores it
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, t.schema) as writer:
        for _ in range(n // part):
            writer.write_table(t)
    assert len(buf.getvalue()) < 2_000_000
    before = _peak_rss_kb(proc)
    with httpx.Client(base_url=url, timeout=300) as c:
        r = c.post("/v1/models/t/score-file", params={"summary": "true"},
                   files={"file": ("n.parquet", buf.getvalue())})
    assert r.status_code == 200 and r.json()["n_records"] == n, r.text
    assert _peak_rss_kb(proc) - before < 400_000


def test_true_and_false_as_text_are_the_booleans_the_model_trained_on(server, table):
    """pandas reads a CSV's true/false as booleans, so the model's categories are 'True' and
    'False'; an upload reads categories as text ('true', 'FALSE'): the same categories, none
    unknown, the same scores, in a scored file as in an /invocations body."""
    url, _ = server
    df = table.head(20)
    body = df.assign(flag=df["flag"].map({True: "true", False: "FALSE"})).to_csv(index=False)
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/models/t/score-file", files={"file": ("f.csv", body, "text/csv")})
        want = c.post("/v1/models/t/score-file",
                      files={"file": ("f.csv", df.to_csv(index=False), "text/csv")})
        assert r.status_code == want.status_code == 200, r.text
        got = pd.read_csv(io.BytesIO(r.content))
        assert (got["unknown_categories"] == 0).all()
        assert got["score"].tolist() == pd.read_csv(io.BytesIO(want.content))["score"].tolist()
        r = c.post("/v1/models/t/invocations", content=body, headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        assert [p["unknown_categories"] for p in r.json()["predictions"]] == [0] * len(df)
