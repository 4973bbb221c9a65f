# Per-host statistics built from event batches and connection rows (hosts.py).
