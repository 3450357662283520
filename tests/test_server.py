"""The HTTP server over a real uvicorn on a loopback port: every endpoint, every bad request, path
traversal attempts, the bearer token, and concurrent clients against sequential answers.

The index is the toy one of tests/test_retriever.py (solid-colour squares, colour-name captions), saved
and loaded back as a server loads it, so the right answers are known: "red" finds the red square.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from eval.load_test import free_port
from rerank.base import _REGISTRY as rerank_registry
from rerank.float_rescore import FloatReranker
from retrieval import Retriever
from retrieval.server import create_app
from retrieval.server.cli import add_parser, is_loopback
from retrieval.server.live import LiveServer
from retrieval.server.service import SearchService
from toy_encoder import COLORS, ToyEncoder, solid_images

NAMES = list(COLORS)
BITS = 16
UPLOAD_LIMIT = 200_000


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    import faiss

    faiss.omp_set_num_threads(1)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("images")
    solid_images(directory)
    (directory / "secret.txt").write_text("root:x:0:0:do not serve me")
    return directory


@pytest.fixture(scope="module")
def index_dir(image_dir: Path, tmp_path_factory) -> Path:
    paths = [str(image_dir / f"{n}.png") for n in NAMES]
    retriever = Retriever.build(
        images=paths, texts=[f"a {n} square" for n in NAMES], encoder=ToyEncoder(), bits=BITS,
        image_payloads=[{"name": n} for n in NAMES], text_payloads=[{"colour": n} for n in NAMES],
        fit_pairs=(np.arange(len(NAMES)), np.arange(len(NAMES))))
    return retriever.save_pretrained(tmp_path_factory.mktemp("index") / "toy-index")


@pytest.fixture(scope="module")
def retriever(index_dir: Path) -> Retriever:
    return Retriever.from_pretrained(index_dir, encoder=ToyEncoder())


@pytest.fixture(scope="module")
def server(retriever: Retriever):
    app = create_app(retriever, max_upload_bytes=UPLOAD_LIMIT, k_max=50, index_name="toy-index")
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def client(server: LiveServer):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def png_bytes(name: str, size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, tuple(int(255 * c) for c in COLORS[name])).save(out, "PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: what a decompression bomb looks like to a server."""
    data = bytearray(png_bytes("red", (1, 1)))
    ihdr = 8 + 4  # signature, chunk length; then b"IHDR" and 13 bytes of data, then the CRC
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def upload(client: httpx.Client, data: bytes, name: str = "query.png", params: dict | None = None) -> httpx.Response:
    return client.post("/search", params=params or {}, files={"file": (name, data, "image/png")})


