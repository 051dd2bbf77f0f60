// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_mod: an ordinary livepatch target module (like
 * test_klp_callbacks_mod). klpt_lp replaces klpt_mod_answer().
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>

/* Livepatch needs a real, ftrace-able function to redirect: not inlined, and
 * not folded away by interprocedural analysis either (gcc 16, Debian sid,
 * deleted a static noinline function that returns a constant and folded its
 * one call; the kernel then found no symbol klpt_mod_answer to patch). */
#if defined(__has_attribute) && __has_attribute(__noipa__)
#define klpt_keep __attribute__((__noipa__))
#else
#define klpt_keep noinline
#endif

static klpt_keep int klpt_mod_answer(void)
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
