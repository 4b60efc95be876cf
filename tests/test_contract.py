"""The wire and HTTP contract, checked by a client in another language (clients/node, from the docs alone).

A real trainer and a real viewer; the Node client subscribes, merges a snapshot, sends malformed
requests, drives the viewer's HTTP and WebSocket side, and stops the trainer. Needs Node 20 and
``npm ci --prefix clients/node`` (scripts/test.sh runs it).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import ROOT, reap
from viewer_support import start_viewer

CLIENT = ROOT / "clients" / "node"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed: the contract client is written in Node.js")
def test_a_node_client_written_from_the_docs_alone_agrees_with_trainer_and_viewer(trainers, tmp_path):
    assert (CLIENT / "node_modules" / "zeromq").is_dir(), "run `npm ci --prefix clients/node` first"
    trainer = trainers("--set", "train.max_timesteps=100000000")
    viewer = start_viewer(tmp_path, trainer.pub, trainer.ctl, "--token", "contract-token")
    try:
        done = subprocess.run([NODE, "contract.js", "--pub", trainer.pub, "--ctl", trainer.ctl, "--viewer",
                               viewer.url, "--token", viewer.token], cwd=CLIENT, capture_output=True, text=True,
                              timeout=600)
    finally:
        reap([viewer.proc])
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith(" 0 failed")
    assert trainer.wait(60) == 0
