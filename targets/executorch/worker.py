"""The worker a WorkerRunner talks to, under ExecuTorch's interpreter:
`python -m targets.executorch.worker PROGRAM.pte BATCH THREADS`. It writes "+" once the program is loaded, then
for each input array (.npy bytes, length first) it reads, writes the number of outputs and each output the same
way. It ends when its standard input closes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from targets.executorch.runner import LENGTH_PREFIX, InProcessRunner, receive_array, send_array


def main(program: Path, batch: int, threads: int) -> None:
    requests = sys.stdin.buffer
    # Replies get the real standard output; the runtime's own messages (C++ logging included) go to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    runner = InProcessRunner(program, (), batch, threads)
    replies.write(b"+")
    replies.flush()
    while requests.peek(1):
        outputs = runner.raw_outputs(receive_array(requests))
        replies.write(LENGTH_PREFIX.pack(len(outputs)))
        for output in outputs:
            send_array(replies, output)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
