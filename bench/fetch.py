"""Verified dataset downloads (``bench data fetch NAME --to DIR``) and VisA's conversion to the MVTec-like
layout (``bench data convert-visa``).

An archive downloads to ``DIR/.downloads/<file>.part``; an interrupted download resumes there with an HTTP
range request. The complete file's SHA-256 must equal the published one (from the dataset layouts
reference, which took them from anomalib's download table); it is then extracted into a staging folder
inside ``DIR`` and moved into place in one rename, so a mismatch, a truncated or an unreadable archive
leaves nothing half-extracted in ``DIR``. Datasets without a public URL (or without a published checksum)
print where to get them instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np
from PIL import Image

from anobench.core import BenchError

CHUNK = 1 << 20
DOWNLOADS = ".downloads"


@dataclass(frozen=True)
class DatasetArchive:
    """Where a dataset comes from and how to check it."""

    name: str
    folder: str  # the dataset's folder under --to (the --data-root to pass)
    url: str | None = None
    sha256: str | None = None
    where: str = ""  # how to get it when it cannot be fetched here
    licence: str = ""

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.url else ""


MYDRIVE = "https://www.mydrive.ch/shares"
ARCHIVES = {a.name: a for a in (
    DatasetArchive("mvtec", "mvtec_anomaly_detection",
                   f"{MYDRIVE}/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
                   "mvtec_anomaly_detection.tar.xz",
                   "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
                   licence="CC BY-NC-SA 4.0"),
    DatasetArchive("visa", "VisA",
                   "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
                   "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362", licence="CC BY 4.0"),
    DatasetArchive("btad", "btad", "https://avires.dimi.uniud.it/papers/btad/btad.zip",
                   "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a", licence="CC BY-SA"),
    DatasetArchive("mvtec_loco", "mvtec_loco_anomaly_detection",
                   f"{MYDRIVE}/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/430647091-1646842701/"
                   "mvtec_loco_anomaly_detection.tar.xz",
                   "9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687",
                   licence="CC BY-NC-SA 4.0"),
    DatasetArchive("mpdd", "MPDD",
                   where="the OneDrive link in the official repository's README, "
                         "https://github.com/stepanje/MPDD (no stable URL or checksum); extract it and pass "
                         "its folder as --data-root"),
    DatasetArchive("mvtec_ad2", "mvtec_ad_2",
                   where="MVTec's research datasets page, https://www.mvtec.com/company/research/datasets "
                         "(MVTec AD 2, after accepting its CC BY-NC-SA 4.0 terms); extract mvtec_ad_2.tar.gz "
                         "(SHA-256 c0ded99ef32bfc8e352d52beb44515e5b292b8598cb963aadfa91ca0763505e4) and "
                         "pass mvtec_ad_2/ as --data-root"),
    DatasetArchive("realiad", "Real-IAD",
                   where="https://realiad4ad.github.io/Real-IAD (access by application form): extract "
                         "realiad_jsons.zip and the per-class realiad_1024 archives into one folder and pass "
                         "it as --data-root"),
    DatasetArchive("ksdd2", "KolektorSDD2", url="http://go.vicos.si/kolektorsdd2",
                   where="http://go.vicos.si/kolektorsdd2 (a zip with train/ and test/; no checksum is "
                         "published, so it is fetched here only with --sha256 HEX of a copy you trust)"),
)}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# download, resumable


def download(url: str, part: Path) -> None:
    """Fetch ``url`` into ``part``, continuing a previous partial file with a range request."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the file is already complete
            return
        raise BenchError(f"Download of {url} failed (HTTP {exc.code} {exc.reason}); check the URL or try "
                         "later.") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BenchError(f"Cannot reach {url} ({getattr(exc, 'reason', exc)}); check the network and run the "
                         "same command again.") from None
    with response:
        resumed = have and response.status == 206
        length = int(response.headers.get("Content-Length") or 0)
        expected = (have if resumed else 0) + length
        if have and not resumed:
            say(f"{url} does not resume downloads; starting again.")
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise BenchError(f"{url} answered the resume request with another range "
                             f"({response.headers.get('Content-Range')}); delete {part} and fetch again.")
        written = have if resumed else 0
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        except (OSError, HTTPException) as exc:
            raise BenchError(f"Download of {url} was interrupted after {written} bytes "
                             f"({type(exc).__name__}); run the same command again to resume from "
                             f"{part}.") from None
    if length and written < expected:
        raise BenchError(f"Download of {url} was interrupted after {written} of {expected} bytes; run the "
                         f"same command again to resume from {part}.")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# extraction, all or nothing


def _inside(base: Path, name: str) -> bool:
    target = (base / name).resolve()
    return target == base.resolve() or base.resolve() in target.parents


