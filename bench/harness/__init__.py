"""What the bench scripts share, by role; tests/conftest.py takes its ports and waits from here too.

- `processes`: free ports and endpoints, waiting for a condition, spawned children that are always reaped;
- `machine`: what /proc says about a process and the machine (CPU, run delay, memory, load);
- `stream`: the publisher, the trainer's I/O path at the default rates without the training;
- `servers`: the viewer under test and the naive broadcaster it is compared with;
- `load`: client processes, each holding many raw WebSocket connections;
- `case`: one measured run of publisher, server and clients (`run_case`), and its `Result`;
- `tables`: the columns and tables the scripts print;
- `games`: recorded games to replay (the replay bench's and the replay unit tests').

Importing the package puts this checkout ahead of an installed tetriszmq, so a bench always
measures the code beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
