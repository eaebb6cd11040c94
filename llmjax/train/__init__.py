"""Train state, loss, optimizer, the pure train step, and the loop that drives it."""
