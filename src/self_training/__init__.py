"""Self-training: a teacher's confident predictions on unlabelled tiles train a student."""
