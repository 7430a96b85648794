"""Training code for padax: input pipeline and training loop."""
