"""A killable helper process for work that needs a hard deadline off the main thread.

Threads cannot be stopped and `signal.alarm` works only on the main thread, so code that must give up on a
runaway computation from any thread sends it to a child process and kills the child at the deadline.

The child runs this file as a script (not `hf_compress`), so it starts without importing the package; the
functions it is asked to run are imported on first use.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import selectors
import subprocess
import sys
import threading


class HelperProcess:
    """A child Python process that runs `module:function` calls sent as JSON lines. A call that overruns its
    deadline kills the child and raises TimeoutError; the next call starts a fresh child."""

    def __init__(self):
        self._process = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _start(self):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the caller's imports
        self._process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._process.stdout, selectors.EVENT_READ)

    def call(self, target: str, args: list, timeout: float):
        """`module:function` called with JSON-serializable `args`; its JSON-serializable result."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            self._process.stdin.write(json.dumps([target, args]) + "\n")
            self._process.stdin.flush()
            if not self._selector.select(timeout):
                self.close()
                raise TimeoutError(f"{target} did not finish within {timeout}s")
            line = self._process.stdout.readline()
            if not line:
                code = self._process.poll()
                self.close()
                raise RuntimeError(f"The helper process running {target} died (exit code {code}).")
            ok, value = json.loads(line)
            if not ok:
                raise RuntimeError(f"{target} failed in the helper process: {value}")
            return value

    def close(self):
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._selector.close()
            self._process = None


def serve_calls():
    """The child's loop: answer each JSON line `[target, args]` with `[ok, result or error message]`."""
    answers = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the answers
    logging.basicConfig(level=logging.ERROR)  # e.g. math-verify's notice that its alarms are off: the deadline is ours
    for line in sys.stdin:
        target, args = json.loads(line)
        module_name, _, function_name = target.partition(":")
        try:
            answer = [True, getattr(importlib.import_module(module_name), function_name)(*args)]
        except Exception as error:  # reported to the caller, which raises it
            answer = [False, f"{type(error).__name__}: {error}"]
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve_calls()
