"""Run ``asr <args>`` with checkpoint writes slowed down, so tests/test_kill_resume.py can kill mid-write.

``python tests/slow_checkpoint_helper.py SECONDS train ...``: every checkpoint's data file is written
to its temporary file, then the process sleeps SECONDS before the rename. Loaded only in the test's
child process, so the package itself carries no test hook.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    from asr import checkpoint, io_utils
    from asr.cli import main as asr_main

    delay = float(argv[0])

    def slow_write_bytes(path, data: bytes) -> None:
        with io_utils.atomic_path(path) as tmp:
            tmp.write_bytes(data)
            time.sleep(delay)

    checkpoint.atomic_write_bytes = slow_write_bytes  # save_checkpoint's data write, not its checksum
    return asr_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
