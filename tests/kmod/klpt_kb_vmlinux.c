// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_kb, object file 1 of 2 (see klpt_klpbuild.h): the fix for vmlinux,
 * with the static callbacks of klpt_callbacks.h (klpt_kb_mod.c has
 * functions of the same names for its object).
 */
#include <linux/module.h>
#include <linux/seq_file.h>
#include "klpt_callbacks.h"
#include "klpt_klpbuild.h"

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "klpt_kb: this has been live patched");
	return 0;
}

static struct klpt_func_ext funcs[] __section("__klp_funcs") __used = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show },
};

KLPT_KLP_OBJECT(klp_object_vmlinux, NULL, funcs, klpt_pre_patch, klpt_post_patch,
		klpt_pre_unpatch, klpt_post_unpatch);
