"""`resnetkit serve` through real server processes on free loopback ports: every endpoint, the numbers
`resnetkit predict` and `segment` give, dynamic batching, every refusal (and the server serving on),
the token rule, SIGTERM draining, and the page in Chromium (selenium)."""

import base64
import dataclasses
import io
import json
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.cli import main
from resnetkit.serve.client import Client, ServerProcess
from resnetkit.weights import Preprocessing, save_weights
from tests.conftest import randomize_bn, seg_model

CLASSES = ["cat", "dog", "owl", "fox", "elk", "yak", "emu", "gnu"]
SEG_CLASSES = ["background", "disc", "bar"]


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights (a random resnet20 classifier of 8 classes at 16x16, a tiny segmenter) and test images."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    cls = randomize_bn(resnetkit.create_model("resnet20", num_classes=len(CLASSES))).eval()
    pre = Preprocessing(size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
    seg = randomize_bn(seg_model("resnet20", len(SEG_CLASSES), output_stride=4)).eval()
    rng = np.random.default_rng(0)
    images = {}
    for i in range(6):
        a = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        images[f"im{i}.png"] = _png(a)
        (root / f"im{i}.png").write_bytes(images[f"im{i}.png"])
    return {"cls": save_weights(cls, root / "cls.safetensors", class_names=CLASSES, preprocessing=pre),
            # the same network fed 256x256 inputs: slow enough per call (~0.3 s) to hold requests in flight
            "slow": save_weights(cls, root / "slow.safetensors", class_names=CLASSES,
                                 preprocessing=dataclasses.replace(pre, size=(256, 256))),
            "seg": save_weights(seg, root / "seg.safetensors", class_names=SEG_CLASSES,
                                preprocessing=Preprocessing(mean=(0.45,) * 3, std=(0.25,) * 3)),
            "root": root, "images": images}


def _serve(weights, *extra, **kw) -> ServerProcess:
    return ServerProcess(["--weights", str(weights), "--backend", "channels_last", "--device", "cpu", *extra],
                         env={"OMP_NUM_THREADS": "1", **kw.pop("env", {})}, **kw)


TOKEN = "s3cret"


@pytest.fixture(scope="module")
def servers(files, tmp_path_factory):
    """Three servers, launched together (each spends seconds importing torch) and stopped at the end.

    main:    the classifier, in an empty folder with an empty TMPDIR (to show it never writes a file),
             --timeout-s 4 for the slow-client test;
    seg:     the segmenter;
    guarded: bound to 127.0.0.2, so it needs a token (from the environment); a slow model (256x256 inputs)
             and --max-queue 8, for the full-queue and SIGTERM tests."""
    home = tmp_path_factory.mktemp("server_cwd")
    (home / "tmp").mkdir()
    out = {"main": _serve(files["cls"], "--max-batch", "4", "--max-wait-ms", "20", "--max-images", "6",
                          "--max-upload-mb", "1", "--max-pixels", "1000000", "--timeout-s", "4", cwd=home,
                          env={"TMPDIR": str(home / "tmp"), "RESNETKIT_CACHE": str(home / "cache")}),
           "seg": _serve(files["seg"]),
           "guarded": _serve(files["slow"], "--max-queue", "8", "--max-batch", "4", host="127.0.0.2",
                             env={"RESNETKIT_SERVE_TOKEN": TOKEN}, token=TOKEN)}
    out["main"].home = home
    for s in out.values():
        s.launch()
    yield out
    for s in out.values():  # SIGTERM to all first: they drain side by side
        if s.proc.poll() is None:
            s.proc.terminate()
    for s in out.values():
        s.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers["main"].wait_ready()


@pytest.fixture(scope="module")
def seg_server(servers):
    return servers["seg"].wait_ready()


@pytest.fixture(scope="module")
def guarded(servers):
    return servers["guarded"].wait_ready()


def _one_line_error(reply, status):
    assert reply.status == status, reply.body
    body = reply.json()
    assert body["status"] == status and body["error"] and "\n" not in body["error"]
    return body["error"]


def _raw_reply(sock: socket.socket) -> str:
    """Read one HTTP reply (head and Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            (data.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0] or b"0")
            if b"content-length:" in data.lower() else 0):
        more = sock.recv(65536)
        if not more:
            break
        data += more
    return data.decode("latin-1")


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


# -- the endpoints -----------------------------------------------------------------------------------


def test_predict_gives_the_numbers_of_the_predict_command(server, files, capsys):
    path = files["root"] / "im0.png"
    assert main(["predict", str(path), "--weights", str(files["cls"]), "--top-k", "3", "--format", "json"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["predictions"]
    c = Client(server.url)
    by_form = c.post_files("/v1/predict?top_k=3", [("im0.png", path.read_bytes())])
    assert by_form.status == 200
    got = by_form.json()["results"][0]
    assert got["image"] == "im0.png"
    assert [p["class"] for p in got["predictions"]] == [p["class"] for p in expected]
    assert [p["prob"] for p in got["predictions"]] == pytest.approx([p["prob"] for p in expected], rel=1e-5)
    # the same through a JSON list of base64 images (top_k in the body), and through the raw bytes
    b64 = base64.b64encode(path.read_bytes()).decode()
    by_json = c.request("POST", "/v1/predict", json.dumps({"images": [b64, b64], "top_k": 3}).encode(),
                        "application/json").json()["results"]
    raw = c.request("POST", "/v1/predict?top_k=3", path.read_bytes(), "image/png").json()["results"]
    for r in [*by_json, *raw]:
        assert [p["prob"] for p in r["predictions"]] == pytest.approx([p["prob"] for p in expected], rel=1e-5)


def test_batches_split_at_max_batch_and_answers_stay_with_their_images(server, files):
    c = Client(server.url)
    alone = {n: c.post_files("/v1/predict", [(n, b)]).json()["results"][0]["predictions"]
             for n, b in files["images"].items()}
    before = c.get("/metrics").body.decode()
    together = c.post_files("/v1/predict", list(files["images"].items())).json()["results"]
    after = c.get("/metrics").body.decode()
    # six images, --max-batch 4: two calls of the model (4 + 2), one request
    calls = _metric(after, "resnetkit_batch_size_count") - _metric(before, "resnetkit_batch_size_count")
    images = _metric(after, "resnetkit_batch_size_sum") - _metric(before, "resnetkit_batch_size_sum")
    assert (calls, images) == (2, 6)
    assert _metric(after, 'resnetkit_batch_size_bucket{le="2.0"') - _metric(before,
                                                                         'resnetkit_batch_size_bucket{le="2.0"') == 1
    for r in together:
        assert [p["index"] for p in r["predictions"]] == [p["index"] for p in alone[r["image"]]]
        assert [p["prob"] for p in r["predictions"]] == pytest.approx([p["prob"] for p in alone[r["image"]]],
                                                                      rel=1e-4)
    # concurrent clients: each gets its own image's answer
    out, errors = {}, []

    def one(name, data):
        try:
            out[name] = Client(server.url).post_files("/v1/predict", [(name, data)]).json()["results"][0]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=item) for item in list(files["images"].items()) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, r in out.items():
        assert [p["index"] for p in r["predictions"]] == [p["index"] for p in alone[name]]


def test_explain_returns_a_grad_cam_png(server, files):
    c = Client(server.url)
    data = files["images"]["im1.png"]
    top = c.post_files("/v1/predict", [("a.png", data)]).json()["results"][0]["predictions"][0]
    r = c.post_files("/v1/explain", [("a.png", data)]).json()["results"][0]
    assert (r["class"], r["layer"]) == (top["class"], "resnet20/block3")
    assert r["prob"] == pytest.approx(top["prob"], rel=1e-4)
    cam = Image.open(io.BytesIO(base64.b64decode(r["cam_png"])))
    assert cam.format == "PNG" and cam.size == (16, 16)
    owl = c.post_files("/v1/explain?class_name=owl", [("a.png", data)]).json()["results"][0]
    assert owl["class"] == "owl"
    assert "not one of the model's classes" in _one_line_error(
        c.post_files("/v1/explain?class_name=walrus", [("a.png", data)]), 400)


def test_model_health_ready_metrics_docs(server):
    c = Client(server.url)
    card = c.get("/v1/model").json()
    assert card["arch"] == "resnet20" and card["class_names"] == CLASSES and card["task"] == "classification"
    assert card["preprocessing"]["size"] == [16, 16] and card["device"] == "cpu"
    assert card["backend"]["backend"] == "channels_last" and card["backend"]["source"] == "requested (--backend)"
    assert card["batching"] == {"max_batch": 4, "max_wait_ms": 20.0, "max_queue": 256}
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/readyz").json() == {"ready": True, "backend": "channels_last"}
    text = c.get("/metrics").body.decode()
    for name in ("resnetkit_requests_total", "resnetkit_errors_total", "resnetkit_queue_depth",
                 "resnetkit_batch_size_bucket", "resnetkit_request_latency_seconds_bucket", "resnetkit_max_batch 4.0",
                 "resnetkit_ready 1.0"):
        assert name in text
    assert c.get("/docs").status == 200
    assert set(c.get("/openapi.json").json()["paths"]) >= {"/v1/predict", "/v1/segment", "/v1/explain", "/v1/model"}
    page = c.get("/")
    assert page.status == 200 and b"/static/page.js" in page.body
    assert c.get("/static/page.js").status == 200


def test_segment_gives_the_mask_of_the_segment_command(seg_server, files, tmp_path, capsys):
    path = files["root"] / "im2.png"
    assert main(["segment", str(path), "--weights", str(files["seg"]), "-o", str(tmp_path / "out"),
                 "--backend", "channels_last"]) == 0
    capsys.readouterr()
    expected = np.asarray(Image.open(tmp_path / "out" / "im2.png"))
    c = Client(seg_server.url)
    r = c.post_files("/v1/segment?overlay=true", [("im2.png", path.read_bytes())]).json()["results"][0]
    mask = Image.open(io.BytesIO(base64.b64decode(r["mask_png"])))
    assert mask.mode == "P" and np.array_equal(np.asarray(mask), expected)
    assert r["size"] == [22, 24] and sum(r["shares"].values()) == pytest.approx(1)
    assert set(r["shares"]) <= set(SEG_CLASSES)
    over = Image.open(io.BytesIO(base64.b64decode(r["overlay_png"])))
    assert over.size == (24, 22) and over.mode == "RGB"
    plain = c.post_files("/v1/segment", [("im2.png", path.read_bytes())]).json()["results"][0]
    assert "overlay_png" not in plain and plain["mask_png"] == r["mask_png"]
    assert set(c.get("/v1/model").json()["palette"]) == set(SEG_CLASSES)
    # the wrong endpoint for the weights: one line saying which to use
    assert "/v1/segment" in _one_line_error(c.post_files("/v1/predict", [("a.png", path.read_bytes())]), 400)


# -- refusals ----------------------------------------------------------------------------------------


def _bomb_png(side: int = 100_000) -> bytes:
    """A PNG header claiming side x side pixels, followed by a scrap of zlib data: tiny on the wire."""
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data +  # noqa: E731
                                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + \
        chunk(b"IEND", b"")


def test_bad_inputs_get_one_line_json_errors_and_the_server_serves_on(server, files):
    c = Client(server.url)
    good = files["images"]["im0.png"]
    cases = [
        (lambda: c.post_files("/v1/predict", [("big.png", b"\0" * (2 << 20))]), 413, "over the limit"),
        (lambda: c.post_files("/v1/predict", [("t.txt", b"hello, not an image")]), 400, "not an image"),
        (lambda: c.post_files("/v1/predict", [("half.png", good[: len(good) // 2])]), 400, "truncated"),
        (lambda: c.post_files("/v1/predict", [("empty.png", b"")]), 400, "zero bytes"),
        (lambda: c.post_files("/v1/predict", [("bomb.png", _bomb_png())]), 400, "decompression bomb"),
        (lambda: c.post_files("/v1/predict", [("a.png", good)] * 7), 413, "7 images"),
        (lambda: c.post_files("/v1/predict", []), 400, "no image"),
        (lambda: c.post_files("/v1/predict?top_k=0", [("a.png", good)]), 400, "top_k"),
        (lambda: c.request("POST", "/v1/predict", b"x", "text/plain"), 415, "content type"),
        (lambda: c.request("POST", "/v1/predict", b"{oops", "application/json"), 400, "JSON"),
        (lambda: c.request("POST", "/v1/predict", b'{"images": ["***"]}', "application/json"), 400, "base64"),
        (lambda: c.post_files("/v1/segment", [("a.png", good)]), 400, "/v1/predict"),
        (lambda: c.get("/v1/nothing"), 404, "Not Found"),
        (lambda: c.get("/v1/predict"), 405, "Method Not Allowed"),
    ]
    for send, status, words in cases:
        assert words in _one_line_error(send(), status)
        assert c.post_files("/v1/predict", [("a.png", good)]).status == 200  # and it serves on
    assert len(_bomb_png()) < 200  # refused from its header: nothing was decoded


def test_a_chunked_upload_is_counted_as_it_streams(server):
    conn = socket.create_connection((server.host, server.port))
    conn.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"\0" * 65536
    try:
        for _ in range(40):  # 2.5 MiB against a 1 MiB limit, without a Content-Length
            conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed early: what it said is below
    conn.settimeout(10)
    reply = _raw_reply(conn)
    conn.close()
    assert reply.startswith("HTTP/1.1 413") and "over the limit" in reply


def test_another_address_needs_a_token(guarded, files, capsys, monkeypatch):
    monkeypatch.delenv("RESNETKIT_SERVE_TOKEN", raising=False)
    assert main(["serve", "--weights", str(files["cls"]), "--host", "127.0.0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetkit: error:") and "--token" in err and err.count("\n") == 1
    # `guarded` took its token from the environment; every request without it is 401, page and /healthz too
    anon, wrong, ok = Client(guarded.url), Client(guarded.url, token="guess"), Client(guarded.url, token=TOKEN)
    for path in ("/", "/healthz", "/v1/model", "/metrics", "/docs"):
        assert "token" in _one_line_error(anon.get(path), 401)
        assert wrong.get(path).status == 401
        assert ok.get(path).status == 200
    assert anon.post_files("/v1/predict", [("a.png", files["images"]["im0.png"])]).status == 401


def test_a_slow_client_gets_504_and_holds_nothing(server, files):
    c = Client(server.url)
    slow = socket.create_connection((server.host, server.port))
    slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
    slow.sendall(files["images"]["im0.png"][:10])  # and then nothing: past --timeout-s 4
    assert c.post_files("/v1/predict", [("a.png", files["images"]["im0.png"])]).status == 200  # served meanwhile
    slow.settimeout(20)
    reply = _raw_reply(slow)
    slow.close()
    assert reply.startswith("HTTP/1.1 504") and "4 s (--timeout-s)" in reply
    assert _metric(c.get("/metrics").body.decode(), "resnetkit_images_in_flight") == 0


def test_full_queue_503_then_sigterm_finishes_every_accepted_request(guarded, files):
    """Eight requests to a slow model fill --max-queue 8: a ninth finds the queue full. Then SIGTERM: the
    eight are answered, new connections are refused, and the server exits 0."""
    data = files["images"]["im3.png"]
    replies, errors = [], []

    def one():
        try:
            replies.append(Client(guarded.url, token=TOKEN).post_files("/v1/predict", [("a.png", data)]))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    c = Client(guarded.url, token=TOKEN)
    deadline = time.monotonic() + 10
    while _metric(c.get("/metrics").body.decode(), "resnetkit_images_in_flight") < 8:  # all 8 accepted
        assert time.monotonic() < deadline
        time.sleep(0.02)
    full = c.post_files("/v1/predict", [("b.png", data)])
    assert "queue full" in _one_line_error(full, 503) and full.headers["retry-after"] == "1"
    c.close()
    assert guarded.stop() == 0, guarded.log()
    for t in threads:
        t.join()
    assert not errors and len(replies) == 8
    assert all(r.status == 200 and len(r.json()["results"][0]["predictions"]) == 5 for r in replies)
    with pytest.raises(OSError):
        Client(guarded.url, timeout_s=2).get("/healthz")


def test_bad_flags_are_one_line(files, capsys):
    assert main(["serve", "--weights", str(files["cls"]), "--device", "cuda:7"]) == 2
    assert "device 'cuda:7'" in capsys.readouterr().err
    assert main(["serve", "--weights", "no/such.safetensors"]) == 2
    assert "no such weights file" in capsys.readouterr().err
    assert main(["serve", "--weights", str(files["cls"]), "--max-batch", "0"]) == 2
    assert "max_batch" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--weights", str(files["cls"]), "--backend", "eager", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# -- the page, in Chromium ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the page test needs Debian's chromium and chromium-driver: run `make test` as root (it "
                    "installs them), or `sudo apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,760"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    yield d
    d.quit()


def _upload(browser, url: str, path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "status").text == ""
    return By


def test_the_page_shows_top5_and_grad_cam(browser, server, files):
    path = files["root"] / "im4.png"
    By = _upload(browser, server.url, path)
    assert "resnet20 (classification), 8 classes, input 16x16 RGB" in browser.find_element(By.ID, "card").text
    expected = Client(server.url).post_files("/v1/predict?top_k=5", [("x", path.read_bytes())]).json()
    expected = expected["results"][0]["predictions"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#bars li.pred")
    assert [r.get_attribute("data-cls") for r in rows] == [p["class"] for p in expected]
    assert [float(r.get_attribute("data-prob")) for r in rows] == pytest.approx([p["prob"] for p in expected],
                                                                                 rel=1e-5)
    assert rows[0].find_element(By.CLASS_NAME, "pct").text == f"{100 * expected[0]['prob']:.1f}%"
    cam = browser.find_element(By.ID, "cam")
    assert cam.is_displayed() and browser.execute_script("return arguments[0].naturalWidth", cam) == 16
    assert "Grad-CAM of " + expected[0]["class"] in browser.find_element(By.ID, "cam-cap").text


def test_the_page_shows_the_mask_overlay_and_legend(browser, seg_server, files):
    path = files["root"] / "im5.png"
    By = _upload(browser, seg_server.url, path)
    shares = Client(seg_server.url).post_files("/v1/segment", [("x", path.read_bytes())]).json()
    shares = shares["results"][0]["shares"]
    legend = browser.find_elements(By.CSS_SELECTOR, "#legend li.legend-item")
    assert [li.get_attribute("data-cls") for li in legend] == list(shares)
    seg = browser.find_element(By.ID, "seg")
    assert seg.is_displayed() and browser.execute_script("return arguments[0].naturalWidth", seg) == 24
    assert not browser.find_element(By.ID, "top5").is_displayed()


def test_the_server_wrote_no_file(server):
    """Runs last of the main server's tests: its working folder and TMPDIR are as empty as they started."""
    assert sorted(os.listdir(server.home)) == ["tmp"] and os.listdir(server.home / "tmp") == []
