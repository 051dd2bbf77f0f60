"""The command line: `klptrace run|probes|inspect|validate|status|lab`, exit codes' use, docs generation."""
