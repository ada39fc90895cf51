def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long simulation runs (run in CI with -m slow)")
    config.addinivalue_line("markers", "build: bitstream builds with the YoWASP toolchain")
    config.addinivalue_line("markers", "formal: formal proofs with yowasp-sby")
    config.addinivalue_line("markers", "reproduce: re-run every measurement a docs/ page "
                            "prints (hours; not in CI: -m reproduce)")
