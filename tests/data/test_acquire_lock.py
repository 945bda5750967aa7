"""Several jobs acquiring MNIST at once (a joblib sweep starting on a fresh machine): the file lock
lets one fetch while the others wait, then they find the verified files; MNIST is fetched once."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import checksums_of, synthetic_arrays, write_idx_files

# One job: acquire into DATA_DIR from a slow "download" (a copy of SOURCE_DIR, file by file),
# logging each fetch; then parse the four files.
JOB = r"""
import json, sys, time
from pathlib import Path
from mnist_lab.data import mnist_files

data_dir, source_dir, fetch_log, checksums = sys.argv[1:5]
source_dir = Path(source_dir)

def slow_download(target):
    with open(fetch_log, "a") as log:
        log.write("fetch\n")
    for name in mnist_files.FILES:
        time.sleep(0.3)
        mnist_files.write_atomic(target / name, (source_dir / name).read_bytes())
    return True

sources = [("local files", mnist_files.from_local_files), ("download", slow_download)]
checksums = {name: tuple(sums) for name, sums in json.loads(checksums).items()}
print(mnist_files.acquire(data_dir, sources=sources, checksums=checksums))
raw = mnist_files.raw_dir(data_dir)
print(json.dumps([mnist_files.read_idx(raw / name).shape for name in mnist_files.FILES]))
"""


def test_concurrent_jobs_fetch_once_and_read_whole_files(tmp_path):
    source_dir = tmp_path / "source"
    write_idx_files(source_dir, synthetic_arrays(n_train=500, n_test=100))
    checksums = checksums_of(source_dir)
    data_dir, fetch_log = tmp_path / "data", tmp_path / "fetches.log"
    args = [str(data_dir), str(source_dir), str(fetch_log), json.dumps(checksums)]
    jobs = [
        subprocess.Popen([sys.executable, "-c", JOB, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [job.communicate(timeout=120) for job in jobs]

    assert all(job.returncode == 0 for job in jobs), [err for _, err in results]
    assert fetch_log.read_text() == "fetch\n"  # one job downloaded; three waited for it
    sources = sorted(out.splitlines()[0] for out, _ in results)
    assert sources == ["download", "local files", "local files", "local files"]
    shapes = {out.splitlines()[1] for out, _ in results}
    assert shapes == {"[[500, 28, 28], [500], [100, 28, 28], [100]]"}
