"""Benchmarks: scratchnets next to PyTorch on the same work in the same run (``scratchnets bench``).

Every benchmark validates its kernels against torch before timing them, reports medians (the dev
machine is shared, so single timings are noisy) and the scratchnets / torch ratio.
``timing`` holds the shared pieces (median timer, torch thread setup, table printing),
``cli`` the ``bench`` subcommand and its registry of sub-subcommands.
"""
