// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_getpid: calls getpid(2) in a loop until killed (as the kernel's
 * test_klp-call_getpid does for test-syscall.sh). Built static with the
 * host's gcc (tracer/lab/kmod.py), so one binary runs in every guest.
 */
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
	for (;;)
		syscall(SYS_getpid);
	return 0;
}
