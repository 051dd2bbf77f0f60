// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_lp: the lab's main livepatch (modelled on the kernel selftest
 * test_klp_callbacks_demo). Three objects, in this order: vmlinux, klpt_mod,
 * klpt_busy; each registers all four callbacks and patches one function.
 *
 * pre_patch_ret (also writable at run time through
 * /sys/module/klpt_lp/parameters/pre_patch_ret) is what every pre_patch
 * callback returns: -19 makes the livepatch, or a later target module, fail
 * to load.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
#include <linux/workqueue.h>
#include "klpt_callbacks.h"

module_param(pre_patch_ret, int, 0644);
MODULE_PARM_DESC(pre_patch_ret, "value returned by every pre_patch callback (default 0)");
module_param(hold_pre_patch, int, 0644);
MODULE_PARM_DESC(hold_pre_patch, "1: every pre_patch callback waits until it is 0 again (max 10 min)");

/* vmlinux: the same function the kernel's livepatch sample replaces. */
static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "klpt_lp: this has been live patched");
	return 0;
}

/* klpt_mod: klpt_mod_answer() */
static int livepatch_klpt_mod_answer(void)
{
	return 43;
}

/* klpt_busy: the work function the busy worker sits in. */
static void livepatch_klpt_busy_work_func(struct work_struct *work)
{
	pr_info("klpt_lp: patched klpt_busy_work_func\n");
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show },
	{ }
};

static struct klp_func mod_funcs[] = {
	{ .old_name = "klpt_mod_answer", .new_func = livepatch_klpt_mod_answer },
	{ }
};

static struct klp_func busy_funcs[] = {
	{ .old_name = "klpt_busy_work_func", .new_func = livepatch_klpt_busy_work_func },
	{ }
};

static struct klp_object objs[] = {
	{ .name = NULL /* vmlinux */, .funcs = vmlinux_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_mod", .funcs = mod_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_busy", .funcs = busy_funcs, .callbacks = KLPT_CALLBACKS },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int klpt_lp_init(void)
{
	return klp_enable_patch(&patch);
}

static void klpt_lp_exit(void)
{
}

module_init(klpt_lp_init);
module_exit(klpt_lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace lab: livepatch with callbacks on vmlinux, klpt_mod, klpt_busy");
