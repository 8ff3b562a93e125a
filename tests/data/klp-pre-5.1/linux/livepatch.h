/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A stand-in for <linux/livepatch.h> of v4.16-v5.0, written for the test of
 * vm-images/livepatch against the old livepatch API (tests/integration/
 * test_own_kernel.py): the fields our module sets and the four calls a
 * module had then (register, unregister, enable, disable; v5.1's
 * 958ef1e39d24 left only klp_enable_patch). Force-included ahead of the
 * kernel's own header (same include guard), so the module compiles against
 * this API with a newer tree's other headers. Not a copy of the kernel's
 * header: only what the pre-5.1 API declared for a patch module.
 */
#ifndef _LINUX_LIVEPATCH_H_
#define _LINUX_LIVEPATCH_H_

#include <linux/module.h>
#include <linux/ftrace.h>
#include <linux/kobject.h>
#include <linux/list.h>

struct klp_func {
	const char *old_name;
	void *new_func;
	unsigned long old_sympos;
	unsigned long old_addr;
	struct kobject kobj;
	struct list_head stack_node;
	unsigned long old_size, new_size;
	bool patched;
	bool transition;
};

struct klp_object {
	const char *name;
	struct klp_func *funcs;
	struct kobject kobj;
	struct module *mod;
	bool patched;
};

struct klp_patch {
	struct module *mod;
	struct klp_object *objs;
	struct list_head list;
	struct kobject kobj;
	bool enabled;
};

int klp_register_patch(struct klp_patch *);
int klp_unregister_patch(struct klp_patch *);
int klp_enable_patch(struct klp_patch *);
int klp_disable_patch(struct klp_patch *);

#endif /* _LINUX_LIVEPATCH_H_ */
