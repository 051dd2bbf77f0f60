/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The body of klpt_up1 and klpt_up2: version 1 and version 2 of one fix, as a
 * fleet upgrades it (disable and unload v1, load v2). Both include this file
 * unchanged, and their names have the same length, so the two modules have
 * the same layout: when v1 is unloaded and v2 loaded, the module allocator
 * hands v2 v1's old addresses, and v2's callbacks run at the addresses where
 * v1's ran. Objects, in order: vmlinux, klpt_mod; all four callbacks each.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
#include "klpt_callbacks.h"

module_param(pre_patch_ret, int, 0644);
MODULE_PARM_DESC(pre_patch_ret, "value returned by every pre_patch callback (default 0)");

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", KBUILD_MODNAME ": this has been live patched");
	return 0;
}

static int livepatch_klpt_mod_answer(void)
{
	return 43;
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show },
	{ }
};

static struct klp_func mod_funcs[] = {
	{ .old_name = "klpt_mod_answer", .new_func = livepatch_klpt_mod_answer },
	{ }
};

static struct klp_object objs[] = {
	{ .name = NULL /* vmlinux */, .funcs = vmlinux_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_mod", .funcs = mod_funcs, .callbacks = KLPT_CALLBACKS },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int klpt_up_init(void)
{
	return klp_enable_patch(&patch);
}

static void klpt_up_exit(void)
{
}

module_init(klpt_up_init);
module_exit(klpt_up_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
