"""Training machinery: the pretraining loop, optimizer/schedule, distributed helpers, run monitoring."""
