"""Backbones, freezing policies and the Lightning classifier."""
