"""Scale-out: the same results on one worker, several workers and several processes."""
