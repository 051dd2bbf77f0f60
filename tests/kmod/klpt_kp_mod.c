// SPDX-License-Identifier: GPL-2.0
/* klpt_kp, object file 2 of 2 (see klpt_kpatch.h): the fix for klpt_mod. */
#include <linux/module.h>
#include "klpt_callbacks.h"
#include "klpt_kpatch.h"

static int livepatch_klpt_mod_answer(void)
{
	return 45;
}

KLPT_KPATCH_FUNC(livepatch_klpt_mod_answer, "klpt_mod_answer", "klpt_mod");
KLPT_KPATCH_PRE_PATCH_CALLBACK(klpt_pre_patch, "klpt_mod");
KLPT_KPATCH_POST_PATCH_CALLBACK(klpt_post_patch, "klpt_mod");
KLPT_KPATCH_PRE_UNPATCH_CALLBACK(klpt_pre_unpatch, "klpt_mod");
KLPT_KPATCH_POST_UNPATCH_CALLBACK(klpt_post_unpatch, "klpt_mod");
