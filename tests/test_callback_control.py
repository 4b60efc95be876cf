"""Control as the stream tells it (issue 13): fresh stop reasons, a paused stop, metrics while paused."""

from __future__ import annotations

from conftest import wait_for

from tetriszmq.stream import protocol
from tetriszmq.stream.control import request
from tetriszmq.stream.protocol import Topic

LONG = ("--set", "train.max_timesteps=10000000", "--set", "train.checkpoint_every=0")
STATUS = (protocol.TOPIC_FRAMES[Topic.STATUS],)


def is_status(state: str):
    return lambda topic, payload: topic is Topic.STATUS and payload["state"] == state


def paused_trainer(trainers, subscribe):
    """A training trainer, paused, with a subscriber to its status messages."""
    trainer = trainers(*LONG)
    sub = subscribe(trainer.pub, STATUS)
    sub.until(is_status("running"))
    request(trainer.ctl, "pause")
    sub.until(is_status("paused"))
    return trainer, sub


def test_a_stop_after_pause_and_resume_says_stop_requested_not_the_previous_reason(trainers, subscribe):
    trainer, sub = paused_trainer(trainers, subscribe)
    request(trainer.ctl, "resume")
    assert sub.until(is_status("running"))[-1][1]["reason"] == "resumed"
    request(trainer.ctl, "stop")
    statuses = [p for _, p in sub.until(is_status("stopped"))]
    assert trainer.wait(60) == 0, trainer.output()
    assert (statuses[0]["state"], statuses[0]["reason"]) == ("stopping", "stop requested")
    assert (statuses[-1]["state"], statuses[-1]["reason"]) == ("stopped", "stop requested")


def test_stopping_a_paused_trainer_goes_straight_to_stopping(trainers, subscribe):
    trainer, sub = paused_trainer(trainers, subscribe)
    request(trainer.ctl, "stop")
    states = [p["state"] for _, p in sub.until(is_status("stopped"))]
    assert trainer.wait(60) == 0, trainer.output()
    assert states == ["stopping", "saving", "stopping", "stopped"], "no running status on the way out"


def test_metrics_keep_coming_while_paused(trainers, subscribe):
    trainer = trainers(*LONG)  # tiny.toml: metrics every 0.2 s
    sub = subscribe(trainer.pub, (*STATUS, protocol.TOPIC_FRAMES[Topic.METRICS]))
    sub.until(is_status("running"))
    request(trainer.ctl, "pause")
    held = sub.until(is_status("paused"))[-1][1]["timesteps"]
    metrics = [p for t, p in sub.until(lambda t, p: t is Topic.METRICS and p["sps"] == 0.0)]
    metrics += [sub.until(lambda t, p: t is Topic.METRICS)[-1][1] for _ in range(2)]
    assert all(m["timesteps"] == held for m in metrics[-3:])
    request(trainer.ctl, "resume")
    wait_for(lambda: request(trainer.ctl, "status")["timesteps"] > held)
