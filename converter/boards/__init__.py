"""Boards: the runtime bundle, latency and accuracy on this machine or a device over SSH, fleets."""
