// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_kp, object file 1 of 2 (see klpt_kpatch.h): the fix for vmlinux. Its
 * callbacks are the static klpt_pre_patch ... of klpt_callbacks.h, as are
 * those of klpt_kp_mod.c: two objects whose callback functions share names.
 */
#include <linux/module.h>
#include <linux/seq_file.h>
#include "klpt_callbacks.h"
#include "klpt_kpatch.h"

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "klpt_kp: this has been live patched");
	return 0;
}

KLPT_KPATCH_FUNC(livepatch_cmdline_proc_show, "cmdline_proc_show", "vmlinux");
KLPT_KPATCH_PRE_PATCH_CALLBACK(klpt_pre_patch, "vmlinux");
KLPT_KPATCH_POST_PATCH_CALLBACK(klpt_post_patch, "vmlinux");
KLPT_KPATCH_PRE_UNPATCH_CALLBACK(klpt_pre_unpatch, "vmlinux");
KLPT_KPATCH_POST_UNPATCH_CALLBACK(klpt_post_unpatch, "vmlinux");
