"""Simulated serial-crystallography experiments with ground truth for every stage."""
