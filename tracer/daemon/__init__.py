"""`klptrace run`: the pipeline from the ring buffer to the sinks, the run loop, the daemon's lifecycle."""
