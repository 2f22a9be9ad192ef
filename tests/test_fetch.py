"""`bench data fetch` against a local HTTP server serving a fixture archive: correct, corrupted, interrupted
(and resumed with a range request), and datasets without a public URL."""

import dataclasses
import hashlib
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anobench import fetch as fetch_module
from anobench.core import BenchError
from anobench.datasets import create_dataset
from anobench.fetch import ARCHIVES, fetch
from tests import fake_datasets as fake
from tests.conftest import run_bench
from tests.test_cli import assert_one_sentence


class ArchiveServer:
    """Serves one file with HTTP range support; can cut a response short to simulate a dropped connection."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_after: int | None = None  # bytes sent before the connection drops (once)
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                start = int(requested.removeprefix("bytes=").split("-")[0]) if requested else 0
                body = server.payload[start:]
                self.send_response(206 if requested else 200)
                if requested:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}"
                    )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/VisA_20220922.tar"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def visa_archive(tmp_path_factory):
    """A tar of a fake VisA (two classes) laid out as the real archive: files at its top level."""
    base = tmp_path_factory.mktemp("archive")
    source = fake.write_fake_visa(base / "VisA", ("candle", "pcb1"))
    archive = base / "VisA_20220922.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
    return archive.read_bytes()


@pytest.fixture
def server(visa_archive, monkeypatch):
    served = ArchiveServer(visa_archive)
    entry = dataclasses.replace(
        ARCHIVES["visa"], url=served.url, sha256=hashlib.sha256(visa_archive).hexdigest()
    )
    monkeypatch.setitem(ARCHIVES, "visa", entry)
    yield served
    served.close()


def test_fetch_verifies_extracts_and_converts(server, tmp_path):
    root = fetch("visa", tmp_path / "data", convert=True)
    assert root == tmp_path / "data" / "visa_mvtec_layout"
    original = create_dataset("visa", tmp_path / "data" / "VisA")
    assert original.layout == "original"
    original.validate("pcb1")
    converted = create_dataset("visa", root)
    assert converted.layout == "converted" and sorted(p.name for p in root.iterdir()) == ["candle", "pcb1"]
    converted.validate("candle")
    assert not list((tmp_path / "data" / ".downloads").iterdir())  # the archive is gone once extracted
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        ".downloads",
        "VisA",
        "visa_mvtec_layout",
    ]
    assert fetch("visa", tmp_path / "data") == tmp_path / "data" / "VisA"  # already there: nothing downloaded
    assert server.ranges == [None]


def test_corrupted_archive_is_deleted_and_nothing_is_extracted(server, monkeypatch, tmp_path):
    monkeypatch.setitem(ARCHIVES, "visa", dataclasses.replace(ARCHIVES["visa"], sha256="0" * 64))
    with pytest.raises(
        BenchError,
        match=r"has SHA-256 [0-9a-f]{64}, not the published 0{64}: the download is "
        r"corrupted or not the official archive, so it was deleted and nothing "
        r"was extracted\.$",
    ):
        fetch("visa", tmp_path / "data")
    assert [p.name for p in (tmp_path / "data").iterdir()] == [".downloads"]
    assert not list((tmp_path / "data" / ".downloads").iterdir())


def test_an_interrupted_download_resumes_with_a_range_request(server, visa_archive, tmp_path):
    server.cut_after = len(visa_archive) // 3
    with pytest.raises(
        BenchError,
        match=rf"was interrupted after {len(visa_archive) // 3} of {len(visa_archive)} "
        r"bytes; run the same command again to resume from .*\.part\.$",
    ):
        fetch("visa", tmp_path / "data")
    part = tmp_path / "data" / ".downloads" / "VisA_20220922.tar.part"
    assert part.stat().st_size == len(visa_archive) // 3
    assert [p.name for p in (tmp_path / "data").iterdir()] == [".downloads"]  # nothing half-extracted
    fetch("visa", tmp_path / "data")
    assert server.ranges == [None, f"bytes={len(visa_archive) // 3}-"]
    create_dataset("visa", tmp_path / "data" / "VisA").validate("candle")


def test_a_truncated_archive_cannot_be_half_extracted(visa_archive, tmp_path):
    """fetch never extracts an archive whose checksum fails (a tar cut at a block boundary even reads as
    complete); should a damaged one be extracted anyway, nothing of it lands in the folder."""
    whole = tmp_path / "whole.tar"
    whole.write_bytes(visa_archive)
    with tarfile.open(whole) as tar:
        member = [m for m in tar.getmembers() if m.size > 1000][-1]
    truncated = tmp_path / "VisA_20220922.tar"
    truncated.write_bytes(visa_archive[: member.offset_data + member.size // 2])  # inside the last image
    target = tmp_path / "data" / "VisA"
    target.parent.mkdir()
    with pytest.raises(BenchError, match=r"cannot be extracted .*damaged or truncated"):
        fetch_module.install_atomically(target, lambda staging: fetch_module.extract(truncated, staging))
    assert list(target.parent.iterdir()) == []  # no staging folder, no partial dataset


def test_datasets_without_a_public_url_say_where_to_get_them():
    for name, fragment in (
        ("mpdd", "github.com/stepanje/MPDD"),
        ("mvtec_ad2", "mvtec.com"),
        ("realiad", "realiad4ad.github.io"),
        ("ksdd2", "--sha256"),
    ):
        result = run_bench("data", "fetch", name, "--to", "unused")
        assert_one_sentence(result, 2, f"{name} cannot be downloaded here; get it from", fragment)
