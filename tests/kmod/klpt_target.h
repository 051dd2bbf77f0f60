/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The body of the small target modules klpt_tNN of klpt_many: each has one
 * function, klpt_tNN_answer(), that klpt_many replaces. KLPT_TARGET is the
 * function's name, defined by the includer.
 */
#include <linux/module.h>
#include <linux/kernel.h>

/* noinline: livepatch needs a real, ftrace-able function to redirect. */
noinline int KLPT_TARGET(void)
{
	return 42;
}

static int klpt_target_init(void)
{
	/* 42, or 43 once klpt_many has replaced it: this module may load while
	 * patched (klp_module_coming patches it before its init runs) */
	pr_info("%s: answer=%d\n", KBUILD_MODNAME, KLPT_TARGET());
	return 0;
}

static void klpt_target_exit(void)
{
}

module_init(klpt_target_init);
module_exit(klpt_target_exit);
MODULE_LICENSE("GPL");
