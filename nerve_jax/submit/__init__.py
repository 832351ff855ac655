"""Where predictions become a submission: restore, evaluate, tune post-processing, predict,
run-length encode, write and check the CSV."""
