"""One-command demos on the embedded defaults: ``mixhouse demo`` (Jobcoin, ETH) and
``mixhouse demo --chain bitcoin``."""
