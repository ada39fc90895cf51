"""Shared pytest configuration: markers used across the test tree."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (sweeps, long simulations)")
    config.addinivalue_line("markers", "build: needs the FPGA toolchain and builds a bitstream")
