"""Reliability and security suite: faults survived, hostile input refused, nothing lost."""
