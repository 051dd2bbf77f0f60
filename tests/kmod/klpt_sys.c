// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_sys: a livepatch of the getpid system call (modelled on the kernel
 * selftest test_klp_syscall), one vmlinux object with all four callbacks.
 * With processes calling getpid in a loop (klpt_getpid), every one of them
 * runs the patched function all the time: the transition switches each as it
 * returns to user space. The lab measures such a transition with and
 * without the tracer (tests/kernel/test_lines.py, "many-tasks-switching").
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/sched.h>
#include <linux/ptrace.h>
#include "klpt_callbacks.h"

/* x86_64's syscall wrappers since 4.17 take the registers */
static asmlinkage long livepatch_sys_getpid(const struct pt_regs *regs)
{
	return task_tgid_vnr(current);
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "__x64_sys_getpid", .new_func = livepatch_sys_getpid },
	{ }
};

static struct klp_object objs[] = {
	{ .name = NULL /* vmlinux */, .funcs = vmlinux_funcs, .callbacks = KLPT_CALLBACKS },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int klpt_sys_init(void)
{
	return klp_enable_patch(&patch);
}

static void klpt_sys_exit(void)
{
}

module_init(klpt_sys_init);
module_exit(klpt_sys_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace lab: livepatch of getpid with callbacks on vmlinux");
