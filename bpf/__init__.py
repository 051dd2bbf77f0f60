"""The BPF C sources of klptrace (klptrace.bpf.c, klptrace.h), installed as
the package ``klptrace_bpf`` so that an installed klptrace finds them
(tracer/loader.py); nothing here is Python."""
