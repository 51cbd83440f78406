"""benchmarks/gpu_score.py runs from a bare checkout (no install, no Beam, no transformers) and,
without CUDA, says "not measured"; its measuring code runs end to end on the CPU at tiny sizes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_score.py"
# What the script must not need: a GPU machine may have torch alone.
GUARD = ("import sys, runpy\n"
         "class Refuse:\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        if name.split('.')[0] in ('apache_beam', 'transformers'):\n"
         "            raise ImportError('not allowed here: ' + name)\n"
         "sys.meta_path.insert(0, Refuse())\n"
         "sys.argv = [sys.argv[1]] + sys.argv[2:]\n"
         "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def run_script(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    # The base interpreter, not this virtual environment's: pairscore is not installed there.
    python = getattr(sys, "_base_executable", sys.executable)
    return subprocess.run([python, "-c", GUARD, str(SCRIPT), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_without_cuda_it_says_not_measured(tmp_path):
    done = run_script(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "GPU scoring: not measured (torch sees no CUDA device)" in done.stdout


def test_its_measurements_run_on_the_cpu(tmp_path):
    done = run_script(tmp_path, "--cpu", "--seconds", "0", "--batch-sizes", "64,128", "--rows", "300",
                      "--pairs", "500")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith("fp32")]
    assert [int(line[1]) for line in lines] == [64, 128]
    assert all(float(value.replace(",", "")) > 0 for line in lines for value in line[2:5])
