"""What the benchmark scripts share: free ports, waiting for a server, /proc readings, per-repeat ratios.

Python 3 standard library only; imported by core.py, auth.py, history.py and input_budget.py, which
run as `python3 benches/<script>.py` (so this directory is on the import path).
"""

import socket
import time
from pathlib import Path


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    """Waits until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


def rss_kib(pid):
    """The resident set of process `pid` in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def per_repeat_ratios(rows, key, setting, baseline, repeat="repeat"):
    """`setting` ÷ `baseline` of `key`, within each repeat (rows sharing `row[repeat]`) that
    has both: alternating settings meet the same machine state, so these pairs are the
    comparisons a noisy neighbour disturbs least."""
    base = {r[repeat]: r[key] for r in rows if r["setting"] == baseline}
    return [r[key] / base[r[repeat]] for r in rows
            if r["setting"] == setting and r[key] and base.get(r[repeat])]
