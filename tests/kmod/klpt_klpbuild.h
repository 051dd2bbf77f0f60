/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The layout the kernel's own klp-build (Linux 6.19+, scripts/livepatch/,
 * include/linux/livepatch_external.h) gives a livepatch, written out by hand
 * for the lab's klpt_kb module: objtool's "klp diff" emits one 64-byte struct
 * klp_object_ext per patched object into section __klp_objects (later kernels:
 * .init.klp_objects), with the callbacks at offsets 16/24/32/40, and its
 * replacement functions as struct klp_func_ext in __klp_funcs; scripts/
 * livepatch/init.c (klpt_kb_init.c here) kzallocs the klp_objects at init and
 * copies the callbacks in. klpt_kb.lds marks the bounds as 6.19's
 * scripts/module.lds.S does (__start_klp_objects / __stop_klp_objects).
 */
#ifndef KLPT_KLPBUILD_H
#define KLPT_KLPBUILD_H

#include <linux/livepatch.h>

struct klpt_func_ext {                 /* klp_func_ext: 24 bytes */
	const char *old_name;
	void *new_func;
	unsigned long sympos;
};

struct klpt_object_ext {               /* klp_object_ext: 64 bytes */
	const char *name;              /* NULL: vmlinux */
	struct klpt_func_ext *funcs;
	struct klp_callbacks callbacks;
	unsigned int nr_funcs;
};

#define KLPT_KLP_OBJECT(var, objname, fns, pre, post, preun, postun)			\
	static struct klpt_object_ext var __section("__klp_objects") __used __aligned(8) = {	\
		.name = objname, .funcs = fns, .nr_funcs = ARRAY_SIZE(fns),		\
		.callbacks = { .pre_patch = pre, .post_patch = post,			\
			       .pre_unpatch = preun, .post_unpatch = postun } }

#endif /* KLPT_KLPBUILD_H */
