// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_kp's patch hook, as kpatch's livepatch-patch-hook.c does it: at init,
 * one struct klp_object per object name found in .kpatch.funcs, its funcs from
 * there and its callbacks from .kpatch.callbacks.*, all kzalloc'd; then
 * klp_enable_patch. The "vmlinux" object gets name NULL. Objects are in the
 * order their names first appear in .kpatch.funcs.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/livepatch.h>
#include "klpt_kpatch.h"

#define KLPT_KP_MAX_OBJS 8

/* bounds of the sections, from klpt_kp.lds */
extern struct klpt_kpatch_func __kpatch_funcs[], __kpatch_funcs_end[];
extern struct klpt_kpatch_callback __kpatch_callbacks_pre_patch[], __kpatch_callbacks_pre_patch_end[];
extern struct klpt_kpatch_callback __kpatch_callbacks_post_patch[], __kpatch_callbacks_post_patch_end[];
extern struct klpt_kpatch_callback __kpatch_callbacks_pre_unpatch[], __kpatch_callbacks_pre_unpatch_end[];
extern struct klpt_kpatch_callback __kpatch_callbacks_post_unpatch[], __kpatch_callbacks_post_unpatch_end[];

static struct klp_patch *lpatch;

static bool same(const char *objname, const char *name)
{
	return strcmp(objname, name ? name : "vmlinux") == 0;
}

static struct klp_object *find(struct klp_object *objs, int n, const char *objname)
{
	int i;

	for (i = 0; i < n; i++)
		if (same(objname, objs[i].name))
			return &objs[i];
	return NULL;
}

#define ADD_CALLBACKS(kind, type)							\
	for (c = __kpatch_callbacks_##kind; c < __kpatch_callbacks_##kind##_end; c++) {	\
		struct klp_object *o = find(objs, nobjs, c->objname);			\
		if (!o || o->callbacks.kind)						\
			goto err;		/* kpatch: "extra callback for object" */	\
		o->callbacks.kind = (type)c->fn;					\
	}

static void free_patch(struct klp_object *objs, int nobjs)
{
	int i;

	for (i = 0; i < nobjs; i++)
		kfree(objs[i].funcs);
	kfree(objs);
	kfree(lpatch);
	lpatch = NULL;
}

static int klpt_kp_init(void)
{
	struct klp_object *objs;
	struct klpt_kpatch_callback *c;
	struct klpt_kpatch_func *f;
	int nobjs = 0;

	lpatch = kzalloc(sizeof(*lpatch), GFP_KERNEL);
	objs = kcalloc(KLPT_KP_MAX_OBJS + 1, sizeof(*objs), GFP_KERNEL);
	if (!lpatch || !objs)
		goto err;
	for (f = __kpatch_funcs; f < __kpatch_funcs_end; f++) {
		struct klp_object *o = find(objs, nobjs, f->objname);
		int n = 0;

		if (!o) {
			if (nobjs == KLPT_KP_MAX_OBJS)
				goto err;
			o = &objs[nobjs++];
			o->name = strcmp(f->objname, "vmlinux") ? f->objname : NULL;
		}
		if (o->funcs)
			while (o->funcs[n].old_name)
				n++;
		{
			struct klp_func *funcs = krealloc(o->funcs, (n + 2) * sizeof(*funcs),
							  GFP_KERNEL | __GFP_ZERO);
			if (!funcs)
				goto err;
			memset(&funcs[n], 0, 2 * sizeof(*funcs));
			funcs[n].old_name = f->old_name;
			funcs[n].new_func = f->new_func;
			o->funcs = funcs;
		}
	}
	ADD_CALLBACKS(pre_patch, int (*)(struct klp_object *))
	ADD_CALLBACKS(post_patch, void (*)(struct klp_object *))
	ADD_CALLBACKS(pre_unpatch, void (*)(struct klp_object *))
	ADD_CALLBACKS(post_unpatch, void (*)(struct klp_object *))
	lpatch->mod = THIS_MODULE;
	lpatch->objs = objs;
	return klp_enable_patch(lpatch);
err:
	free_patch(objs, nobjs);
	return -EINVAL;
}

static void klpt_kp_exit(void)
{
	if (lpatch) {
		struct klp_object *objs = lpatch->objs;
		int n = 0;

		while (objs[n].funcs)
			n++;
		free_patch(objs, n);
	}
}

module_init(klpt_kp_init);
module_exit(klpt_kp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace lab: a livepatch in kpatch-build's layout");
