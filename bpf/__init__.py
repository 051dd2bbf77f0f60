"""The BPF C sources of klptrace (klptrace.bpf.c, klptrace.h), installed as
the package ``klptrace.bpf`` so that an installed klptrace finds them
(tracer/observe/loader.py); nothing here is Python."""
