# A -j N run abandoned (an error, a second signal) kills its workers and must
# still exit: a worker killed half-way through sending its result used to
# leave the pool's manager thread waiting for the rest of the message, and
# the interpreter's exit waiting for that thread, for ever.
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import gc, multiprocessing, os, struct, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.queues import SimpleQueue
from analyzer.engines import parallel

def half_sent():
    # In the worker (forked: the pool's result queue is in its memory): the
    # length of a result and a part of it, then nothing, as when SIGKILL lands
    # in the middle of sending a large result.
    queue = next(o for o in gc.get_objects() if isinstance(o, SimpleQueue))
    os.write(queue._writer.fileno(), struct.pack("!i", 1 << 20) + b"x" * 100)
    open(sys.argv[1], "w").close()
    time.sleep(600)

pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
future = pool.submit(half_sent)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
parallel._abandon(pool)
print("abandoned")
"""


def test_an_abandoned_pool_lets_the_process_exit(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "sent")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the process did not exit after abandoning its pool") from None
    assert (proc.returncode, out) == (0, b"abandoned\n"), err
