// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_many: a livepatch with twelve objects (vmlinux and the modules
 * klpt_t01 ... klpt_t11), each with all four callbacks, like a cumulative
 * patch that fixes many modules. More objects than one BPF snapshot event
 * carries: the tracer must trace every one of them. Only klpt_t01, t02, t03,
 * t09, t10 and t11 are built; t04 ... t08 are objects whose modules never
 * load (their callbacks never run).
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
	seq_printf(m, "%s\n", "klpt_many: this has been live patched");
	return 0;
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show },
	{ }
};

static int livepatch_klpt_t01_answer(void) { return 43; }
static struct klp_func t01_funcs[] = {
	{ .old_name = "klpt_t01_answer", .new_func = livepatch_klpt_t01_answer },
	{ }
};

static int livepatch_klpt_t02_answer(void) { return 43; }
static struct klp_func t02_funcs[] = {
	{ .old_name = "klpt_t02_answer", .new_func = livepatch_klpt_t02_answer },
	{ }
};

static int livepatch_klpt_t03_answer(void) { return 43; }
static struct klp_func t03_funcs[] = {
	{ .old_name = "klpt_t03_answer", .new_func = livepatch_klpt_t03_answer },
	{ }
};

static int livepatch_klpt_t04_answer(void) { return 43; }
static struct klp_func t04_funcs[] = {
	{ .old_name = "klpt_t04_answer", .new_func = livepatch_klpt_t04_answer },
	{ }
};

static int livepatch_klpt_t05_answer(void) { return 43; }
static struct klp_func t05_funcs[] = {
	{ .old_name = "klpt_t05_answer", .new_func = livepatch_klpt_t05_answer },
	{ }
};

static int livepatch_klpt_t06_answer(void) { return 43; }
static struct klp_func t06_funcs[] = {
	{ .old_name = "klpt_t06_answer", .new_func = livepatch_klpt_t06_answer },
	{ }
};

static int livepatch_klpt_t07_answer(void) { return 43; }
static struct klp_func t07_funcs[] = {
	{ .old_name = "klpt_t07_answer", .new_func = livepatch_klpt_t07_answer },
	{ }
};

static int livepatch_klpt_t08_answer(void) { return 43; }
static struct klp_func t08_funcs[] = {
	{ .old_name = "klpt_t08_answer", .new_func = livepatch_klpt_t08_answer },
	{ }
};

static int livepatch_klpt_t09_answer(void) { return 43; }
static struct klp_func t09_funcs[] = {
	{ .old_name = "klpt_t09_answer", .new_func = livepatch_klpt_t09_answer },
	{ }
};

static int livepatch_klpt_t10_answer(void) { return 43; }
static struct klp_func t10_funcs[] = {
	{ .old_name = "klpt_t10_answer", .new_func = livepatch_klpt_t10_answer },
	{ }
};

static int livepatch_klpt_t11_answer(void) { return 43; }
static struct klp_func t11_funcs[] = {
	{ .old_name = "klpt_t11_answer", .new_func = livepatch_klpt_t11_answer },
	{ }
};

static struct klp_object objs[] = {
	{ .name = NULL /* vmlinux */, .funcs = vmlinux_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t01", .funcs = t01_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t02", .funcs = t02_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t03", .funcs = t03_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t04", .funcs = t04_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t05", .funcs = t05_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t06", .funcs = t06_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t07", .funcs = t07_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t08", .funcs = t08_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t09", .funcs = t09_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t10", .funcs = t10_funcs, .callbacks = KLPT_CALLBACKS },
	{ .name = "klpt_t11", .funcs = t11_funcs, .callbacks = KLPT_CALLBACKS },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int klpt_many_init(void)
{
	return klp_enable_patch(&patch);
}

static void klpt_many_exit(void)
{
}

module_init(klpt_many_init);
module_exit(klpt_many_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace lab: livepatch with twelve objects");
