// SPDX-License-Identifier: GPL-2.0
/*
 * klpt_kb's init, as scripts/livepatch/init.c of Linux 6.19 does it: a
 * struct klp_patch and one kzalloc'd struct klp_object per klp_object_ext
 * record of __klp_objects, its funcs from the record, its callbacks copied in.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/livepatch.h>
#include "klpt_klpbuild.h"

extern struct klpt_object_ext __start_klp_objects[], __stop_klp_objects[];

static struct klp_patch *patch;

static void free_patch(void)
{
	struct klp_object *obj;

	if (!patch)
		return;
	if (patch->objs)
		for (obj = patch->objs; obj->funcs; obj++)
			kfree(obj->funcs);
	kfree(patch->objs);
	kfree(patch);
	patch = NULL;
}

static int klpt_kb_init(void)
{
	unsigned int nr_objs = __stop_klp_objects - __start_klp_objects;
	struct klp_object *objs;
	unsigned int i, j;

	if (!nr_objs)
		return -EINVAL;
	patch = kzalloc(sizeof(*patch), GFP_KERNEL);
	objs = kcalloc(nr_objs + 1, sizeof(*objs), GFP_KERNEL);
	if (!patch || !objs) {
		kfree(objs);
		free_patch();
		return -ENOMEM;
	}
	patch->objs = objs;
	for (i = 0; i < nr_objs; i++) {
		struct klpt_object_ext *ext = &__start_klp_objects[i];
		struct klp_func *funcs = kcalloc(ext->nr_funcs + 1, sizeof(*funcs), GFP_KERNEL);

		if (!funcs) {
			free_patch();
			return -ENOMEM;
		}
		for (j = 0; j < ext->nr_funcs; j++) {
			funcs[j].old_name = ext->funcs[j].old_name;
			funcs[j].new_func = ext->funcs[j].new_func;
			funcs[j].old_sympos = ext->funcs[j].sympos;
		}
		objs[i].name = ext->name;
		objs[i].funcs = funcs;
		memcpy(&objs[i].callbacks, &ext->callbacks, sizeof(struct klp_callbacks));
	}
	patch->mod = THIS_MODULE;
	return klp_enable_patch(patch);
}

static void klpt_kb_exit(void)
{
	free_patch();
}

module_init(klpt_kb_init);
module_exit(klpt_kb_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace lab: a livepatch in klp-build's layout");
