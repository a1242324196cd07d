"""Sampling: the logit-normal schedule with presets, and the guided Euler loop."""
