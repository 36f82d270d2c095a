"""Trained checkpoints shipped with rtdenoise, installed as ``rtdenoise._shipped``."""
