// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_mod: an ordinary livepatch target module (like
 * test_klp_callbacks_mod). klpt_lp replaces klpt_mod_answer().
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>

/* noinline: livepatch needs a real, ftrace-able function to redirect. */
static noinline int klpt_mod_answer(void)
{
	return 42;
}

static int klpt_mod_init(void)
{
	pr_info("%s: answer=%d\n", __func__, klpt_mod_answer());
	return 0;
}

static void klpt_mod_exit(void)
{
	pr_info("%s\n", __func__);
}

module_init(klpt_mod_init);
module_exit(klpt_mod_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klptrace lab: ordinary livepatch target module");