def raw_get(server: LiveServer, target: str) -> tuple[int, bytes]:
    """A GET of ``target`` byte for byte: HTTP clients normalise ``..`` away, attackers do not."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {server.host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def assert_json_error(response: httpx.Response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str)
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    assert "Traceback" not in response.text
    return body


def hit_facts(hits: list[dict]) -> list[tuple]:
    return [(h["id"], h["modality"], h["score"], h["hamming"], h["rank"]) for h in hits]


# -- endpoints ---------------------------------------------------------------------------------------
def test_health_needs_nothing_and_counts_items(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "items": {"image": len(NAMES), "text": len(NAMES)}}


def test_text_query_finds_its_image_with_every_hit_field(client, retriever):
    body = client.get("/search", params={"q": "navy", "k": 5}).json()
    assert body["query"] == {"type": "text", "text": "navy"} and body["target"] == "image"
    assert body["rerank"] == "float"  # the default: the index stores float vectors
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    top = hits[0]
    assert top["payload"] == {"name": "navy"} and top["modality"] == "image"
    assert Path(top["path"]).name == "navy.png" and top["caption"] is None
    assert top["thumbnail_url"] == f"/items/{top['id']}/thumbnail"
    assert top["item_url"] == f"/items/{top['id']}?modality=image"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    direct = retriever.search("navy", k=5, rerank="float")
    assert [(h["id"], h["hamming"]) for h in hits] == [(d.id, d.hamming) for d in direct]
    assert [h["score"] for h in hits] == pytest.approx([d.score for d in direct])
    assert set(body["timings"]) >= {"encode_ms", "stage1_ms", "stage2_ms", "total_ms"}


def test_hash_only_scores_are_hamming_similarities(client):
    body = client.get("/search", params={"q": "orange", "k": 8, "rerank": "none"}).json()
    assert body["rerank"] == "none"
    for hit in body["hits"]:
        assert hit["score"] == pytest.approx(1 - 2 * hit["hamming"] / BITS)


def test_text_query_can_target_captions(client):
    body = client.get("/search", params={"q": "a pink thing", "k": 3, "target": "text"}).json()
    assert body["target"] == "text"
    assert body["hits"][0]["caption"] == "a pink square" and body["hits"][0]["thumbnail_url"] is None
    assert body["hits"][0]["item_url"].endswith("?modality=text")


def test_uploaded_image_finds_captions_and_images(client):
    body = upload(client, png_bytes("yellow", (40, 30)), "yellow.png", {"k": 3}).json()
    assert body["query"] == {"type": "image", "filename": "yellow.png", "size": [40, 30]}
    assert body["target"] == "text" and body["hits"][0]["caption"] == "a yellow square"
    images = upload(client, png_bytes("yellow"), params={"k": 3, "target": "image"}).json()
    assert images["target"] == "image" and images["hits"][0]["payload"] == {"name": "yellow"}


def test_more_like_this_searches_with_an_indexed_item(client):
    blue = NAMES.index("blue")
    body = client.get(f"/items/{blue}/similar", params={"modality": "image", "target": "image", "k": 4}).json()
    assert body["query"] == {"type": "item", "id": blue, "modality": "image"}
    assert body["hits"][0]["id"] == blue and body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    caption = client.get(f"/items/{NAMES.index('green')}/similar", params={"modality": "text", "k": 2}).json()
    assert caption["target"] == "image" and caption["hits"][0]["payload"] == {"name": "green"}


def test_items_by_id_and_modality(client):
    cyan = NAMES.index("cyan")
    image = client.get(f"/items/{cyan}").json()
    assert image["modality"] == "image" and Path(image["path"]).name == "cyan.png"
    assert image["payload"] == {"name": "cyan"} and image["thumbnail_url"] == f"/items/{cyan}/thumbnail"
    text = client.get(f"/items/{cyan}", params={"modality": "text"}).json()
    assert text == {"id": cyan, "modality": "text", "path": None, "caption": "a cyan square",
                    "payload": {"colour": "cyan"}, "thumbnail_url": None}


def test_thumbnail_is_a_small_jpeg_of_that_image_and_is_cached(client, server):
    service = server.app.state.service
    red = NAMES.index("red")
    response = client.get(f"/items/{red}/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.format == "JPEG" and max(thumb.size) <= 256
    r, g, b = np.asarray(thumb.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60
    assert (red, str(Path(client.get(f"/items/{red}").json()["path"]))) in service.thumbnails.cache._items
    hits = service.thumbnails.cache.hits
    assert client.get(f"/items/{red}/thumbnail").content == response.content
    assert service.thumbnails.cache.hits == hits + 1  # the second answer came from the cache


def test_stats_report_counts_model_index_and_latency(client):
    before = client.get("/stats").json()
    for q in ("red", "green", "blue"):
        client.get("/search", params={"q": q})
    client.get("/search", params={"k": 0})
    stats = client.get("/stats").json()
    assert stats["counts"] == {"image": len(NAMES), "text": len(NAMES)}
    assert stats["model"] == "toy"
    assert stats["index"] == {"name": "toy-index", "kind": "flat", "hasher": "itq", "bits": BITS, "candidates": 128}
    assert stats["rerank"] == {"default": "float", "allowed": ["float", "none"]}
    assert stats["searches"]["count"] == before["searches"]["count"] + 3
    assert 0 < stats["searches"]["p50_ms"] <= stats["searches"]["p99_ms"]
    assert stats["errors"] >= before["errors"] + 1


def test_page_and_its_static_files_need_nothing_from_the_network(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="search-form"' in page.text
    for name in ("app.js", "style.css"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text and "//cdn" not in response.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-static/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/items/{item_id}", "/items/{item_id}/thumbnail", "/health", "/stats"} <= set(spec["paths"])
    assert set(spec["paths"]["/search"]) == {"get", "post"}
    assert "HitOut" in spec["components"]["schemas"]
    # what the server enforces is in the document (issue 22): a client built from it sends nothing refused
    q = next(p for p in spec["paths"]["/search"]["get"]["parameters"] if p["name"] == "q")
    assert q["required"] and q["schema"]["minLength"] == 1 and q["schema"]["pattern"] == r"\S"
    assert q["schema"]["maxLength"] == 1000
    assert "item" not in {p["name"] for p in spec["paths"]["/search"]["get"]["parameters"]}
    assert "/items/{item_id}/similar" in spec["paths"]
    rerank = next(p for p in spec["paths"]["/search"]["get"]["parameters"] if p["name"] == "rerank")
    assert rerank["schema"]["enum"] == ["float", "none"]
    body = spec["components"]["schemas"][spec["paths"]["/search"]["post"]["requestBody"]["content"]
                                         ["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert body["properties"]["file"]["minLength"] == 1 and body["required"] == ["file"]
    # no token: no security scheme, no operation asks for an Authorization header
    assert "securitySchemes" not in spec.get("components", {})
    assert not any("security" in op for ops in spec["paths"].values() for op in ops.values())


# -- bad requests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, status, fragments", [
    ({}, 422, ["query parameter 'q'", "required"]),  # items are searched at /items/{id}/similar
    ({"q": ""}, 422, ["query parameter 'q'", "at least 1 character"]),
    ({"q": "   "}, 422, ["query parameter 'q'", "pattern"]),  # the document's rule: one non-space character
    ({"q": "red", "k": 0}, 422, ["'k'"]),
    ({"q": "red", "k": 51}, 422, ["'k'", "50"]),
    ({"q": "red", "k": "ten"}, 422, ["'k'", "integer"]),
    ({"q": "red", "rerank": "bogus"}, 422, ["'rerank'", "float, none", "'bogus'"]),
    ({"q": "red", "rerank": "cross"}, 422, ["'rerank'"]),
    ({"q": "red", "target": "video"}, 422, ["'target'"]),
    ({"q": "x" * 1001}, 422, ["query parameter 'q'", "at most 1000 characters"]),
])
def test_bad_searches_are_json_4xx_naming_the_problem(client, params, status, fragments):
    assert_json_error(client.get("/search", params=params), status, *fragments)


@pytest.mark.parametrize("path, status, fragments", [
    ("/items/999", 404, ["no image with id 999", "12 images"]),
    ("/items/999?modality=text", 404, ["no text with id 999"]),
    ("/items/abc", 422, ["'item_id'", "integer"]),
    ("/items/1?modality=video", 422, ["'modality'"]),
    ("/items/999/thumbnail", 404, ["no image with id 999"]),
    ("/items/1/similar?modality=audio", 422, ["'modality'"]),
    ("/items/999/similar", 404, ["no image with id 999"]),
    ("/items/-1/similar", 404, ["no image with id -1"]),
    ("/items/999/similar?modality=text", 404, ["no text with id 999"]),
    ("/items/..%2F..%2Fetc%2Fpasswd/similar", 404, []),
    ("/items/1.5/thumbnail", 422, ["'item_id'"]),
    ("/nowhere", 404, ["no such endpoint"]),
    ("/static/missing.js", 404, []),
])
def test_bad_item_requests_are_json_4xx(client, path, status, fragments):
    assert_json_error(client.get(path), status, *fragments)


def test_wrong_method_is_json_405(client):
    assert_json_error(client.delete("/search"), 405, "DELETE")


@pytest.mark.parametrize("data, name, status, fragments", [
    (b"just some text", "notes.txt", 415, ["'notes.txt'", "not an image"]),
    (b"", "empty.png", 422, ["empty"]),
    (png_bytes("red", (64, 64))[:60], "cut.png", 422, ["'cut.png'"]),
    (png_header_only(40_000, 40_000), "bomb.png", 413, ["decompression bomb"]),
    (png_header_only(10_000, 10_000), "big.png", 413, ["10000x10000 pixels", "decompression-bomb"]),
], ids=["text", "empty", "truncated", "bomb", "over-pixel-limit"])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_uploads_are_json_4xx(client, data, name, status, fragments):
    body = assert_json_error(upload(client, data, name), status, *fragments)
    assert "/tmp" not in body["error"]  # the server's temporary file is not named


def test_upload_without_a_file_or_with_bad_parameters(client):
    assert_json_error(client.post("/search"), 422, "'file'")
    assert_json_error(upload(client, png_bytes("red"), params={"k": 0}), 422, "'k'")
    assert_json_error(upload(client, png_bytes("red"), params={"target": "image", "rerank": "x"}), 422, "'rerank'")


def test_oversized_upload_is_413_announced_or_streamed(client):
    big = b"\xff" * (UPLOAD_LIMIT + 1)
    assert_json_error(upload(client, big, "big.jpg"), 413, f"{UPLOAD_LIMIT:,} bytes")

    def chunks():  # no Content-Length: the body limit must stop it while it streams
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n\r\n"
        for _ in range(UPLOAD_LIMIT // 10_000 + 2):
            yield b"\xff" * 10_000

    response = client.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_json_error(response, 413, f"{UPLOAD_LIMIT:,} bytes")


def test_unexpected_failure_is_a_json_500_without_details(client, retriever, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk /very/secret/path exploded")

    monkeypatch.setattr(retriever, "search", broken)
    body = assert_json_error(client.get("/search", params={"q": "red"}), 500, "RuntimeError", "server log")
    assert "secret" not in body["error"]


# -- traversal -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [
    "/items/../../etc/passwd",
    "/items/..%2F..%2Fetc%2Fpasswd",
    "/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumbnail",
    "/items/0/../../../etc/passwd",
    "/static/../../../../etc/passwd",
    "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static//etc/passwd",
    "/static/..%5c..%5cserver%5capp.py",
    "/docs-static/../../../../etc/passwd",
    "/items/0/thumbnail/../../../secret.txt",
    "/search?item=..%2Fsecret.txt",
])
def test_traversal_attempts_read_nothing(server, target):
    status, body = raw_get(server, target)
    assert 400 <= status < 500
    assert b"root:" not in body and b"format_version" not in body and b"def create_app" not in body


def test_request_paths_never_choose_the_file(client, image_dir):
    red = client.get("/items/0/thumbnail", params={"path": str(image_dir / "secret.txt")})
    assert red.status_code == 200 and red.content == client.get("/items/0/thumbnail").content


# -- token ----------------------------------------------------------------------------------------------
def test_bearer_token_guards_the_api_not_the_page(retriever):
    with LiveServer(create_app(retriever, token="s3cret", warm_up=False)) as live, \
            httpx.Client(base_url=live.url) as c:
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        for path in ("/stats", "/search?q=red", "/items/0", "/items/0/thumbnail"):
            response = c.get(path)
            assert_json_error(response, 401, "bearer token")
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Basic s3cret"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert response.headers["www-authenticate"] == "Bearer"
        assert upload(c, png_bytes("red")).status_code == 401
        spec = c.get("/openapi.json").json()  # the document declares the bearer scheme the server enforces
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert spec["paths"]["/stats"]["get"]["security"] == [{"HTTPBearer": []}]
        assert "security" not in spec["paths"]["/health"]["get"]


# -- choices of target and reranker -----------------------------------------------------------------
def test_images_only_index_answers_image_queries_with_images(image_dir):
    paths = [str(image_dir / f"{n}.png") for n in NAMES]
    with pytest.warns(UserWarning, match="LSH"):
        photos = Retriever.build(images=paths, encoder=ToyEncoder(), bits=BITS)
    with LiveServer(create_app(photos)) as live, httpx.Client(base_url=live.url) as c:
        body = upload(c, png_bytes("magenta"), params={"k": 2}).json()
        assert body["target"] == "image" and Path(body["hits"][0]["path"]).name == "magenta.png"
        assert c.get("/search", params={"q": "magenta"}).json()["target"] == "image"
        empty = c.get("/search", params={"q": "red", "target": "text"})  # searched, nothing there: no hits
        assert empty.status_code == 200 and empty.json()["target"] == "text" and empty.json()["hits"] == []


def test_cross_modal_only_reranker_is_refused_by_name_for_image_to_image(retriever):
    # cross is never run here (warm_up off): the checks happen before any model call
    app = create_app(retriever, rerank=["cross", "float"], warm_up=False)
    with LiveServer(app) as live, httpx.Client(base_url=live.url) as c:
        asked = c.get("/items/0/similar", params={"target": "image", "rerank": "cross"})
        assert_json_error(asked, 422, "'cross'", "image -> image", "rerank='float'")
        default = c.get("/items/0/similar", params={"target": "image", "k": 3}).json()
        assert default["rerank"] == "float" and default["hits"][0]["id"] == 0
        assert c.get("/stats").json()["rerank"] == {"default": "cross", "allowed": ["cross", "float", "none"]}


def test_unknown_or_impossible_reranker_is_refused_at_start(retriever):
    with pytest.raises(ValueError, match="unknown reranker 'bogus'"):
        create_app(retriever, rerank=["bogus"])
    no_vectors = Retriever(ToyEncoder(), retriever.hasher, store_vectors=False)
    with pytest.raises(ValueError, match="float.*vectors"):
        create_app(no_vectors, rerank=["float"])


# -- concurrency ------------------------------------------------------------------------------------------
def request_mix() -> list[tuple[str, dict, bytes | None]]:
    mix: list[tuple[str, dict, bytes | None]] = []
    for i, name in enumerate(NAMES):
        mix.append(("GET", {"q": f"{name} square", "k": 3 + i % 5, "rerank": ["float", "none"][i % 2]}, None))
    for name in ("red", "cyan", "purple", "grey"):
        mix.append(("POST", {"k": 4}, png_bytes(name, (16, 12))))
        mix.append(("POST", {"k": 4, "target": "image", "rerank": "none"}, png_bytes(name)))
    for i in range(4):
        mix.append(("GET", {"item": i, "modality": ["image", "text"][i % 2], "k": 5}, None))
    return mix


async def fetch(client: httpx.AsyncClient, request: tuple[str, dict, bytes | None]) -> list[tuple]:
    method, params, data = request
    if method == "GET" and "item" in params:
        params = dict(params)
        response = await client.get(f"/items/{params.pop('item')}/similar", params=params)
    elif method == "GET":
        response = await client.get("/search", params=params)
    else:
        response = await client.post("/search", params=params, files={"file": ("q.png", data, "image/png")})
    response.raise_for_status()
    return hit_facts(response.json()["hits"])


def test_concurrent_clients_get_the_sequential_answers(server):
    mix = request_mix()

    async def main() -> tuple[list, list]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            sequential = [await fetch(client, r) for r in mix]
            order = [i for _ in range(3) for i in range(len(mix))]
            random.Random(0).shuffle(order)
            limits = httpx.Limits(max_connections=8)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as eight:
                concurrent = await asyncio.gather(*(fetch(eight, mix[i]) for i in order))
        return sequential, list(zip(order, concurrent))

    sequential, concurrent = asyncio.run(main())
    assert all(sequential), "every request of the mix has hits"
    for i, hits in concurrent:
        assert hits == sequential[i], mix[i][:2]


def test_event_loop_answers_while_a_search_runs(client, retriever, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real_search = retriever.search

    def slow_search(*args, **kwargs):
        started.set()
        release.wait(30)
        return real_search(*args, **kwargs)

    monkeypatch.setattr(retriever, "search", slow_search)
    result: dict = {}
    searcher = threading.Thread(target=lambda: result.update(r=client.get("/search", params={"q": "red"})))
    searcher.start()
    try:
        assert started.wait(30)
        with httpx.Client(base_url=str(client.base_url), timeout=10) as other:
            assert other.get("/health").status_code == 200  # a blocked loop would time out here
            assert other.get("/items/1").status_code == 200
    finally:
        release.set()
        searcher.join(30)
    assert result["r"].status_code == 200 and result["r"].json()["hits"][0]["payload"] == {"name": "red"}


# -- command line ----------------------------------------------------------------------------------------
def test_serve_subcommand_defaults_to_loopback():
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "my-index"])
    assert (args.index, args.host, args.port, args.rerank, args.token) == ("my-index", "127.0.0.1", 8000, None, None)
    args = parser.parse_args(["serve", "x", "--rerank", "float", "cross", "--port", "0"])
    assert args.rerank == ["float", "cross"] and args.port == 0 and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "x", "--port", "70000"])
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_serve_names_an_index_it_cannot_open(tmp_path):
    result = subprocess.run([sys.executable, "-m", "retrieval.server.cli", str(tmp_path / "missing"), "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cannot serve" in result.stderr and "missing" in result.stderr


@pytest.mark.slow
def test_crossmodal_serve_serves_an_index_made_by_crossmodal_index(tmp_path, image_dir):
    """The real command pair with the lite encoder: ``crossmodal index`` a folder, ``crossmodal serve`` it."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parents[1]
    index = tmp_path / "squares.index"
    made = subprocess.run([sys.executable, "-m", "retrieval", "index", str(image_dir), "--out", str(index), "-q"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert made.returncode == 0, made.stderr
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "retrieval", "serve", str(index), "--port", str(port),
                               "--log-level", "warning"], env=env, cwd=root)
    try:
        url = f"http://127.0.0.1:{port}"
        health = wait_for_health(url, server)
        assert health["items"] == {"image": len(NAMES)}
        with httpx.Client(base_url=url, timeout=60) as c:
            body = upload(c, (image_dir / "magenta.png").read_bytes(), "magenta.png", {"k": 3}).json()
            assert body["target"] == "image" and Path(body["hits"][0]["path"]).name == "magenta.png"
            assert body["hits"][0]["hamming"] == 0
            text = c.get("/search", params={"q": "a red square", "k": 4}).json()
            assert len(text["hits"]) == 4 and all(Path(h["path"]).parent == image_dir for h in text["hits"])
            assert c.get(body["hits"][0]["thumbnail_url"]).headers["content-type"] == "image/jpeg"
    finally:
        server.terminate()
        # uvicorn shuts down on SIGTERM, then re-raises the signal so a parent sees how it ended
        assert server.wait(30) in (0, -15)


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = 300) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        try:
            return httpx.get(f"{url}/health", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.3)
    raise TimeoutError(f"no answer from {url}/health within {timeout} s")


