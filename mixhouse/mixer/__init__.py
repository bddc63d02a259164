"""The mixing engine: mix lifecycle, payout planner, pool, screening, reconciliation."""
