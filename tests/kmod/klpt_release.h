/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The body of the releases of one fix, as fleets ship them:
 *
 * - klpt_up1, klpt_up2 (KLPT_REPLACE false): version 1 and version 2 of one
 *   fix, upgraded by disabling and unloading v1, then loading v2;
 * - klpt_cum1, klpt_cum2, klpt_cum3 (KLPT_REPLACE true): releases of one
 *   cumulative livepatch, the way kpatch-build and the distributions ship
 *   them: each carries every fix so far and atomically replaces whichever
 *   release is enabled, and a fleet rolls back by loading an older one again.
 *
 * Every release includes this file unchanged and the names of a series have
 * the same length, so its modules have the same layout: a release loaded
 * after another was unloaded lands at its addresses, and its callbacks run
 * where the other's ran. Objects, in order: vmlinux, klpt_mod; all four
 * callbacks each.
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
	.replace = KLPT_REPLACE,
};

static int klpt_release_init(void)
{
	return klp_enable_patch(&patch);
}

static void klpt_release_exit(void)
{
}

module_init(klpt_release_init);
module_exit(klpt_release_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
