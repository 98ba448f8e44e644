"""Run one command and print JSON: its wall time, CPU time, its own peak RSS, exit code and output.

    python benchmarks/_measure.py [--timeout S] -- cmd args...

The peak RSS is ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (KB on Linux) read after the single
child has been waited for, so it is that child's high-water mark and nothing else's. This
wrapper imports only the standard library so that nothing large is copied into the child at fork.
"""

import json
import resource
import subprocess
import sys
import time

KEEP = 20_000  # characters of stdout / stderr passed back


def main(argv: list[str]) -> int:
    timeout = None
    if argv[:1] == ["--timeout"]:
        timeout, argv = float(argv[1]), argv[2:]
    if argv[:1] != ["--"] or len(argv) < 2:
        print("usage: _measure.py [--timeout S] -- cmd args...", file=sys.stderr)
        return 2
    result = {"cmd": argv[1:]}
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as exc:
        result.update(returncode=None, error=f"cannot start: {exc}")
    else:
        try:
            out, err = proc.communicate(timeout=timeout)
            result["returncode"] = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            result.update(returncode=None, error=f"timed out after {timeout:g} s")
        result["wall_s"] = time.perf_counter() - start
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["maxrss_kb"] = children.ru_maxrss
        result["cpu_s"] = children.ru_utime + children.ru_stime  # user + system, every thread of the child
        result["stdout"] = out.decode(errors="replace")[:KEEP]
        result["stderr"] = err.decode(errors="replace")[-KEEP:]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
