"""Song forms: rhyme classes, the forms a corpus has, and the constraints that make generated text keep them."""
