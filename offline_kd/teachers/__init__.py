"""Teachers: where one comes from (a checkpoint, an entry point into the user's code, a Hugging Face directory) and
how it is brought to the student's vocabulary and frame rate. docs/teachers.md."""
