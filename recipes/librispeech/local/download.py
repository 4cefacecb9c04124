#!/usr/bin/env python
"""Download and unpack LibriSpeech subsets from openslr.org (resource 12), with MD5 checks.

    python local/download.py --subsets train-clean-100 dev-clean test-clean --out DIR

Offline, it fails at once with a one-line message saying how to use an existing copy instead.
Already unpacked subsets are skipped, and an interrupted download resumes from a .part file.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

BASE_URL = "https://www.openslr.org/resources/12"
# MD5 sums published on https://www.openslr.org/12
MD5 = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
}


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path) -> None:
    part = dest.with_suffix(dest.suffix + ".part")
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(req, timeout=30) as resp, open(part, "ab" if start else "wb") as out:
        while chunk := resp.read(1 << 20):
            out.write(chunk)
    part.rename(dest)


def download_subset(subset: str, out: Path) -> None:
    if (out / "LibriSpeech" / subset).is_dir():
        print(f"{subset}: already unpacked in {out / 'LibriSpeech' / subset}")
        return
    archive = out / f"{subset}.tar.gz"
    if not archive.exists():
        print(f"{subset}: downloading {BASE_URL}/{subset}.tar.gz")
        _fetch(f"{BASE_URL}/{subset}.tar.gz", archive)
    if _md5(archive) != MD5[subset]:
        raise RuntimeError(f"{archive}: MD5 mismatch; delete it and download again")
    print(f"{subset}: unpacking")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    (out / "LibriSpeech" / subset).is_dir() or sys.exit(f"{archive}: did not contain LibriSpeech/{subset}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subsets", nargs="+", required=True, choices=sorted(MD5))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for subset in args.subsets:
            download_subset(subset, args.out)
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"download.py: error: cannot download LibriSpeech from {BASE_URL} ({reason}); this machine "
              f"looks offline. Download the subsets elsewhere and run with --data-dir DIR "
              f"(the folder holding LibriSpeech/<subset>)", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"download.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
