"""Distillation: everything that runs a teacher or assembles its targets for a student, above the cache (storage)
and the trainer (the loop): the dump (plan, codec fitting, the shard loop), LM pseudo-labels, the compatibility of a
cache with a corpus and a student, the student's run (views, untranscribed audio, targets), the live-teacher
fidelity check."""
