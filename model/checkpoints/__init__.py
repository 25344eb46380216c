"""Checkpoints the project makes itself: the tiny random one (tests, benches) and the trained demo model
(its data generators and training recipe). Nothing here is needed to serve a real checkpoint."""
