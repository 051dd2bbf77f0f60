/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The four livepatch callbacks shared by klpt_lp and klpt_lp2.
 *
 * Each callback writes exactly ONE kernel-log line, the ground truth the
 * tracer is held to (parsed by tracer/lab/groundtruth.py; keep them in sync):
 *
 *   klpt: patch=<livepatch> object=<vmlinux|module> callback=<kind> ret=<int|-> state=<state|->
 *
 *   kind  : pre_patch | post_patch | pre_unpatch | post_unpatch
 *   ret   : the pre_patch return value; "-" for the void callbacks
 *   state : the target module's state when the callback runs
 *           (LIVE | COMING | GOING | UNFORMED); "-" for vmlinux
 */
#ifndef KLPT_CALLBACKS_H
#define KLPT_CALLBACKS_H

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/delay.h>

/* Returned by every pre_patch callback; a module parameter of the includer. */
static int pre_patch_ret;

/* While set (a module parameter of klpt_lp), every pre_patch callback waits,
 * up to ten minutes, before it returns: a test keeps a module load inside
 * klp_module_coming while it starts the tracer. */
static int hold_pre_patch;

static const char *klpt_obj_name(const struct klp_object *obj)
{
	return obj->name ? obj->name : "vmlinux";
}

static const char *klpt_obj_state(const struct klp_object *obj)
{
	if (!obj->mod)
		return "-";
	switch (obj->mod->state) {
	case MODULE_STATE_LIVE:		return "LIVE";
	case MODULE_STATE_COMING:	return "COMING";
	case MODULE_STATE_GOING:	return "GOING";
	case MODULE_STATE_UNFORMED:	return "UNFORMED";
	}
	return "?";
}

static void klpt_log_void(const char *callback, struct klp_object *obj)
{
	pr_info("klpt: patch=%s object=%s callback=%s ret=- state=%s\n",
		KBUILD_MODNAME, klpt_obj_name(obj), callback,
		klpt_obj_state(obj));
}

static int klpt_pre_patch(struct klp_object *obj)
{
	/* Read once so the logged value is the returned one even if sysfs
	 * changes the parameter concurrently. */
	int ret = READ_ONCE(pre_patch_ret);
	int waited = 0;

	while (READ_ONCE(hold_pre_patch) && waited++ < 6000)
		msleep(100);
	pr_info("klpt: patch=%s object=%s callback=pre_patch ret=%d state=%s\n",
		KBUILD_MODNAME, klpt_obj_name(obj), ret, klpt_obj_state(obj));
	return ret;
}

static void klpt_post_patch(struct klp_object *obj)
{
	klpt_log_void("post_patch", obj);
}

static void klpt_pre_unpatch(struct klp_object *obj)
{
	klpt_log_void("pre_unpatch", obj);
}

static void klpt_post_unpatch(struct klp_object *obj)
{
	klpt_log_void("post_unpatch", obj);
}

#define KLPT_CALLBACKS {			\
	.pre_patch = klpt_pre_patch,		\
	.post_patch = klpt_post_patch,		\
	.pre_unpatch = klpt_pre_unpatch,	\
	.post_unpatch = klpt_post_unpatch,	\
}

#endif /* KLPT_CALLBACKS_H */