# -- the load test script ------------------------------------------------------------------------------
def test_load_test_is_bounded_and_counts_errors(server):
    from eval.load_test import run_level, table

    row = asyncio.run(run_level(server.url, ["red", "navy square"], "float", clients=3, per_client=4,
                                duration=60, k=3, headers={}))
    assert (row["ok"], row["errors"], row["clients"]) == (12, 0, 3)  # 3 clients x 4 queries, then it stops
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] and row["qps"] > 0
    bad = asyncio.run(run_level(server.url, ["red"], "cross", clients=2, per_client=2, duration=60, k=3, headers={}))
    assert (bad["ok"], bad["errors"]) == (0, 4) and bad["error_examples"][0].startswith("422")
    assert "| + float | 3 | 12 | 0 |" in table([row])


def test_load_test_qps_is_answers_over_the_measured_seconds_and_stops_at_the_duration(server, monkeypatch):
    import types

    import eval.load_test as load_test

    ticks = iter(np.arange(1, 1000) * 0.25)  # each reading of the clock: 0.25 s later
    monkeypatch.setattr(load_test, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    # one client: start, then per query (deadline check, sent, answered), then the end reading
    row = asyncio.run(load_test.run_level(server.url, ["red"], "float", clients=1, per_client=4, duration=60, k=3,
                                          headers={}))
    assert (row["ok"], row["seconds"], row["qps"]) == (4, 3.25, round(4 / 3.25, 1))
    assert row["p50_ms"] == row["p99_ms"] == row["max_ms"] == 250.0
    ticks = iter(np.arange(1, 1000) * 0.25)
    short = asyncio.run(load_test.run_level(server.url, ["red"], "float", clients=1, per_client=4, duration=1.0,
                                            k=3, headers={}))
    assert (short["ok"], short["seconds"], short["qps"]) == (1, 1.25, 0.8), "the second query starts at the deadline"


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://192.168.1.2", "http://example.org", "http://0.0.0.0:1"])
def test_load_test_refuses_anything_but_loopback(url):
    from eval.load_test import check_loopback

    with pytest.raises(SystemExit, match="only loopback"):
        check_loopback(url)
    assert check_loopback("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_loopback("http://[::1]:8000") == "http://[::1]:8000"


class SignedFloat(FloatReranker):
    """Float rescoring times a setting: -1 turns the ranking upside down, so a test sees which instance ran."""

    method = "signed-float-test"

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = float(sign)

    def score(self, query, candidates):
        return self.sign * super().score(query, candidates)


@pytest.fixture
def signed_float(monkeypatch):
    monkeypatch.setitem(rerank_registry, SignedFloat.method, SignedFloat)
    return SignedFloat.method


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_reranker_settings_reach_the_reranker_the_server_runs(retriever, signed_float, sign):
    service = SearchService(retriever, [signed_float], reranker_settings={signed_float: {"sign": sign}})
    hits = service.search("red", {"type": "text"}, k=len(NAMES), rerank=signed_float, target="image")["hits"]
    names = [h["payload"]["name"] for h in hits]
    assert (names[0] == "red") == (sign > 0)
    assert (names[-1] == "red") == (sign < 0)


def test_reranker_settings_for_a_reranker_not_offered_are_refused(retriever, signed_float):
    with pytest.raises(ValueError, match="signed-float-test.*not offer"):
        create_app(retriever, rerank=["float"], reranker_settings={signed_float: {"sign": -1.0}}, warm_up=False)


def test_serve_refuses_a_setting_its_reranker_lacks_by_name(retriever, index_dir, monkeypatch, capsys):
    monkeypatch.setattr(Retriever, "from_pretrained", classmethod(lambda cls, *a, **k: retriever))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", str(index_dir), "--rerank", "float", "--reranker-arg", "float.sign=2"])
    assert args.func(args) == 2
    assert "sign" in capsys.readouterr().err
