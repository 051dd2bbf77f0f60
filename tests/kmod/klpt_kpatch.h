/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The layout kpatch-build gives a livepatch (dynup/kpatch: kmod/patch/
 * kpatch-macros.h, livepatch-patch-hook.c, kpatch.lds.S), written out by hand
 * for the lab's klpt_kp module: every object file declares its callbacks
 * with a macro that puts a {callback, object name} entry into a section per
 * kind, and its replacement functions into .kpatch.funcs; the module's init
 * (klpt_kp_hook.c) builds struct klp_patch and the struct klp_objects with
 * kzalloc from those sections. No struct klp_object exists before init.
 * Compiled with -ffunction-sections and linked with klpt_kp.lds, which merges
 * .text.* into .text.livepatch and marks each section's bounds, as kpatch does.
 */
#ifndef KLPT_KPATCH_H
#define KLPT_KPATCH_H

#include <linux/livepatch.h>

struct klpt_kpatch_callback {          /* kpatch_pre_patch_callback & co: 16 bytes */
	void *fn;
	char *objname;
};

/* a simplified kpatch_patch_func, padded to 32 bytes: gcc aligns a static
 * object of more than 16 bytes to 16, and the hook walks the section as an
 * array, so the entries must be a multiple of that apart */
struct klpt_kpatch_func {
	void *new_func;
	char *old_name;
	char *objname;
	void *pad;
};

#define __KLPT_KPATCH_CALLBACK(kind, _fn, _obj)					\
	static struct klpt_kpatch_callback __klpt_kpatch_##kind##_data		\
	__section(".kpatch.callbacks." #kind) __used = { .fn = _fn, .objname = _obj }

#define KLPT_KPATCH_PRE_PATCH_CALLBACK(fn, obj)    __KLPT_KPATCH_CALLBACK(pre_patch, fn, obj)
#define KLPT_KPATCH_POST_PATCH_CALLBACK(fn, obj)   __KLPT_KPATCH_CALLBACK(post_patch, fn, obj)
#define KLPT_KPATCH_PRE_UNPATCH_CALLBACK(fn, obj)  __KLPT_KPATCH_CALLBACK(pre_unpatch, fn, obj)
#define KLPT_KPATCH_POST_UNPATCH_CALLBACK(fn, obj) __KLPT_KPATCH_CALLBACK(post_unpatch, fn, obj)

#define KLPT_KPATCH_FUNC(_new, _old, _obj)						\
	static struct klpt_kpatch_func __klpt_kpatch_func_##_new			\
	__section(".kpatch.funcs") __used = { .new_func = _new, .old_name = _old, .objname = _obj }

#endif /* KLPT_KPATCH_H */
