// SPDX-License-Identifier: GPL-2.0
/* klpt_kb, object file 2 of 2 (see klpt_klpbuild.h): the fix for klpt_mod. */
#include <linux/module.h>
#include "klpt_callbacks.h"
#include "klpt_klpbuild.h"

static int livepatch_klpt_mod_answer(void)
{
	return 46;
}

static struct klpt_func_ext funcs[] __section("__klp_funcs") __used = {
	{ .old_name = "klpt_mod_answer", .new_func = livepatch_klpt_mod_answer },
};

KLPT_KLP_OBJECT(klp_object_klpt_mod, "klpt_mod", funcs, klpt_pre_patch, klpt_post_patch,
		klpt_pre_unpatch, klpt_post_unpatch);
