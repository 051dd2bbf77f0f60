"""Exit codes of every klptrace command, in one place (documented in README)."""

OK = 0
VIOLATIONS = 1          # validate: the trace shows what the specification forbids
BAD_INPUT = 2           # unusable input (file, record, option); click usage errors too
NOT_ROOT = 3            # run/probes/lab need root
NO_LIVEPATCH = 4        # running kernel has no CONFIG_LIVEPATCH (/sys/kernel/livepatch)
NO_HEADERS = 5          # bcc needs kernel headers: linux-headers-$(uname -r)
NO_BCC = 6              # python3-bpfcc missing
ATTACH_FAILED = 7       # no probe at all could be attached
LAB_FAILED = 8          # the lab VM could not be prepared/booted, or a guest step failed
ALREADY_RUNNING = 9     # another klptrace daemon holds the lock
