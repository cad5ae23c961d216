"""Parity stage: Keras is the reference; every deployed artifact must answer like it on real held-out data."""
