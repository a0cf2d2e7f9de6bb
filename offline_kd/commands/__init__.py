"""One module per CLI command: train, dump_teacher, train_student, evaluate, tune_lm, ablate, report (recipes in
the field's sense, end-to-end pipelines, live in the top-level recipes/ folder)."""
