"""`lmforge evaluate`: scoring models (the framework arrives with the `eval` branch)."""
