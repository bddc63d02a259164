"""Wallet sync: imported addresses, their history and balances, and the transactions API."""
