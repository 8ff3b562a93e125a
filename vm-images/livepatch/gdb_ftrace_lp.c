// SPDX-License-Identifier: GPL-2.0
/*
 * gdb_ftrace livepatch fixture: replaces cmdline_proc_show() with a body
 * that prints a fixed marker, so the guest can count every read of
 * /proc/cmdline that still ran the old (unpatched) function.
 *
 * Modelled on samples/livepatch/livepatch-sample.c. Builds against both
 * livepatch APIs: v5.1+ (klp_enable_patch() alone; disabling only through
 * sysfs, the structures freed with the module) and v4.0-v5.0
 * (klp_register_patch(), then klp_enable_patch(); exit unregisters, which
 * needs the patch disabled first: echo 0 > /sys/kernel/livepatch/gdb_ftrace_lp/enabled).
 * Kbuild defines GDB_FTRACE_KLP_REGISTER when the kernel's livepatch.h has
 * the old API.
 */
#include <linux/version.h>
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

#define GDB_FTRACE_MARKER "gdb_ftrace-livepatched-cmdline"

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", GDB_FTRACE_MARKER);
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = livepatch_cmdline_proc_show,
	}, { }
};

static struct klp_object objs[] = {
	{
		/* name being NULL means vmlinux */
		.funcs = funcs,
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

#ifdef GDB_FTRACE_KLP_REGISTER
static int livepatch_init(void)
{
	int ret;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 12, 0) && LINUX_VERSION_CODE < KERNEL_VERSION(4, 16, 0)
	/* 4.12-4.15 refuse a patch without a reliable stack unless it is immediate (ORC before 4.18) */
	if (!klp_have_reliable_stack())
		patch.immediate = true;
#endif
	ret = klp_register_patch(&patch);
	if (ret)
		return ret;
	ret = klp_enable_patch(&patch);
	if (ret) {
		WARN_ON(klp_unregister_patch(&patch));
		return ret;
	}
	return 0;
}

static void livepatch_exit(void)
{
	WARN_ON(klp_unregister_patch(&patch));
}
#else
static int livepatch_init(void)
{
	return klp_enable_patch(&patch);
}

static void livepatch_exit(void)
{
}
#endif

module_init(livepatch_init);
module_exit(livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("gdb_ftrace test livepatch of cmdline_proc_show");
MODULE_INFO(livepatch, "Y");
