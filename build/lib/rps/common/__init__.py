"""What every part of rps may use: user-facing errors and signals, safe files, quiet start-up."""
