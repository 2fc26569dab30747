"""cost-ledger: append-only metering of usage and inference (prices and budgets build on it)."""
