"""The game side: tetris-gymnasium wrapped for training and streaming.

The fast placement environment and its afterstate features, the environment
factory the trainer uses, and the hand-tuned reference agent (Dellacherie).
"""
