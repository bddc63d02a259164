"""History sources backed by our own nodes (the provider APIs live in ``wallets.providers``)."""
