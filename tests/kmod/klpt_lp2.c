// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_lp2: a second livepatch (modelled on test_klp_callbacks_demo2): one
 * vmlinux object with all four callbacks. replace=1 makes it an atomic-replace
 * patch that disables klpt_lp without running klpt_lp's unpatch callbacks.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
#include "klpt_callbacks.h"

static int replace;
module_param(replace, int, 0644);
MODULE_PARM_DESC(replace, "1: atomic replace of all earlier livepatches (default 0)");

/* pre_patch_ret comes with klpt_callbacks.h; read-only here (always 0 in the
 * scenarios) but exposed for symmetry with klpt_lp. */
module_param(pre_patch_ret, int, 0644);
MODULE_PARM_DESC(pre_patch_ret, "value returned by the pre_patch callback (default 0)");

/* Stacks on klpt_lp's replacement of the same function. */
static int livepatch2_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "klpt_lp2: this has been live patched");
	return 0;
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch2_cmdline_proc_show },
	{ }
};

static struct klp_object objs[] = {
	{ .name = NULL /* vmlinux */, .funcs = vmlinux_funcs, .callbacks = KLPT_CALLBACKS },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	/* .replace is set from the parameter in init */
};

static int klpt_lp2_init(void)
{
	patch.replace = replace;
	return klp_enable_patch(&patch);
}

static void klpt_lp2_exit(void)
{
}

module_init(klpt_lp2_init);
module_exit(klpt_lp2_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace lab: second livepatch (vmlinux), optional atomic replace");
