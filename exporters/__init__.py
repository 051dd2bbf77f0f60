"""Where klptrace's results leave the process: trace files, Prometheus metrics."""
