"""Observing a kernel: its facts (kallsyms, BTF, text), the probe plan, the BPF loader, raw events to records (the inference), direct probes, stalls."""
