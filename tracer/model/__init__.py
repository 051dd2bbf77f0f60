"""The trace model: the record format, the rule catalogue, reading traces, and the kernel's livepatch state as records tell it. Nothing here touches a kernel."""
