"""Pseudo-labels: label unlabeled shards with multi-transform inference, then select hard labels."""