def extract(archive: Path, into: Path) -> None:
    """Extract a .zip or tar archive into ``into`` (members that would land outside it are refused)."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                bad = next((n for n in z.namelist() if not _inside(into, n)), None)
                if bad:
                    raise BenchError(f"Archive {archive} holds a path outside its folder ({bad}); refusing "
                                     "to extract it.")
                z.extractall(into)
            return
        with tarfile.open(archive) as t:
            bad = next((m.name for m in t.getmembers() if not _inside(into, m.name)), None)
            if bad:
                raise BenchError(f"Archive {archive} holds a path outside its folder ({bad}); refusing to "
                                 "extract it.")
            t.extractall(into, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise BenchError(f"Archive {archive} cannot be extracted ({type(exc).__name__}: {exc}); it is "
                         "damaged or truncated: delete it and fetch again.") from None


def install_atomically(target: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder with ``fill(staging)`` beside ``target`` and move it into place only once complete. A
    staging folder holding just one folder (an archive's top level) becomes that folder."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(staging)
        entries = [p for p in staging.iterdir() if not p.name.startswith(".")]
        content = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        os.replace(content, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(name: str, to: Path, *, sha256: str | None = None, keep_archive: bool = False,
          convert: bool = False) -> Path:
    """Download, verify and extract dataset ``name`` into ``to``; returns the folder to pass as --data-root.
    A dataset that cannot be fetched here raises a BenchError saying where to get it."""
    if name not in ARCHIVES:
        raise BenchError(f"Unknown dataset '{name}' for fetch; valid names: {', '.join(sorted(ARCHIVES))}.")
    entry = ARCHIVES[name]
    expected = sha256 or entry.sha256
    if not entry.url or not expected:
        raise BenchError(f"{name} cannot be downloaded here; get it from {entry.where}.")
    if convert and name != "visa":
        raise BenchError("--convert applies to VisA only (its conversion to the MVTec-like layout).")
    to.mkdir(parents=True, exist_ok=True)
    target = to / entry.folder
    if target.exists():
        say(f"{target} already exists; nothing to fetch (remove it to fetch again).")
    else:
        downloads = to / DOWNLOADS
        downloads.mkdir(exist_ok=True)
        part = downloads / f"{entry.file_name or name}.part"
        say(f"Downloading {entry.url} to {part} ...")
        download(entry.url, part)
        actual = sha256_of(part)
        if actual != expected.lower():
            part.unlink()
            raise BenchError(f"{entry.url} has SHA-256 {actual}, not the published {expected}: the download "
                             "is corrupted or not the official archive, so it was deleted and nothing was "
                             "extracted.")
        say(f"SHA-256 verified ({actual}); extracting into {target} ...")
        install_atomically(target, lambda staging: extract(part, staging))
        if keep_archive:
            os.replace(part, downloads / (entry.file_name or name))
        else:
            part.unlink()
        if entry.licence:
            say(f"{name} is licensed under {entry.licence}; see the licence file in {target}.")
    if convert:
        return convert_visa(target, to / "visa_mvtec_layout")
    if name == "visa":
        say(f"VisA is in its original layout (split_csv/1cls.csv), which the visa dataset reads as it is; "
            f"`bench data convert-visa {target} --to DIR` writes the MVTec-like layout too.")
    return target


# ----------------------------------------------------------------------------------------------------------
# VisA: original → MVTec-like


def convert_visa(source_root: Path, out: Path) -> Path:
    """Write VisA's one-class split in the MVTec-like layout SPD's ``prepare_data.py --split-type 1cls``
    produces: ``<class>/{train/good,test/good,test/bad}`` with the original file names, and binary masks
    (0/255, single channel) as ``<class>/ground_truth/bad/<stem>.png``. The whole layout is checked first
    and written atomically."""
    from anobench.datasets.visa import VisA  # imported here: it brings torch, which the download needs not

    if out.exists():
        raise BenchError(f"{out} already exists; remove it or pass another --to.")
    visa = VisA(source_root, layout="original")
    classes = visa.listed_classes()
    for class_name in classes:
        visa.validate(class_name)

    def fill(staging: Path) -> None:
        for class_name in classes:
            for split in ("train", "test"):
                for ref in visa.samples(class_name, split):
                    kind = "good" if ref.label == 0 else "bad"
                    target = staging / class_name / split / kind / ref.image_path.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ref.image_path, target)
                    if ref.mask_path is not None:
                        mask = staging / class_name / "ground_truth" / "bad" / f"{ref.image_path.stem}.png"
                        mask.parent.mkdir(parents=True, exist_ok=True)
                        binary = np.where(visa.read_mask(ref), 255, 0).astype(np.uint8)
                        Image.fromarray(binary, "L").save(mask)

    out.parent.mkdir(parents=True, exist_ok=True)
    install_atomically(out, fill)
    say(f"Wrote VisA in the MVTec-like layout to {out} (pass it as --data-root; the visa dataset reads it "
        "too).")
    return out
