"""Learned agents and the factory that turns a config's ``agent`` section into one."""

from tetriszmq.agents.factory import ALGOS, algo_class, build_model, check_pairing, load_model

__all__ = ["ALGOS", "algo_class", "build_model", "check_pairing", "load_model"]
