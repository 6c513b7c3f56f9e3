"""A server command (uvicorn, gunicorn) run as a subprocess on a loopback port, its output in a
file, ready once ``ready`` answers ``ready_status``; stopped by its process id."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


class Running:
    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        log: Path,
        port: int,
        ready: str = "/users/none",
        ready_status: int = 404,
    ) -> None:
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, log.read_text()
            try:
                if self.client.get(ready).status_code == ready_status:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

    def stop(self) -> str:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        return self.log_path.read_text()
