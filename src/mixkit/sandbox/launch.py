"""The launcher: the first Python inside the sandbox. Never imported by mixkit: its source is run as
`python -I -S -c <this file> CONFIG` (stdlib only), with the program's code on stdin.

It writes the code to `main.py` in the working directory, points stdin at /dev/null, closes every
other inherited descriptor, starts a new session, makes its tree the out-of-memory killer's first
choice (oom_score_adj 1000), sets the rlimits, and replaces itself with
`python -I main.py` (isolated mode: no PYTHON* variables, no user site, no script folder on sys.path).
"""

import json
import os
import resource
import sys


def main() -> None:
    config = json.loads(sys.argv[1])
    code = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.closerange(3, 1 << 16)
    with open("main.py", "wb") as f:
        f.write(code)
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader (bwrap --new-session)
    try:  # when memory runs out, the kernel kills the program's processes first, not mixkit
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass  # not Linux
    for name, soft, hard in config["rlimits"]:
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError, AttributeError) as e:
            sys.stderr.write(f"mixkit sandbox: cannot set {name}: {e}\n")
            os._exit(125)
    os.execv(sys.executable, [sys.executable, "-I", "main.py"])


if __name__ == "__main__":
    main()
