"""Start an SGLang server from its own virtualenv, wait until healthy, stop it on exit.

    python scripts/launch_sglang.py --python .venv-sglang/bin/python --model-path DIR \\
        [--port 30000] [--host 127.0.0.1] [--device cpu|cuda] [-- extra launch_server args]

Prints the URL to pass to the trainer (``--rollout sglang --sglang-url URL``) once ``/health``
answers, then stays in the foreground until Ctrl-C / SIGTERM, and stops the server's whole
process group on the way out (also when the server dies: the script exits with its log tail).
Arguments it does not know are passed to ``python -m sglang.launch_server`` unchanged, e.g.
``--mem-fraction-static 0.5`` or ``--tp 2``. The work is done by
:class:`strace_ds.rollout.sglang.server.SGLangServer`.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time

from strace_ds.rollout.sglang.server import SGLangServer, SGLangServerError, tail


def _detect_device() -> str:
    """``cuda`` when ``nvidia-smi -L`` lists a GPU, else ``cpu``."""
    if shutil.which("nvidia-smi") is None:
        return "cpu"
    found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return "cuda" if found.returncode == 0 and "GPU" in found.stdout else "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--python",
        required=True,
        help="the SGLang environment's python (scripts/setup_sglang_env.sh builds it)",
    )
    p.add_argument(
        "--model_path", "--model-path", required=True, help="Hugging Face model directory"
    )
    p.add_argument("--port", type=int, default=30000, help="HTTP port (0 = any free port)")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to serve other nodes)"
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="default: cuda when nvidia-smi lists a GPU, else cpu (which adds "
        "SGLANG_USE_CPU_ENGINE=1 and the CPU defaults)",
    )
    p.add_argument(
        "--weight_version",
        "--weight-version",
        type=int,
        default=0,
        help="version stamped on answers until the first weight sync",
    )
    p.add_argument(
        "--startup_timeout",
        "--startup-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for /health",
    )
    p.add_argument("--log", default=None, help="server log file (default: a temporary file)")
    args, extra = p.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    device = args.device or _detect_device()

    server = SGLangServer(
        args.python,
        args.model_path,
        port=args.port or None,
        host=args.host,
        device=device,
        extra_args=extra,
        weight_version=args.weight_version,
        log_path=args.log,
        startup_timeout_s=args.startup_timeout,
    )

    def on_signal(signum: int, _frame: object) -> None:
        print(f"launch_sglang: {signal.Signals(signum).name}: stopping {server.url}", flush=True)
        server.stop()
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("launch_sglang:", " ".join(server.command()), flush=True)
    print(f"launch_sglang: log {server.log_path}", flush=True)
    start = time.monotonic()
    try:
        server.start().wait_healthy()
    except SGLangServerError as e:
        print(f"launch_sglang: {e}", file=sys.stderr, flush=True)
        return 1
    print(
        f"launch_sglang: healthy after {time.monotonic() - start:.0f} s; serving {server.url}",
        flush=True,
    )
    print(f"launch_sglang: trainer flags: --rollout sglang --sglang-url {server.url}", flush=True)
    try:
        while server.alive():
            time.sleep(1.0)
    finally:
        code = server.proc.returncode if server.proc is not None else None
        server.stop()
    print(
        f"launch_sglang: server exited with code {code}; last lines of {server.log_path}:\n"
        f"{tail(server.log_path)}",
        file=sys.stderr,
        flush=True,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
