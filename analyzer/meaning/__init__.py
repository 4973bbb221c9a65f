# What events mean: the bilingual catalogue (catalog.py), which codes count as
# errors (severity.py), the --fail-on gate (gate.py) and the anomaly names
# (anomalies.py).
