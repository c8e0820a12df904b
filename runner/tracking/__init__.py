"""Where runs are kept and read back: Sacred's stores, the MongoDB mirror and sync, the run browser, secret masking."""
