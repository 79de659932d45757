"""Benchmarks of clstm against its peers: `python -m bench --help`."""
